"""What several bench scripts share: where the photos are, the sample photos they time, a
model made ready as agefuse-predict runs it, timing helpers and the commands they start.

Not a script. Bench scripts run as ``python bench/NAME.py``; Python then puts ``bench/``
first on ``sys.path`` itself, so they ``import common`` with no path set-up of their own.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "utkface"  # the bundled 252 UTKFace chips
SHARED = ROOT.parent / "shared" / "utkface"  # the whole pool, beside the checkout (not in it)


def sample_faces(source: str | Path, count: int) -> list[np.ndarray]:
    """``count`` UTKFace chips from ``source``, the same ones on every run (seed 0)."""
    files = sorted(Path(source).glob("*.jpg"))
    return [cv2.imread(str(files[i])) for i in np.random.default_rng(0).choice(len(files), count, replace=False)]


def photo(faces: list[np.ndarray], grid: int) -> np.ndarray:
    """200-px faces in a ``grid`` x ``grid`` layout on a plain background, 20 px apart."""
    side = 40 + grid * 220
    canvas = np.full((side, side, 3), 235, np.uint8)
    for i, face in enumerate(faces):
        y, x = 20 + (i // grid) * 220, 20 + (i % grid) * 220
        canvas[y:y + 200, x:x + 200] = face
    return canvas


def bench_photos(source: str | Path) -> dict[str, np.ndarray]:
    """The timed photos: one sample face in a 320x320 photo, four in a 480x480 one."""
    faces = sample_faces(source, 4)
    return {"1-face photo (320x320)": photo(faces[:1], 1), "4-face photo (480x480)": photo(faces, 2)}


def photo_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--source`` (the faces of the timed photos) and ``--threads`` (CPU cores for a model)."""
    parser.add_argument("--source", default=str(SAMPLE), help="a folder of UTKFace chips")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def ready_model(path: str | None, threads: int):
    """The fused model as agefuse-predict runs it: traced branches side by side on ``threads``;
    returns ``(model, pool, crop settings)``."""
    from agefuse.fusion import branch_pool, crop_settings, load_fused
    model, _ = load_fused(path)
    model.trace()
    return model, branch_pool(model, threads), crop_settings(model)


def branch_sizes(model) -> str:
    """``original 64px, face 64px, ...``: a fused model's branches and their input sizes."""
    return ", ".join(f"{r} {s}px" for r, s in zip(model.regions, model.image_sizes))


def predict_ms(model, image: np.ndarray, upsample: int, repeats: int, pool, detect_threads: int
               ) -> tuple[int, float, float]:
    """``repeats`` agefuse-predict calls on ``image``: faces found, and the median ms of the face
    pipeline (detection, landmarks, crops) and of the networks (branches and head)."""
    from agefuse.fusion import crop_settings, estimate, find_faces
    pipeline, network, found = [], [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        faces = find_faces(model, image, crop_settings(model, "hog", upsample), threads=detect_threads)
        middle = time.perf_counter()
        estimate(model, faces, pool)
        network.append(time.perf_counter() - middle)
        pipeline.append(middle - start)
        found = len(faces)
    return found, 1000 * float(np.median(pipeline)), 1000 * float(np.median(network))


def mean_ms(call: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Mean ms per call of ``call`` over ``repeats`` calls, after ``warmup`` calls untimed."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1000 * (time.perf_counter() - start) / repeats


def command(name: str) -> str:
    """A console script of this environment (``agefuse-predict``, ...), as a user runs it."""
    return str(Path(sys.executable).parent / name)


def run_logged(argv: list, log: Path, cwd: Path | None = None) -> None:
    """Runs a command (in ``cwd``) with its output in ``log``; a failure names the log and stops."""
    with open(log, "w") as handle:
        if subprocess.run([str(a) for a in argv], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(map(str, argv[:4]))} ... (see {log})")
