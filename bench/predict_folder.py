"""agefuse-predict over a folder of 2,000 photos: images/s, and memory staying flat.

    python bench/predict_folder.py [--photos 2000] [--source ../shared/utkface] [--model fused.pt]

Links ``--photos`` UTKFace images (seeded choice) into a folder, runs
``agefuse-predict FOLDER --no-annotate --quiet`` on it as a user would, and samples the
process's resident memory every half second against how many photos are done (the JSON
files written). Flat means the memory after the first quarter of the photos grows by no
more than a few MB to the end.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED, command


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main(args) -> int:
    files = sorted(Path(args.source).glob("*.jpg"))
    chosen = [files[i] for i in sorted(np.random.default_rng(0).choice(len(files), args.photos, replace=False))]
    work = Path(tempfile.mkdtemp())
    (work / "photos").mkdir()
    for path in chosen:
        os.symlink(path.resolve(), work / "photos" / path.name)
    argv = [command("agefuse-predict"), str(work / "photos"), "--out", str(work / "out"),
            "--no-annotate", "--quiet", "--whole-image-fallback"] + (["--model", args.model] if args.model else [])
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []  # (seconds, photos done, MB)
    while process.poll() is None:
        memory = rss_mb(process.pid)
        done = len(list((work / "out").glob("*.json"))) if (work / "out").is_dir() else 0
        if memory is not None:
            samples.append((time.perf_counter() - start, done, memory))
        time.sleep(0.5)
    seconds = time.perf_counter() - start
    rows = sum(1 for _ in open(work / "out" / "predictions.csv")) - 1
    working = [(t, d, m) for t, d, m in samples if d > 0]
    first_photo = working[0][0] if working else 0.0
    quarter = [m for _, d, m in working if d >= args.photos // 4]
    print(f"{args.photos} photos, exit {process.returncode}, {rows} face rows in predictions.csv; "
          f"{seconds:.1f} s in all ({first_photo:.1f} s before the first photo was done: start-up, model load)")
    print(f"images/s over the run: {args.photos / seconds:.1f}; after start-up: "
          f"{args.photos / max(seconds - first_photo, 1e-9):.1f}")
    print(f"resident memory: peak {max(m for _, _, m in samples):.0f} MB; at 1/4 of the photos "
          f"{quarter[0]:.0f} MB, at the end {quarter[-1]:.0f} MB (growth {quarter[-1] - quarter[0]:+.1f} MB)")
    for fraction in (0.25, 0.5, 0.75, 1.0):
        t, d, m = next(s for s in working if s[1] >= fraction * args.photos * 0.999)
        print(f"  {d:5d} photos done at {t:6.1f} s: {m:.0f} MB")
    return process.returncode


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--source", default=str(SHARED))
    parser.add_argument("--model", default=None)
    sys.exit(main(parser.parse_args()))
