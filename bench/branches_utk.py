"""Branches on the full UTKFace pool under a CPU budget: which age head and backbone, then
every region with the plain bootstrap (alpha 0) and the rebalanced one side by side.

    python bench/branches_utk.py --cache runs/utk --out bench/out/branches --minutes 6

Phase 1 (face branch, alpha 0.5, --pick-minutes each): small_cnn with the distribution head,
small_cnn with the regression head, efficientnet_lite0 (packaged ImageNet weights) with the
distribution head. The lowest validation MAE picks the head and backbone.
Phase 2: face, eyes, mouth, original with that choice, alpha 0 and --alpha, --minutes each.
Each run's rounds are sized from a measured training speed so the cosine schedule ends
inside the budget (the same count for runs compared side by side); a --time-limit of twice
the budget is a safety net. Everything is on your validation split.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from utk_accuracy import images_per_second  # bench/ is on the path of a bench script

ROUND_SIZE = 6000
SPEEDS: dict[str, float] = {}


def train_run(args, name, region, model, head, alpha, minutes):
    out = Path(args.out) / name
    # measured once per model, so runs that are compared get the same number of rounds
    if model not in SPEEDS:
        SPEEDS[model] = images_per_second(model, args.image_size, torch.device("cpu"), 64)
    speed = SPEEDS[model]
    # ~75% of the budget is training steps; the rest is loading, validation and checkpoints
    rounds = max(2, int(minutes * 60 * speed * 0.75 / (ROUND_SIZE * (2 if region == "eyes" else 1))))
    command = [sys.executable, "-m", "agefuse.branches.train", "--cache", args.cache, "--region", region,
               "--out", str(out), "--model", model, "--age-head", head, "--alpha", str(alpha),
               "--image-size", str(args.image_size), "--round-size", str(ROUND_SIZE), "--max-rounds", str(rounds),
               "--k", "3", "--epsilon", "0.005", "--time-limit", str(2 * minutes), "--seed", str(args.seed),
               "--workers", "1", "--batch-size", "64", "--lr", "2e-3" if model == "small_cnn" else "1e-3"]
    start = time.perf_counter()
    with open(Path(args.out) / f"{name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    history = json.loads((out / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    return {"run": name, "region": region, "model": model, "head": head, "alpha": alpha,
            "rounds": len(history), "planned_rounds": rounds, "minutes": round((time.perf_counter() - start) / 60, 1),
            "val_mae": round(best["val_mae"], 2), "worst_decade": best["val_worst_decade"],
            "worst_decade_mae": round(best["val_worst_decade_mae"], 2),
            "gender_acc": round(100 * best["val_gender_acc"], 1), "train_img_s": best["train_images_per_s"]}


def show(rows):
    print(f"{'run':>24} {'region':>8} {'model':>18} {'head':>4} {'alpha':>5} {'rounds':>6} {'min':>5} "
          f"{'val MAE':>7} {'worst decade (MAE)':>19} {'gender %':>8} {'img/s':>6}")
    for r in rows:
        print(f"{r['run']:>24} {r['region']:>8} {r['model']:>18} {r['head']:>4} {r['alpha']:>5} "
              f"{r['rounds']:>6} {r['minutes']:>5} {r['val_mae']:>7.2f} "
              f"{r['worst_decade'] + ' (' + format(r['worst_decade_mae'], '.2f') + ')':>19} "
              f"{r['gender_acc']:>8.1f} {r['train_img_s']:>6}", flush=True)


def main(args):
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"cache {args.cache}, seed {args.seed}, image size {args.image_size}, round size {ROUND_SIZE}")
    for name in {args.model} if not args.pick_minutes else {"small_cnn", "efficientnet_lite0"}:
        SPEEDS[name] = images_per_second(name, args.image_size, torch.device("cpu"), 64)
        print(f"{name}: {SPEEDS[name]:.0f} training images/s measured; rounds are planned from it")
    rows = []
    if args.pick_minutes:
        print(f"\nphase 1: face branch, alpha {args.alpha}, {args.pick_minutes} min each")
        for model, head in (("small_cnn", "dist"), ("small_cnn", "reg"), ("efficientnet_lite0", "dist")):
            rows.append(train_run(args, f"pick-{model}-{head}", "face", model, head, args.alpha, args.pick_minutes))
            show(rows[-1:])
        best = min(rows, key=lambda r: r["val_mae"])
        model, head = best["model"], best["head"]
        print(f"-> chosen: {model} with the {head} head (lowest validation MAE)")
    else:
        model, head = args.model, args.head
    print(f"\nphase 2: every region, alpha 0 vs {args.alpha}, {args.minutes} min each")
    regions = []
    for region in args.regions.split(","):
        for alpha in (0.0, args.alpha):
            regions.append(train_run(args, f"{region}-a{alpha}", region, model, head, alpha, args.minutes))
            show(regions[-1:])
    print("\nsummary")
    show(rows + regions)
    (Path(args.out) / "results.json").write_text(json.dumps(rows + regions, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", default="bench/out/branches")
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--pick-minutes", type=float, default=4, help="0 = skip phase 1, use --model/--head")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--head", default="dist")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--regions", default="face,eyes,mouth,original")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
