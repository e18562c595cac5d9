"""What range labels cost: the same faces and split, trained once on exact ages and once on
Adience's eight age ranges, both scored on the exact ages of the validation split.

    python bench/ranges_cost.py --cache bench/out/cpu-budget/cache --recipe recipes/ranges-check.toml \
        --out bench/out/ranges

Relabels the cache's faces as Adience would (each exact age becomes the Adience range it
falls in, or the nearest one: (0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53),
(60, 100)) into a second cache that shares the crops and the split; trains the recipe's
branches and fusion head on each; evaluates both on the validation split's exact ages with
the ranges as age groups (made contiguous: 0-3, 4-7, 8-13, 14-22, 23-35, 36-45, 46-56, 57-),
so the table gives Adience's exact and one-off group accuracy next to the age MAE.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from common import run_logged

from agefuse import recipe as recipes
from agefuse.regions import manifest

RANGES = [(0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100)]
GROUPS = "r0-2:0-3,r4-6:4-7,r8-12:8-13,r15-20:14-22,r25-32:23-35,r38-43:36-45,r48-53:46-56,r60-100:57-"


def adience_range(age: int) -> tuple[int, int]:
    return min(RANGES, key=lambda r: max(r[0] - age, age - r[1], 0))


def relabelled_cache(cache: Path, out: Path) -> Path:
    """A cache whose rows carry Adience ranges, its crops and split those of ``cache``."""
    target = out / "cache-ranges"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(cache / manifest.SETTINGS, target / manifest.SETTINGS)
    for folder in cache.iterdir():
        if folder.is_dir():
            (target / folder.name).symlink_to(folder.resolve())
    groups = manifest.parse_age_groups(json.loads((cache / manifest.SETTINGS).read_text())["age_groups"])
    rows = []
    for row in manifest.load(cache):
        if row.get("age") is not None:
            low, high = adience_range(int(row["age"]))
            middle = (low + high) // 2
            row = {**row, "age": middle, "age_range": [low, high], "age_group": manifest.age_group(middle, groups)}
        rows.append(row)
    manifest.write_rows(target / manifest.MANIFEST, rows)
    return target


def train_and_evaluate(name: str, cache: Path, exact_cache: Path, recipe, out: Path) -> dict:
    runs = out / name
    runs.mkdir(parents=True, exist_ok=True)
    for region, options in recipe.branches.items():
        if not (runs / region / "best.pt").is_file():
            run_logged([sys.executable, "-m", "agefuse.branches.train", "--cache", str(cache), "--region", region,
                 "--out", str(runs / region), "--seed", str(recipe.seed), "--device", recipe.device,
                 *recipes.stage_argv("branch", options)], runs / f"{region}.log")
    run_logged([sys.executable, "-m", "agefuse.fusion.train", "--cache", str(cache), "--runs", str(runs),
         "--branches", ",".join(recipe.branches), "--out", str(runs / "fused"), "--seed", str(recipe.seed),
         *recipes.stage_argv("fusion", recipe.fusion)], runs / "fusion.log")
    # both judged on the exact ages of the same validation faces
    run_logged([sys.executable, "-m", "agefuse.fusion.evaluate", "--model", str(runs / "fused" / "fused.pt"), "--cache",
         str(exact_cache), "--split", "val", "--groups", GROUPS, "--out", str(runs / "eval")], runs / "evaluate.log")
    fused = json.loads((runs / "eval" / "evaluation.json").read_text())["results"]["fused"]
    return {"labels": name, "mae": fused["mae"], "cs5": fused["cs5"],
            "exact": fused["age_groups"]["exact_accuracy"], "one_off": fused["age_groups"]["one_off_accuracy"],
            "gender": fused["gender"]["accuracy"]}


def main(args) -> int:
    out, cache = Path(args.out), Path(args.cache)
    recipe = recipes.load(args.recipe)
    ranged = relabelled_cache(cache, out)
    rows = [train_and_evaluate("exact ages", cache, cache, recipe, out),
            train_and_evaluate("Adience ranges", ranged, cache, recipe, out)]
    lines = [f"recipe {recipe.path} ({', '.join(recipe.branches)}), seed {recipe.seed}; validation split of {cache}, "
             f"judged on exact ages; groups = Adience's ranges made contiguous", "",
             "| trained on | age MAE | CS@5 | exact group accuracy | one-off group accuracy | gender |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['labels']} | {r['mae']:.2f} | {100 * r['cs5']:.1f}% | {100 * r['exact']:.1f}% | "
              f"{100 * r['one_off']:.1f}% | {100 * r['gender']:.1f}% |" for r in rows]
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a UTKFace regions cache with exact ages")
    parser.add_argument("--recipe", default="recipes/ranges-check.toml")
    parser.add_argument("--out", required=True)
    sys.exit(main(parser.parse_args()))
