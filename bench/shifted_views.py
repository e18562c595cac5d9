"""Test-time views beyond the mirror image: each face's crop also zoomed or shifted (within
the branches' training augmentation: Affine scale 0.93-1.07, translate 4 %), the branch's
outputs averaged over all views, for some regions of a run's fused model; the fused model
(its head unchanged) and every branch alone scored with and without them.

    python bench/shifted_views.py --run bench/out/cpu-long-v11 --regions face_chip,original_alt2 \\
        --views 1.05,0,0 0.95,0,0

A view is SCALE,DX,DY (DX, DY: shares of the crop's width and height). The other regions keep
their cached validation outputs. Run it from the folder the run was made in.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from branches import load_branch  # noqa: E402
from branches.data import cache_rows  # noqa: E402
from fusion.features import batch_inputs, crops_read, read_crops  # noqa: E402
from fusion.metrics import gender_report  # noqa: E402
from fusion.model import FusedModel, head_input, load_fused  # noqa: E402
from median_estimate import report, validation_features  # noqa: E402


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


def region_blocks(run: Path, region: str, given, mirror: bool, ids: np.ndarray,
                  views: list[tuple[float, float, float]] | None = None, batch_size: int = 64) -> torch.Tensor:
    """(K, N, F): the region's block from each of its K fold branches (K = 1 for a plain
    branch) over ``views`` (None: the crop as it is), and their mirror images as the fused
    model mirrors; their mean over K is what the fused model's block would be."""
    members = [load_branch(Path(path)) for path in ([given] if isinstance(given, str) else given)]
    single = FusedModel({region: members[0][0]}, {region: members[0][1]["image_size"]}, mirror=mirror)
    rows, names = cache_rows(run / "cache", region, "val"), crops_read([region])
    if [row["id"] for row in rows] != list(ids):
        raise ValueError(f"{run}: the cache's validation rows are not the features file's")
    blocks = [[] for _ in members]
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            faces = [read_crops(run / "cache", row, names) for row in rows[start:start + batch_size]]
            (images,), _ = batch_inputs(single, faces)
            for k, (member, _) in enumerate(members):
                blocks[k].append(torch.stack([single.branch_block(region, member, moved(images, *view))[0]
                                              for view in views]).mean(0) if views else
                                 single.branch_block(region, member, images)[0])
    return torch.stack([torch.cat(b) for b in blocks])


def scores(tag: str, model, features: torch.Tensor, present: torch.Tensor, data: dict) -> None:
    with torch.inference_mode():
        logits, gender_logit = model.head(head_input(features, present))
        age = (logits.softmax(1) * model.ages).sum(1).numpy()
    print(f"{tag}: fused, gender {gender_report(data['gender'], torch.sigmoid(gender_logit).numpy())['accuracy']:.2%}")
    report("fused", data["age"], age)
    for r, region in enumerate(model.regions):
        gender = gender_report(data["gender"], torch.sigmoid(model.block.gender_logit(features[:, r])).numpy())
        print(f"    {region} alone, gender {gender['accuracy']:.2%}")
        report(region, data["age"], model.block.age(features[:, r]).numpy())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/utk_accuracy.py --out folder")
    parser.add_argument("--regions", required=True, help="comma-separated regions to give the extra views")
    parser.add_argument("--views", nargs="+", required=True, help="extra views, each SCALE,DX,DY")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views = [tuple(float(x) for x in view.split(",")) for view in args.views]
    model, _ = load_fused(args.run / "fused" / "fused.pt", fold=False)
    checkpoints = json.loads((args.run / "fused" / "fusion.json").read_text())["branches"]
    data = validation_features(args.run, model, checkpoints)
    cached, present = torch.from_numpy(data["features"]), torch.from_numpy(data["present"])
    more = cached.clone()
    for region in args.regions.split(","):
        r, start = model.regions.index(region), time.perf_counter()
        extra = region_blocks(args.run, region, checkpoints[region], model.mirror, data["id"], views).mean(0)
        more[:, r] = (cached[:, r] + len(views) * extra) / (len(views) + 1)  # the mean over every view
        print(f"{region}: {len(views)} extra views in {time.perf_counter() - start:.0f} s", flush=True)
    scores("the crop as it is (cached)", model, cached, present, data)
    scores(f"with the views {' '.join(args.views)}", model, more, present, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
