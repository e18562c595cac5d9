"""bootstrap: the class-rebalanced bootstrap sampler and the stop rule, a library the
branch training uses (no command of its own).

- ``RebalancedBootstrapSampler(groups, alpha, seed, rank=, world_size=)``: per round a
  bootstrap draw with age groups tempered toward uniform by ``alpha``;
- ``StopRule(k, epsilon, max_rounds)``: stop when the validation loss of the last ``k``
  rounds varies by less than ``epsilon`` (relative);
- ``round_seed(seed, round)``, ``lr_at(step, total, peak, warmup)``: a round's seed and the
  warm-up-then-cosine learning rate, pure functions so a resumed run replays an uninterrupted one;
- ``seed_worker``: the ``DataLoader`` ``worker_init_fn`` that reseeds each worker's augmentation
  (its dataset's ``reseed(seed)``) from the round's seed.
"""
from .sampler import RebalancedBootstrapSampler, group_weights, target_shares
from .schedule import lr_at, round_seed, seed_worker
from .stop import StopRule

__all__ = ["RebalancedBootstrapSampler", "StopRule", "group_weights", "lr_at", "round_seed", "seed_worker",
           "target_shares"]
