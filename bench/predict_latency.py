"""agefuse-predict latency per face on this CPU: detection + landmarks + crops + every branch
+ fusion, for a photo with one face and a photo with four (only the crops the model reads, as
agefuse-predict cuts them).

    python bench/predict_latency.py --model runs/fused/fused.pt [--upsample 0] [--repeats 30]

The photos are built from UTKFace faces (200-px chips on a plain background; one face in a
320x320 photo, four in a 2x2 grid of 480x480). Warm-up calls come first (model loading is
not latency). Prints milliseconds per photo and per face, split into the face pipeline
(detection, landmarks, crops) and the networks (branches + head).
"""
import argparse
import glob
import os
import time

import cv2
import numpy as np
import torch

from agefuse.fusion import branch_pool, crop_settings, estimate, find_faces, load_fused


def sample_faces(source: str, count: int) -> list[np.ndarray]:
    """``count`` UTKFace chips from ``source``, the same ones on every run (seed 0)."""
    files = sorted(glob.glob(os.path.join(source, "*.jpg")))
    return [cv2.imread(files[i]) for i in np.random.default_rng(0).choice(len(files), count, replace=False)]


def photo(faces: list[np.ndarray], grid: int) -> np.ndarray:
    side = 40 + grid * 220
    canvas = np.full((side, side, 3), 235, np.uint8)
    for i, face in enumerate(faces):
        y, x = 20 + (i // grid) * 220, 20 + (i % grid) * 220
        canvas[y:y + 200, x:x + 200] = face
    return canvas


def timed(model, image, upsample, repeats, pool, detect_threads):
    pipeline, network, found = [], [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        faces = find_faces(model, image, crop_settings(model, "hog", upsample), threads=detect_threads)
        middle = time.perf_counter()
        estimate(model, faces, pool)
        network.append(time.perf_counter() - middle)
        pipeline.append(middle - start)
        found = len(faces)
    return found, 1000 * np.median(pipeline), 1000 * np.median(network)


def main(args):
    model, state = load_fused(args.model)
    if not args.eager:
        model.trace_branches()
    pool = branch_pool(model, args.threads) if args.side_by_side else None
    if not args.side_by_side:
        torch.set_num_threads(args.threads)
    detect_threads = 1 if args.plain_detector else args.threads
    faces = sample_faces(args.source, 4)
    photos = {"1-face photo (320x320)": (photo(faces[:1], 1), 1), "4-face photo (480x480)": (photo(faces, 2), 4)}
    print(f"model {args.model}: branches {', '.join(f'{r} {s}px' for r, s in zip(model.regions, model.image_sizes))}; "
          f"{torch.get_num_threads()} torch threads, branches "
          f"{'side by side on ' + str(pool._max_workers) + ' threads' if pool else 'one after another'}, {'eager' if args.eager else 'traced'} branches, HOG upsample {args.upsample} on {detect_threads} thread(s), median of {args.repeats}")
    for name, (image, expected) in photos.items():
        timed(model, image, args.upsample, 3, pool, detect_threads)  # warm-up: lazy model loads, allocator
        found, pipeline_ms, network_ms = timed(model, image, args.upsample, args.repeats, pool, detect_threads)
        total = pipeline_ms + network_ms
        print(f"{name}: {found} of {expected} faces found; {total:.1f} ms per photo = "
              f"{pipeline_ms:.1f} detection+crops + {network_ms:.1f} branches+fusion; "
              f"{total / max(found, 1):.1f} ms per face")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "sample", "utkface"))
    parser.add_argument("--upsample", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one-after-another", dest="side_by_side", action="store_false",
                        help="run the branches in turn, each on all threads (the old way)")
    parser.add_argument("--eager", action="store_true", help="branches as plain PyTorch modules, not traced")
    parser.add_argument("--plain-detector", action="store_true",
                        help="dlib's detector on one thread, as before the shared pyramid")
    main(parser.parse_args())
