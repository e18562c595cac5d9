"""agefuse: age and gender from face photos with a multi-branch facial-region ensemble.

The stages are packages of their own, each owning one step and meeting the next through
files on disk (docs/formats.md) and what its ``__init__`` offers:

- ``regions``: photos in, a cache of region crops by age group out (``agefuse-regions``);
- ``bootstrap``: the class-rebalanced bootstrap sampler and the stop rule (a library);
- ``branches``: one CNN per region (``agefuse-train-branch``);
- ``fusion``: the dense head, evaluation, prediction, export (``agefuse-train-fusion``,
  ``agefuse-evaluate``, ``agefuse-predict``, ``agefuse-export``);
- ``watch``: video and camera (``agefuse-watch``).

``agefuse.cli`` holds what every console script shares.
"""
