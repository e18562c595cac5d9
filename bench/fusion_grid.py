"""The fusion head's own settings, tried over the same trained branches: which to put in a recipe.

    python bench/fusion_grid.py --run bench/out/cpu-budget --out bench/out/fusion-grid \
        --grid "branch-dropout=0.15,0.3,0.5" --grid "lr=1e-3,3e-4" --grid "seed=0,1"

``--run`` is a folder of ``bench/utk_accuracy.py`` (its ``cache``, ``branches/<region>/best.pt``
and ``fused/`` with the branch features already extracted, which every variant reuses). Each
combination is trained with agefuse-train-fusion and judged by agefuse-evaluate on the
validation split, as the recipe's own run is; the table is printed and saved as
``grid.md``. Only the validation split is used: the test split stays unseen.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

from common import ROOT, run_logged


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a bench/utk_accuracy.py output folder")
    parser.add_argument("--out", required=True, type=Path, help="folder for one sub-folder per variant and grid.md")
    parser.add_argument("--grid", action="append", default=[],
                        help="OPTION=V1,V2,...: an agefuse-train-fusion option and its values, yes/no for a "
                             "flag (repeatable)")
    return parser


def option(name: str, value: str) -> list[str]:
    """An option and its value; yes/no for a flag (--mirror / --no-mirror)."""
    return [f"--{name}" if value == "yes" else f"--no-{name}"] if value in ("yes", "no") else [f"--{name}", value]


def main(args: argparse.Namespace) -> int:
    options = [g.split("=", 1) for g in args.grid]
    if any(len(o) != 2 for o in options):
        raise SystemExit("error: --grid takes OPTION=V1,V2,...")
    names = [o[0] for o in options]
    combos = list(itertools.product(*[o[1].split(",") for o in options])) or [()]
    # the branches in the run's own order (the features' layout)
    summary = json.loads((args.run / "fused" / "fusion.json").read_text())
    spec = ",".join(r if isinstance(p, list) else f"{r}={p}" for r, p in summary["branches"].items())
    # and the run's fold branches, if its head learned from them (or, cross-fitted, they are the branch)
    out_of_fold = [a for r, ps in summary.get("out_of_fold", {}).items()
                   for a in ("--out-of-fold", f"{r}={','.join(ps)}")]
    out_of_fold += ["--cross-fit"] if summary.get("cross_fit") else []
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"| {' | '.join(names)} | age MAE | CS@5 | worst decade 0-89 | gender | interval | best epoch |",
             "|" + "---|" * (len(names) + 6)]
    print(lines[0] + "\n" + lines[1], flush=True)
    for values in combos:
        folder = args.out / ("_".join(f"{n}{v}" for n, v in zip(names, values)) or "defaults")
        (folder / "fused").mkdir(parents=True, exist_ok=True)
        # same branches, same features: the run's, or those an earlier variant computed
        for features in [*(args.run / "fused").glob("features-*.npz"), *args.out.glob("*/fused/features-*.npz")]:
            if not (folder / "fused" / features.name).exists():
                shutil.copy(features, folder / "fused" / features.name)
        tick = time.perf_counter()
        run_logged([sys.executable, "-m", "agefuse.fusion.train", "--cache", str(args.run / "cache"),
             "--branches", spec, "--out", str(folder / "fused"), "--device", "cpu", *out_of_fold,
             *[a for n, v in zip(names, values) for a in option(n, v)]], folder / "fusion.log", cwd=ROOT)
        run_logged([sys.executable, "-m", "agefuse.fusion.evaluate", "--model", str(folder / "fused" / "fused.pt"),
             "--cache", str(args.run / "cache"), "--split", "val", "--out", str(folder / "eval")],
            folder / "evaluate.log", cwd=ROOT)
        fused = json.loads((folder / "eval" / "evaluation.json").read_text())["results"]["fused"]
        epoch = json.loads((folder / "fused" / "fusion.json").read_text())["best_epoch"]
        decades = {d: m for d, m in fused["mae_by_decade"].items() if d != "90+"}  # the targets' decades
        worst = max(decades, key=decades.get)
        line = (f"| {' | '.join(values)} | {fused['mae']:.3f} | {fused['cs5']:.1%} | {worst} ({decades[worst]:.2f}) | "
                f"{fused['gender']['accuracy']:.1%} | {fused['interval_coverage']:.1%} | {epoch} |")
        lines.append(line)
        print(line + f"  ({time.perf_counter() - tick:.0f} s)", flush=True)
    (args.out / "grid.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
