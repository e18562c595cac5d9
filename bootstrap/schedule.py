"""What a bootstrap round's randomness and learning rate are, as pure functions of the seed,
the round and the step: a run resumed at a round boundary replays exactly what an
uninterrupted one would do (branch training and the joint stage alike). ``seed_worker``
carries a round's seed into the data-loading processes."""
from __future__ import annotations

import math


def round_seed(seed: int, round_index: int) -> int:
    """The seed of everything random in round ``round_index`` of a run seeded ``seed``."""
    return seed * 1_000_003 + round_index


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def seed_worker(worker_id: int) -> None:
    """A ``DataLoader``'s ``worker_init_fn``: the worker's copy of the dataset reseeds its
    augmentation from torch's seed for that worker (drawn from the seed the round set), so
    a round's augmentation is the same in a resumed run. The dataset offers ``reseed(seed)``
    (``branches.data.RegionDataset``, ``fusion.joint.FaceDataset``)."""
    from torch.utils.data import get_worker_info
    info = get_worker_info()
    info.dataset.reseed(info.seed)
