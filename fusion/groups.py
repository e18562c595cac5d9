"""Age groups as outputs: the probability of each group, summed from the fused model's age
distribution, and how well those probabilities hold up.

``--groups child:0-12,teen:13-17,adult:18-`` names contiguous groups from 0, the last one
open-ended; the default is minors (0-17) and adults (18-). A face's group probabilities are
its distribution's mass in each group (after the temperature fitted for the age interval),
so they sum to 1. ``group_report`` gives, for faces with known ages, per-group precision and
recall of the most probable group, exact and one-off group accuracy (Adience's protocol:
off by one group counts as right for one-off), the confusion matrix, and the calibration of
each group's probability: reliability bins and the expected calibration error (ECE: the
gap between stated probability and observed frequency, averaged over ten bins weighted by
their faces).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_GROUPS = "minor:0-17,adult:18-"
BINS = 10


@dataclass(frozen=True)
class Group:
    name: str
    low: int
    high: int | None  # inclusive; None = no upper end

    def __str__(self) -> str:
        return f"{self.name} ({self.low}-{'' if self.high is None else self.high})"


def parse_groups(text: str = DEFAULT_GROUPS) -> list[Group]:
    """``"child:0-12,teen:13-17,adult:18-"``: named, contiguous, from 0, the last open-ended."""
    groups = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = re.fullmatch(r"([A-Za-z][\w-]*):(\d+)-(\d*)", part)
        if match is None:
            raise ValueError(f"age group {part!r} is not NAME:LOW-HIGH or NAME:LOW- (e.g. adult:18-)")
        low, high = int(match[2]), int(match[3]) if match[3] else None
        if high is not None and high < low:
            raise ValueError(f"age group {part!r} ends before it starts")
        groups.append(Group(match[1], low, high))
    if not groups:
        raise ValueError("no age groups given")
    if len({g.name for g in groups}) < len(groups):
        raise ValueError(f"age group names repeat in {text!r}")
    for before, after in zip(groups, groups[1:]):
        if before.high is None or after.low != before.high + 1:
            raise ValueError(f"age groups {before} and {after} are not contiguous")
    if groups[0].low != 0 or groups[-1].high is not None:
        raise ValueError("age groups must start at 0 and end open-ended, e.g. adult:18-")
    return groups


def group_index(age, groups: list[Group]) -> np.ndarray:
    """The index of the group each age falls in."""
    starts = np.array([g.low for g in groups[1:]])
    return np.searchsorted(starts, np.asarray(age, float), side="right")


def group_probabilities(probabilities, groups: list[Group]):
    """(N, A+1) age probabilities -> (N, G) group probabilities (torch or NumPy)."""
    ages = probabilities.shape[1]
    columns = [probabilities[:, g.low:(ages if g.high is None else min(g.high + 1, ages))].sum(1) for g in groups]
    return np.stack(columns, 1) if isinstance(probabilities, np.ndarray) else torch.stack(columns, 1)


def calibration(probability: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> dict:
    """Reliability bins (mean stated probability, observed frequency, faces) and the ECE."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            stated, observed = float(probability[chosen].mean()), float(outcome[chosen].mean())
            rows.append({"bin": [float(edges[b]), float(edges[b + 1])], "stated": stated, "observed": observed,
                         "faces": int(chosen.sum())})
            ece += chosen.mean() * abs(stated - observed)
    return {"ece": float(ece), "bins": rows}


def group_report(true_age: np.ndarray, probabilities: np.ndarray, groups: list[Group]) -> dict:
    """Every group figure for faces with known ages (``probabilities``: (N, G))."""
    true = group_index(true_age, groups)
    predicted = probabilities.argmax(1)
    confusion = [[int(((true == t) & (predicted == p)).sum()) for p in range(len(groups))] for t in range(len(groups))]
    per_group = {}
    for i, group in enumerate(groups):
        said, truly = predicted == i, true == i
        hits = int((said & truly).sum())
        per_group[group.name] = {
            "precision": hits / said.sum() if said.sum() else 0.0, "recall": hits / truly.sum() if truly.sum() else 0.0,
            "support": int(truly.sum()), **calibration(probabilities[:, i], truly.astype(float))}
    return {"groups": [str(g) for g in groups], "exact_accuracy": float((predicted == true).mean()),
            "one_off_accuracy": float((np.abs(predicted - true) <= 1).mean()), "confusion": confusion,
            "per_group": per_group}
