"""Test-time views beyond the mirror image: each face's crop also zoomed or shifted (within
the branches' training augmentation: Affine scale 0.93-1.07, translate 4 %), the branch's
outputs averaged over all views, for some regions of a run's fused model; the fused model
(its head unchanged) and every branch alone scored with and without them.

    python bench/shifted_views.py --run bench/out/cpu-long-v11 --regions face_chip,original_alt2 \\
        --views 1.05,0,0 0.95,0,0

A view is SCALE,DX,DY (DX, DY: shares of the crop's width and height); the crop as it is,
1,0,0, is always one of them, and its block is checked against the run's cached one. The
other regions keep their cached validation outputs. Run it from the folder the run was made in.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agefuse.fusion.metrics import gender_report  # noqa: E402
from agefuse.fusion.model import FusedModel  # noqa: E402
from median_estimate import load_run, one_branch, report, run_parser, validation_images  # noqa: E402

AS_IT_IS = (1.0, 0.0, 0.0)


def view(text: str) -> tuple[float, float, float]:
    try:
        scale, dx, dy = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a view is SCALE,DX,DY, three numbers (1.05,0,0)") from None
    if not (0.5 <= scale <= 2 and abs(dx) < 0.5 and abs(dy) < 0.5):
        raise argparse.ArgumentTypeError(f"{text!r}: SCALE in 0.5..2, DX and DY within +-0.5 of the crop")
    return scale, dx, dy


def moved(images: torch.Tensor, scale: float, dx: float, dy: float) -> torch.Tensor:
    """(N, V, 3, S, S) uint8 views zoomed about their centre and shifted, as albumentations'
    Affine does (the border filled with black)."""
    height, width = images.shape[-2:]
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), 0, scale)
    matrix[:, 2] += (dx * width, dy * height)
    flat = images.flatten(0, 1).permute(0, 2, 3, 1).numpy()
    out = np.stack([cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT) for image in flat])
    return torch.from_numpy(out).permute(0, 3, 1, 2).reshape(images.shape)


def view_blocks(run: Path, model: FusedModel, region: str, views: list, ids: np.ndarray) -> torch.Tensor:
    """(len(views), N, F): the region's block over each view (and its mirror image, as the
    fused model mirrors), its fold branches mixed as the fused model mixes them."""
    single = one_branch(model, region)
    blocks = []
    with torch.inference_mode():
        for _, images in validation_images(run, single, ids):
            blocks.append(torch.stack([single.branch_block(region, single.branches[0], moved(images, *v))[0]
                                       for v in views]))
    return torch.cat(blocks, 1)


def scores(tag: str, model: FusedModel, features: torch.Tensor, present: torch.Tensor, data: dict) -> None:
    with torch.inference_mode():
        out = model.predict(features, present)
    print(f"{tag}: fused, gender {gender_report(data['gender'], out['gender_female'].numpy())['accuracy']:.2%}")
    report("fused", data["age"], out["age"].numpy())
    for r, region in enumerate(model.regions):
        female = torch.sigmoid(model.block.gender_logit(features[:, r])).numpy()
        print(f"    {region} alone, gender {gender_report(data['gender'], female)['accuracy']:.2%}")
        report(region, data["age"], out["branch_ages"][:, r].numpy())


def main() -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--regions", required=True, help="comma-separated regions to give the extra views")
    parser.add_argument("--views", nargs="+", required=True, type=view, help="extra views, each SCALE,DX,DY")
    args = parser.parse_args()
    model, _, data = load_run(args)
    cached, present = torch.from_numpy(data["features"]), torch.from_numpy(data["present"])
    more = cached.clone()
    for region in args.regions.split(","):
        r, start = model.regions.index(region), time.perf_counter()
        blocks = view_blocks(args.run, model, region, [AS_IT_IS, *args.views], data["id"])
        if not torch.allclose(blocks[0], cached[:, r], atol=1e-4):
            raise ValueError(f"{region}: the crop as it is does not give the cached block; is this the run's cache?")
        more[:, r] = blocks.mean(0)  # every view counts alike, the crop as it is among them
        print(f"{region}: the crop as it is and {len(args.views)} more views in {time.perf_counter() - start:.0f} s",
              flush=True)
    scores("the crop as it is (cached)", model, cached, present, data)
    scores(f"with {len(args.views)} more views", model, more, present, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
