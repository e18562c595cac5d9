"""The evaluation's numbers, as plain functions of arrays (checked against scikit-learn in
the tests)."""
from __future__ import annotations

import numpy as np

RACE_NAMES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
MINOR_AGE = 18  # under 18: a minor


def age_report(true: np.ndarray, predicted: np.ndarray, race: np.ndarray | None = None) -> dict:
    """MAE, MSE, R², CS@5 (share within 5 years), MAE per decade and per race, and
    minors-vs-adults precision and recall (the child/teen/adult use)."""
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    error = predicted - true
    total = ((true - true.mean()) ** 2).sum()
    report = {
        "n": int(len(true)),
        "mae": float(np.abs(error).mean()),
        "mse": float((error ** 2).mean()),
        "r2": float(1 - (error ** 2).sum() / total) if total > 0 else float("nan"),
        "cs5": float((np.abs(error) <= 5).mean()),
    }
    decade = np.minimum(true // 10, 9).astype(int)
    report["mae_by_decade"] = {(f"{10 * d}-{10 * d + 9}" if d < 9 else "90+"): float(np.abs(error[decade == d]).mean())
                               for d in range(10) if (decade == d).any()}
    worst = max(report["mae_by_decade"], key=report["mae_by_decade"].get)
    report["worst_decade"], report["worst_decade_mae"] = worst, report["mae_by_decade"][worst]
    if race is not None:
        race = np.asarray(race)
        report["mae_by_race"] = {RACE_NAMES.get(int(r), str(r)): float(np.abs(error[race == r]).mean())
                                 for r in sorted(set(race[race >= 0].tolist()))}
    minor_true, minor_pred = true < MINOR_AGE, predicted < MINOR_AGE
    report["minors"] = binary_report(minor_true, minor_pred)
    report["adults"] = binary_report(~minor_true, ~minor_pred)
    return report


def binary_report(true: np.ndarray, predicted: np.ndarray) -> dict:
    """Precision, recall and F1 of the positive class; 0 where undefined (as scikit-learn's
    zero_division=0)."""
    true, predicted = np.asarray(true, bool), np.asarray(predicted, bool)
    tp = int((true & predicted).sum())
    precision = tp / predicted.sum() if predicted.sum() else 0.0
    recall = tp / true.sum() if true.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "support": int(true.sum())}


def gender_report(true: np.ndarray, probability_female: np.ndarray) -> dict:
    """Accuracy, precision/recall/F1 of 'female' (label 1), and the confusion matrix
    [[male as male, male as female], [female as male, female as female]]."""
    true = np.asarray(true)
    known = true >= 0
    true, predicted = true[known].astype(int), (np.asarray(probability_female)[known] >= 0.5).astype(int)
    confusion = [[int(((true == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    return {"n": int(known.sum()), "accuracy": float((true == predicted).mean()) if len(true) else float("nan"),
            **{k: v for k, v in binary_report(true == 1, predicted == 1).items() if k != "support"},
            "confusion": confusion}


def interval_coverage(true: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    true = np.asarray(true, float)
    return float(((true >= low) & (true <= high)).mean())
