"""The fused model vs each branch on the validation split of the full UTKFace pool, from the
branch runs of bench/branches_utk.py.

    python bench/fusion_utk.py --cache runs/utk --branch-runs bench/out/branches --alpha 0.5 \
        --out bench/out/fusion

Trains the fusion head over ``<branch-runs>/<region>-a<alpha>/best.pt`` for face, eyes,
mouth and original, then runs agefuse-evaluate on the validation split and prints its table
and the stage timings.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path


def main(args):
    out = Path(args.out)
    regions = args.regions.split(",")
    spec = ",".join(f"{r}={Path(args.branch_runs) / f'{r}-a{args.alpha}' / 'best.pt'}" for r in regions)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "agefuse.fusion.train", "--cache", args.cache, "--branches", spec,
                    "--out", str(out / "fused"), "--seed", str(args.seed)], check=True)
    fused = time.perf_counter()
    subprocess.run([sys.executable, "-m", "agefuse.fusion.evaluate", "--model", str(out / "fused" / "fused.pt"),
                    "--cache", args.cache, "--split", "val", "--out", str(out / "eval")], check=True)
    print(f"timings: fusion (features of train+val and the head) {fused - start:.0f} s, "
          f"evaluation {time.perf_counter() - fused:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--branch-runs", required=True)
    parser.add_argument("--alpha", default="0.5")
    parser.add_argument("--regions", default="face,eyes,mouth,original")
    parser.add_argument("--out", default="bench/out/fusion")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
