"""agefuse: age and gender from face photos with a multi-branch facial-region ensemble.

The stages are packages of their own, each owning one step and meeting the next through
files on disk (docs/formats.md) and what its ``__init__`` offers:

- ``regions``: photos in, a cache of region crops by age group out (``agefuse-regions``);
- ``bootstrap``: the class-rebalanced bootstrap sampler and the stop rule (a library);
- ``branches``: one CNN per region (``agefuse-train-branch``);
- ``fusion``: the dense head, evaluation, prediction, export (``agefuse-train-fusion``,
  ``agefuse-evaluate``, ``agefuse-predict``, ``agefuse-export``);
- ``watch``: video and camera (``agefuse-watch``).

``agefuse.cli`` holds what every console script shares, ``agefuse.recipe`` the training
recipes. The Python API (``agefuse.api``; it imports torch and the model only on first use,
so the commands stay light):
``agefuse.estimate(image, channels=None)`` and ``agefuse.Estimator(model, ...)``::

    import agefuse
    for face in agefuse.estimate("photo.jpg"):
        print(face["age"], face["age_interval"], face["gender"], face["gender_probability"])
"""

from .api import Estimator, estimate, to_bgr

__all__ = ["Estimator", "estimate", "to_bgr"]
