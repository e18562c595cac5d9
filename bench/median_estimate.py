"""The age distribution's median against its expectation as the point estimate, for a run's
fused model and for each branch alone, on its validation faces.

The fused model and its branches estimate age by the expectation of a distribution over
0..100; for the absolute error the median is the best single guess. Whether the fusion's margin
over its best branch survives the change can only be told with both scored the same way, so
this bench runs the branches themselves (their fold branches mixed, the mirrored views too, as
the fused model's features do) rather than reading the cached expectations.

    python bench/median_estimate.py --run bench/out/cpu-long-v9 --regions face_chip,original_alt2

Run it from the folder the run was made in: the branch paths are read from the run's
``fused/fusion.json`` as they were given.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agefuse.branches import AGE_LOGITS, load_branch  # noqa: E402
from agefuse.branches.data import cache_rows  # noqa: E402
from agefuse.fusion import read_features  # noqa: E402
from agefuse.fusion.features import batch_inputs, crops_read, fingerprint, read_crops  # noqa: E402
from agefuse.fusion.metrics import age_report  # noqa: E402
from agefuse.fusion.model import FusedModel, head_input, load_fused  # noqa: E402


def median_age(probabilities: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """The age that halves each row of (N, A) ``probabilities``, each whole year's mass spread
    evenly over the year around it (so the estimate moves smoothly with the distribution)."""
    cdf = probabilities.cumsum(1)
    year = (cdf < 0.5).sum(1, keepdim=True).clamp(max=probabilities.shape[1] - 1)
    mass = probabilities.gather(1, year)
    below = cdf.gather(1, year) - mass
    return (ages[year] - 0.5 + ((0.5 - below) / mass.clamp(min=1e-12)).clamp(0, 1)).squeeze(1)


def report(name: str, true: np.ndarray, predicted: np.ndarray) -> float:
    figures = age_report(true, predicted)
    decades = {d: mae for d, mae in figures["mae_by_decade"].items() if d != "90+"}
    worst = max(decades, key=decades.get)
    print(f"  {name:12s} MAE {figures['mae']:.3f}  CS@5 {figures['cs5']:.1%}  worst decade 0-89 {worst} ({decades[worst]:.2f})",
          flush=True)
    return figures["mae"]


def run_parser(doc: str) -> argparse.ArgumentParser:
    """The options every bench over a finished run's validation faces takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a bench/utk_accuracy.py --out folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser


def load_run(args: argparse.Namespace) -> tuple[FusedModel, dict, dict[str, np.ndarray]]:
    """``args.run``'s fused model (unfolded, as saved), its branches' checkpoints as its
    ``fusion.json`` names them (paths as the run gave them) and its validation features file;
    torch set to ``args.threads``."""
    torch.set_num_threads(args.threads)
    model, _ = load_fused(args.run / "fused" / "fused.pt", fold=False)
    checkpoints = json.loads((args.run / "fused" / "fusion.json").read_text())["branches"]
    return model, checkpoints, validation_features(args.run, model, checkpoints)


def one_branch(model: FusedModel, region: str) -> FusedModel:
    """A FusedModel of ``model``'s one ``region`` branch, viewing and mirroring as ``model`` does."""
    r = model.regions.index(region)
    return FusedModel({region: model.branches[r]}, {region: model.image_sizes[r]}, mirror=model.mirror)


def validation_features(run: Path, model, checkpoints: dict) -> dict[str, np.ndarray]:
    """The fusion's own validation features file, named as fusion.features.split_features names it."""
    name = "val" + ("-mirrored" if model.mirrored else "")
    return read_features(run / "fused" / f"features-{name}-{fingerprint(run / 'cache', checkpoints)}.npz")[0]


def fused(model, data: dict[str, np.ndarray]) -> dict[str, float]:
    with torch.inference_mode():
        logits, _ = model.head(head_input(torch.from_numpy(data["features"]), torch.from_numpy(data["present"])))
        probabilities = logits.softmax(1)
    print(f"fused ({len(data['age'])} validation faces)")
    return {"expectation": report("expectation", data["age"], (probabilities * model.ages).sum(1).numpy()),
            "median": report("median", data["age"], median_age(probabilities, model.ages).numpy())}


def validation_images(run: Path, single: FusedModel, ids: np.ndarray | None = None,
                      batch_size: int = 64) -> Iterator[tuple[list[dict], torch.Tensor]]:
    """The run's validation faces as ``single`` (a one-branch FusedModel) reads them: per batch,
    the cache rows and their (N, V, 3, S, S) uint8 views, in the cache's order, which must be
    ``ids``' (a features file's) when given."""
    region = single.regions[0]
    rows, names = cache_rows(run / "cache", region, "val"), crops_read([region])
    if ids is not None and [row["id"] for row in rows] != list(ids):
        raise ValueError(f"{run}: the cache's validation rows are not the features file's; is this the run's cache?")
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        (images,), _ = batch_inputs(single, [read_crops(run / "cache", row, names) for row in batch])
        yield batch, images


def branch(run: Path, region: str, given: str | list[str], mirror: bool) -> dict[str, float]:
    """``given``: the branch's checkpoint(s) as the fusion read them; ``mirror``: whether the
    fused model also sees crops mirrored. The views go through the fused model's own
    ``branch_block``, so each face's are averaged as in the features the table reads."""
    paths = [Path(p) for p in ([given] if isinstance(given, str) else given)]
    members = [load_branch(path) for path in paths]
    single = FusedModel({region: members[0][0]}, {region: members[0][1]["image_size"]}, mirror=mirror)
    true, expectation, median = [], [], []
    with torch.inference_mode():
        for rows, images in validation_images(run, single):
            ages, mixtures = [], []
            for member, _ in members:  # a cross-fitted branch: its fold branches' mean (FoldAverage)
                block, out = single.branch_block(region, member, images)
                ages.append(single.block.age(block))
                logits = out[AGE_LOGITS].float()
                mixtures.append(logits.softmax(1).view(len(rows), -1, logits.shape[1]).mean(1))
            true += [row["age"] for row in rows]
            expectation.append(torch.stack(ages).mean(0).numpy())
            median.append(median_age(torch.stack(mixtures).mean(0), single.ages).numpy())
    print(f"{region} alone ({len(paths)} file(s), {len(true)} validation faces)")
    return {"expectation": report("expectation", np.array(true, float), np.concatenate(expectation)),
            "median": report("median", np.array(true, float), np.concatenate(median))}


def main() -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--regions", required=True, help="comma-separated branch regions to score alone")
    args = parser.parse_args()
    model, checkpoints, data = load_run(args)
    scores = {"fused": fused(model, data)}
    for region in args.regions.split(","):
        scores[region] = branch(args.run, region, checkpoints[region], model.mirror)
    for estimate in ("expectation", "median"):
        best = min((r for r in scores if r != "fused"), key=lambda r: scores[r][estimate])
        margin = 1 - scores["fused"][estimate] / scores[best][estimate]
        print(f"by the {estimate}: fused {scores['fused'][estimate]:.3f}, best branch {best} "
              f"{scores[best][estimate]:.3f}, fused {margin:.1%} lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
