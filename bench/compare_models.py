"""Several fused models on the same faces of a cache split, with a paired interval for each MAE difference.

    python bench/compare_models.py --cache runs/cpu-budget/cache \\
        teacher=runs/cpu-budget/fused/fused.pt student=runs/installed/fused/fused.pt previous=old.pt

Each model scores every face of the split (its own crops from the cache, as agefuse-evaluate reads
them). The table gives age MAE, CS@5, gender accuracy, the worst decade 0-89 and how often the stated
interval holds (on the half of the validation faces its temperature was not fitted on). Then, for each
model against the first, the MAE difference with a 95% interval from a paired bootstrap over faces
(the same resampled faces for both models): a difference whose interval holds 0 is not a win.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from agefuse.fusion import age_report, gender_report, load_fused
from agefuse.fusion.features import extract
from agefuse.fusion.metrics import interval_coverage
from agefuse.fusion.model import in_calibration_half
from agefuse.regions import manifest

DECADES_0_89 = [f"{low}-{low + 9}" for low in range(0, 90, 10)]


@torch.inference_mode()
def scores(path: str, cache: str, rows: list[dict]) -> dict[str, np.ndarray]:
    model, _ = load_fused(path)
    data = extract(model, cache, rows, desc=path)
    out = model.predict(torch.as_tensor(data["features"]), torch.as_tensor(data["present"]))
    return {"age": out["age"].numpy(), "low": out["age_low"].numpy(), "high": out["age_high"].numpy(),
            "female": out["gender_female"].numpy()}


def paired_interval(errors_a: np.ndarray, errors_b: np.ndarray, rounds: int, seed: int) -> tuple[float, float]:
    """95% bootstrap interval of mean(errors_b) - mean(errors_a), faces resampled together."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(errors_a), size=(rounds, len(errors_a)))
    differences = errors_b[picks].mean(1) - errors_a[picks].mean(1)
    return float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))


def row_of(name: str, true: dict, got: dict, checked: np.ndarray) -> str:
    age = age_report(true["age"], got["age"])
    decades = {k: v for k, v in age["mae_by_decade"].items() if k in DECADES_0_89}
    worst = max(decades, key=decades.get)
    known = true["gender"] >= 0
    gender = gender_report(true["gender"][known], got["female"][known])
    coverage = interval_coverage(true["age"][checked], got["low"][checked], got["high"][checked])
    return (f"| {name} | {age['mae']:.2f} | {100 * age['cs5']:.1f}% | {100 * gender['accuracy']:.1f}% | "
            f"{worst} ({decades[worst]:.2f}) | {100 * coverage:.1f}% |")


def main(args) -> None:
    models = dict(item.split("=", 1) for item in args.models)
    rows = [r for r in manifest.load(args.cache) if r["status"] != "rejected" and r["split"] == args.split
            and r.get("age") is not None]
    true = {"age": np.array([r["age"] for r in rows], np.float64),
            "gender": np.array([-1 if r["gender"] is None else r["gender"] for r in rows])}
    checked = np.array([not in_calibration_half(r["id"]) for r in rows])
    results = {name: scores(path, args.cache, rows) for name, path in models.items()}
    print(f"{len(rows)} {args.split} faces of {args.cache}; the interval on the {checked.sum()} it was not fitted on\n")
    print("| model | age MAE | CS@5 | gender | worst decade 0-89 (MAE) | 80% interval holds |")
    print("|---|---|---|---|---|---|")
    for name, got in results.items():
        print(row_of(f"{name} ({models[name]})", true, got, checked))
    first, *others = models
    errors = {name: np.abs(got["age"] - true["age"]) for name, got in results.items()}
    print(f"\nMAE difference against {first}, 95% paired bootstrap over faces ({args.rounds} resamples):")
    for name in others:
        low, high = paired_interval(errors[first], errors[name], args.rounds, args.seed)
        difference = errors[name].mean() - errors[first].mean()
        verdict = "no difference (0 inside)" if low <= 0 <= high else ("lower" if high < 0 else "higher")
        print(f"  {name} - {first}: {difference:+.3f} [{low:+.3f}, {high:+.3f}]: {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="NAME=FUSED.pt", help="the first is the reference")
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
