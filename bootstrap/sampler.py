"""A class-rebalanced bootstrap: each round, a sample drawn with replacement in which the
age groups are tempered toward uniform.

An image of a group with ``n_g`` members is drawn with weight ``n_g ** -alpha``, so a group's
share of a round is ``n_g ** (1 - alpha) / sum_h n_h ** (1 - alpha)``:

- ``alpha = 0``: a plain bootstrap, groups as common as in the data;
- ``alpha = 1``: every group equally likely, the 70+ as often as the 20-29s;
- in between: rare groups seen more often without repeating a few images endlessly.

A round's draw depends only on (seed, round), so it can be repeated, resumed and split:
under DDP every rank draws the same round and keeps a disjoint share of it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from .schedule import round_seed


def group_weights(groups: Sequence[str], alpha: float) -> torch.Tensor:
    """Per-image weight ``count(group) ** -alpha``, as float64."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is outside 0..1")
    counts = Counter(groups)
    return torch.tensor([counts[g] ** -alpha for g in groups], dtype=torch.float64)


def target_shares(groups: Sequence[str], alpha: float) -> dict[str, float]:
    """Each group's expected share of a round."""
    counts = Counter(groups)
    mass = {g: n ** (1.0 - alpha) for g, n in counts.items()}
    total = sum(mass.values())
    return {g: m / total for g, m in sorted(mass.items())}


class RebalancedBootstrapSampler(Sampler[int]):
    """Indices of one bootstrap round; call ``set_round(r)`` before each round.

    ``groups[i]`` is the age group of dataset item ``i``. ``round_size`` is the number of
    draws in a round across all ranks (default: the data set's size); each of the
    ``world_size`` ranks yields every ``world_size``-th draw from its ``rank``, so the shares
    are disjoint and together are the whole round.
    """

    ALPHA = 0.5  # the default rebalancing: halfway from the data's shares to uniform

    def __init__(self, groups: Sequence[str], alpha: float = ALPHA, seed: int = 0,
                 round_size: int | None = None, rank: int = 0, world_size: int = 1):
        if len(groups) == 0:
            raise ValueError("the sampler needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.groups = list(groups)
        self.alpha = alpha
        self.seed = seed
        self.round_size = round_size or len(self.groups)
        self.rank, self.world_size = rank, world_size
        self.weights = group_weights(self.groups, alpha)
        self.round = 0

    def set_round(self, round_index: int) -> None:
        self.round = round_index

    def draw(self) -> torch.Tensor:
        """All the round's draws, the same on every rank."""
        generator = torch.Generator().manual_seed(round_seed(self.seed, self.round))
        return torch.multinomial(self.weights, self.round_size, replacement=True,
                                 generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.round_size, self.world_size))

    def round_record(self) -> dict:
        """What this round drew, per group, next to the target: kept in the history."""
        indices = self.draw().tolist()
        drawn = Counter(self.groups[i] for i in indices)
        return {"round": self.round, "alpha": self.alpha, "size": self.round_size,
                "target": {g: round(s, 4) for g, s in target_shares(self.groups, self.alpha).items()},
                "drawn": {g: drawn.get(g, 0) for g in sorted(set(self.groups))},
                "unique_images": len(set(indices))}

    def state_dict(self) -> dict:
        return {"round": self.round, "alpha": self.alpha, "seed": self.seed,
                "round_size": self.round_size}

    def load_state_dict(self, state: dict) -> None:
        if state["alpha"] != self.alpha or state["seed"] != self.seed:
            raise ValueError(f"the checkpoint's sampler used alpha={state['alpha']}, "
                             f"seed={state['seed']}; this run asks alpha={self.alpha}, seed={self.seed}")
        self.round, self.round_size = state["round"], state["round_size"]
