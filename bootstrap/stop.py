"""When to stop: the validation loss has stopped moving across bootstrap rounds.

Training ends when the last ``k`` validation losses differ by less than ``epsilon``
relative to their mean ((max - min) / mean < epsilon), or after ``max_rounds`` rounds.
The best round is tracked so its checkpoint can be the one kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class StopRule:
    k: int = 3
    epsilon: float = 0.01
    max_rounds: int = 30
    losses: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_round: int = -1

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"k={self.k}: stability needs at least 2 rounds to compare")
        if self.epsilon <= 0 or self.max_rounds < 1:
            raise ValueError("epsilon must be > 0 and max_rounds >= 1")

    def update(self, loss: float) -> bool:
        """Record a round's validation loss; True when the run should stop. Returns whether
        this round is the best so far in ``improved``."""
        if not math.isfinite(loss):
            raise ValueError(f"validation loss is {loss}")
        self.losses.append(float(loss))
        self.improved = loss < self.best_loss
        if self.improved:
            self.best_loss, self.best_round = float(loss), len(self.losses) - 1
        return self.should_stop()

    def should_stop(self) -> bool:
        return self.stable() or len(self.losses) >= self.max_rounds

    def stable(self) -> bool:
        if len(self.losses) < self.k:
            return False
        window = self.losses[-self.k:]
        return (max(window) - min(window)) / max(abs(sum(window) / self.k), 1e-12) < self.epsilon

    def reason(self) -> str:
        if self.stable():
            return (f"validation loss stable: the last {self.k} rounds within "
                    f"{100 * self.epsilon:g}% of each other")
        if len(self.losses) >= self.max_rounds:
            return f"reached the maximum of {self.max_rounds} rounds"
        return "not stopped"

    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "best_loss": self.best_loss, "best_round": self.best_round}

    def load_state_dict(self, state: dict) -> None:
        """The record so far; k, epsilon and max_rounds stay this run's, so a resumed run
        can be given more rounds."""
        self.losses, self.best_loss, self.best_round = list(state["losses"]), state["best_loss"], state["best_round"]
