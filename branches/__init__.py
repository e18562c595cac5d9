"""branches: one CNN per facial region, each trained alone on a regions cache.

Command: ``agefuse-train-branch --cache CACHE --region face --out RUN`` (``branches.train``);
``agefuse-augment-grid`` shows the declared augmentation.
Reads: the cache's ``manifest.jsonl`` and crops. Writes: ``RUN/best.pt`` and ``RUN/last.pt``
(see docs/formats.md), ``history.json``, ``learning_curve.png``.
For the next stage: ``load_branch(path)`` rebuilds a trained branch from its checkpoint,
``create_model(name, ...)`` builds a new one.
"""
from .checkpoint import load_branch
from .model import create_model

__all__ = ["create_model", "load_branch"]
