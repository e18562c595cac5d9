"""Throughput of the regions stage, end to end (process start to the last crop written).

    python bench/regions_throughput.py --images 2000 --workers 2     # the issue's figure
    python bench/regions_throughput.py --images 0 --workers 2        # the whole pool

Draws ``--images`` files of ``../shared/utkface`` at random (seeded; 0 = all), links them into
a temporary folder, runs ``agefuse-regions`` on it into a fresh cache and prints images/s,
the wall time, and the detector-miss / fallback / rejected counts from the run's summary.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED


def main(args):
    files = sorted(p for p in Path(args.source).iterdir() if p.is_file())
    if args.images:
        files = random.Random(args.seed).sample(files, args.images)
    work = Path(tempfile.mkdtemp(prefix="agefuse-bench-"))
    try:
        source = work / "images"
        source.mkdir()
        for path in files:
            os.symlink(path.resolve(), source / path.name)
        command = [sys.executable, "-m", "agefuse.regions.cli", str(source), "--cache", str(work / "cache"),
                   "--workers", str(args.workers), "--detector", args.detector,
                   "--upsample", str(args.upsample)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL if not args.verbose else None)
        wall = time.perf_counter() - start
        summary = json.loads((work / "cache" / "summary.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"regions stage, {len(files)} files of {args.source}, {args.workers} workers, "
          f"detector {args.detector} (upsample {args.upsample}), {os.cpu_count()} CPUs")
    print(f"  wall time end to end : {wall:.1f} s")
    print(f"  images/s end to end  : {len(files) / wall:.1f}   (crops written: {summary['cached']})")
    print(f"  images/s in the loop : {summary['images_per_second']}")
    print(f"  detected             : {summary['detected']}")
    print(f"  detector misses      : {summary['fallback']} (all cropped by the whole-image fallback)")
    print(f"  rejected (unreadable): {summary['rejected']}")
    print(f"  skipped for labels   : {summary['label_problems']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(SHARED))
    parser.add_argument("--images", type=int, default=2000, help="0 = every file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--detector", default="hog")
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    main(parser.parse_args())
