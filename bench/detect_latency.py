"""dlib's HOG face detection alone: one thread (dlib's own call) against the pyramid shared
between two threads (regions/hog_pyramid.py), on the photos of predict_latency.py and a
640x480 one, interleaved so that both see the same machine.

    python bench/detect_latency.py [--rounds 5] [--repeats 40]
"""
import argparse
import os
import time

import cv2
import numpy as np

from predict_latency import photo, sample_faces
from agefuse.regions import landmarks


def main(args):
    faces = sample_faces(args.source, 4)
    grid = photo(faces, 2)
    photos = {"1-face 320x320": photo(faces[:1], 1), "4-face 480x480": grid,
              "4-face 640x480": cv2.resize(grid, (640, 480))}
    print(f"ms per detection, mean of {args.repeats}; {args.rounds} rounds, one thread then two in each")
    print("| photo | faces | one thread (dlib) | two threads (shared pyramid) |")
    print("|---|---|---|---|")
    for name, image in photos.items():
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        times = {1: [], 2: []}
        for _ in range(args.rounds):
            for threads in (1, 2):
                landmarks.face_locations(gray, threads=threads)
                start = time.perf_counter()
                for _ in range(args.repeats):
                    found = landmarks.face_locations(gray, threads=threads)
                times[threads].append(1000 * (time.perf_counter() - start) / args.repeats)
        print(f"| {name} | {len(found)} | " + " | ".join(
            f"{min(t):.1f}-{max(t):.1f} (median {np.median(t):.1f})" for t in times.values()) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "sample", "utkface"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=40)
    main(parser.parse_args())
