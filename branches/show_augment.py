"""agefuse-augment-grid: what the network sees. A PNG grid per region: each row one crop from
the cache, first as stored, then several augmented draws from the region's pipeline.

    agefuse-augment-grid --cache runs/utk --out runs/aug --regions face,eyes,mouth
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from agefuse.cli import HelpFormatter, output_folder, run_command

from . import augment
from .data import BRANCH_REGIONS, CacheError, RegionDataset


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="PNG grids of augmented samples, one per region.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True, type=output_folder, help="folder for augment_<region>.png")
    parser.add_argument("--regions", default="face,eyes,mouth,original",
                        help=f"comma-separated, of {sorted(BRANCH_REGIONS)}")
    parser.add_argument("--aug", default="default", help="none, default, or a .json config")
    parser.add_argument("--rows", type=int, default=6, help="crops per grid")
    parser.add_argument("--draws", type=int, default=7, help="augmented draws per crop")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def grid(region: str, args) -> np.ndarray:
    """(rows x (1 + draws)) tiles; the first column is the stored crop."""
    pipeline = augment.build_pipeline(region, args.aug, seed=args.seed)
    plain = RegionDataset(args.cache, region, "train", args.image_size, None)
    augmented = RegionDataset(args.cache, region, "train", args.image_size, pipeline)
    picks = np.random.default_rng(args.seed).choice(len(plain), min(args.rows, len(plain)), replace=False)
    rows = []
    for index in picks:
        tiles = [plain[index][0]] + [augmented[index][0] for _ in range(args.draws)]
        rows.append(np.hstack([np.pad(t.numpy().transpose(1, 2, 0), ((2, 2), (2, 2), (0, 0)),
                                      constant_values=255) for t in tiles]))
    return np.vstack(rows)


def main(args: argparse.Namespace) -> int:
    import cv2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for region in [r.strip() for r in args.regions.split(",") if r.strip()]:
        image = grid(region, args)
        path = out / f"augment_{region}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        print(f"{path}: {args.rows} {region} crops, stored (left) and {args.draws} augmented draws")
    return 0


def run() -> int:
    return run_command(get_args_parser, main, (CacheError,))


if __name__ == "__main__":
    sys.exit(run())
