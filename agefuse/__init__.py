"""agefuse: age and gender from face photos with a multi-branch facial-region ensemble.

The stages are packages of their own (folders at the project's top level, installed under
this one import name), each owning one step and meeting the next through files on disk
(docs/formats.md) and what its ``__init__`` offers:

- ``agefuse.regions``: photos in, a cache of region crops by age group out (``agefuse-regions``);
- ``agefuse.bootstrap``: the class-rebalanced bootstrap sampler and the stop rule (a library);
- ``agefuse.branches``: one CNN per branch, each reading one region (``agefuse-train-branch``);
- ``agefuse.fusion``: the dense head, inference, evaluation, prediction, export
  (``agefuse-train-fusion``, ``agefuse-evaluate``, ``agefuse-predict``, ``agefuse-export``);
- ``agefuse.watch``: video and camera (``agefuse-watch``).

``agefuse.train`` runs a recipe's stages in order (``agefuse-train RECIPE``).
``agefuse.cli`` holds what every console script shares, ``agefuse.files`` the one atomic
write, ``agefuse.recipe`` the training recipes. The Python API (``agefuse.api``; it imports
torch and the model only on first use, so the commands stay light):
``agefuse.estimate(image, channels=None)`` and ``agefuse.Estimator(model, ...)``::

    import agefuse
    for face in agefuse.estimate("photo.jpg"):
        print(face["age"], face["age_interval"], face["gender"], face["gender_probability"])
"""

from .api import Estimator, estimate, to_bgr

__all__ = ["Estimator", "estimate", "to_bgr"]
