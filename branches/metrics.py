"""Age metrics and the learning-curve plot of a branch run."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def age_metrics(true: np.ndarray, predicted: np.ndarray, prefix: str = "val_") -> dict:
    """MAE overall and per decade (0-9, ..., 90+), and the worst decade's."""
    error = np.abs(np.asarray(predicted, float) - np.asarray(true, float))
    decade = np.minimum(np.asarray(true) // 10, 9).astype(int)
    per_decade = {f"{10 * d}-{10 * d + 9}" if d < 9 else "90+": float(error[decade == d].mean())
                  for d in range(10) if (decade == d).any()}
    worst = max(per_decade, key=per_decade.get)
    return {f"{prefix}mae": float(error.mean()), f"{prefix}mae_by_decade": per_decade,
            f"{prefix}worst_decade": worst, f"{prefix}worst_decade_mae": per_decade[worst]}


def plot_learning_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rounds = [h["round"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(rounds, [h["train_loss"] for h in history], "o-", label="train")
    left.plot(rounds, [h["val_loss"] for h in history], "o-", label="validation")
    left.set(xlabel="bootstrap round", ylabel="loss", title=f"{title}: loss")
    left.legend()
    right.plot(rounds, [h["train_mae"] for h in history], "o-", label="train")
    right.plot(rounds, [h["val_mae"] for h in history], "o-", label="validation")
    right.plot(rounds, [h["val_worst_decade_mae"] for h in history], "s--", alpha=0.6,
               label="validation, worst decade")
    right.set(xlabel="bootstrap round", ylabel="age MAE (years)", title="age MAE")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
