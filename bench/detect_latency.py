"""dlib's HOG face detection alone: one thread (dlib's own call) against the pyramid shared
between two threads (regions/hog_pyramid.py), on the photos of predict_latency.py and a
640x480 one, interleaved so that both see the same machine.

    python bench/detect_latency.py [--rounds 5] [--repeats 40]
"""
import argparse

import cv2
import numpy as np
from common import SAMPLE, bench_photos, mean_ms

from agefuse.regions import face_locations


def main(args):
    photos = bench_photos(args.source)
    photos["4-face photo (640x480)"] = cv2.resize(photos["4-face photo (480x480)"], (640, 480))
    print(f"ms per detection, mean of {args.repeats}; {args.rounds} rounds, one thread then two in each")
    print("| photo | faces | one thread (dlib) | two threads (shared pyramid) |")
    print("|---|---|---|---|")
    for name, image in photos.items():
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        times = {1: [], 2: []}
        for _ in range(args.rounds):
            for threads in (1, 2):
                times[threads].append(mean_ms(lambda: face_locations(gray, threads=threads), args.repeats, warmup=1))
        found = face_locations(gray, threads=2)
        print(f"| {name} | {len(found)} | " + " | ".join(
            f"{min(t):.1f}-{max(t):.1f} (median {np.median(t):.1f})" for t in times.values()) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(SAMPLE))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=40)
    main(parser.parse_args())
