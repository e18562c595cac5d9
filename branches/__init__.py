"""branches: one CNN per facial region, each trained alone on a regions cache.

Command: ``agefuse-train-branch --cache CACHE --region face --out RUN`` (``agefuse.branches.train``);
``agefuse-augment-grid`` shows the declared augmentation.
Reads: the cache's ``manifest.jsonl`` and crops. Writes: ``RUN/best.pt`` and ``RUN/last.pt``
(see docs/formats.md), ``history.json``, ``learning_curve.png``.

Offers to the next stage:
- ``load_branch(path)``: a trained branch from its checkpoint; ``create_model(name, ...)``
  a new one, ``name`` from the ``BACKBONES`` registry; ``model_from_args(args)`` one shaped
  as a file's ``model_args`` say (``current_model_args``: those args in this version's terms,
  a setting since removed refused by name); ``FoldAverage(members)``: fold branches as one;
- a branch's outputs by name: ``EMBEDDING`` (``model.embedding_dim`` wide), ``AGE``,
  ``GENDER_LOGIT`` (``BRANCH_OUTPUTS``), and ``branch_loss`` over them;
- ``BRANCH_REGIONS``: the branch regions and the cache crops each reads; ``MIRROR_INVARIANT``:
  those whose crop, mirrored, is still theirs;
- ``fold_norms(model)``: norms folded into convs, for inference;
- ``augmentation(region, aug, seed)``: a region's declared augmentation pipeline;
- ``train_branch_parser()``: the agefuse-train-branch parser (recipes check their options on it).
"""
from .backbones import BACKBONES, fold_norms
from .checkpoint import CheckpointError, load_branch, read_torch_file
from .data import (
    BRANCH_REGIONS,
    MIRROR_INVARIANT,
    RENAMED_REGIONS,
    UNKNOWN_GENDER,
    CacheError,
    RegionDataset,
    age_range_of,
)
from .model import (
    AGE,
    AGE_LOGITS,
    BRANCH_OUTPUTS,
    EMBEDDING,
    EMBEDDING_DIM,
    GENDER_LOGIT,
    GENDER_WEIGHT,
    MAX_AGE,
    FoldAverage,
    branch_loss,
    create_model,
    current_model_args,
    model_from_args,
)


def augmentation(region: str, aug: str = "default", seed: int | None = None):
    """The region's declared augmentation pipeline (``aug``: none, default or a .json);
    albumentations loads on first use."""
    from .augment import build_pipeline
    return build_pipeline(region, aug, seed)


def train_branch_parser():
    """The agefuse-train-branch parser (imported on call: ``python -m agefuse.branches.train`` runs it)."""
    from .train import get_args_parser
    return get_args_parser()


__all__ = ["AGE", "AGE_LOGITS", "BACKBONES", "BRANCH_OUTPUTS", "BRANCH_REGIONS", "MIRROR_INVARIANT", "RENAMED_REGIONS",
           "CacheError", "CheckpointError", "RegionDataset", "EMBEDDING", "EMBEDDING_DIM", "FoldAverage",
           "GENDER_LOGIT", "GENDER_WEIGHT", "MAX_AGE", "UNKNOWN_GENDER", "age_range_of", "augmentation", "branch_loss",
           "create_model", "current_model_args", "fold_norms", "load_branch", "model_from_args", "read_torch_file",
           "train_branch_parser"]
