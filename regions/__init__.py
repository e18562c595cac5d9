"""regions: face photos in, region crops cached by age group out.

Command: ``agefuse-regions SOURCE --cache CACHE`` (``regions.cli``); also ``agefuse-report``
and ``agefuse-regions-merge``.
Reads: a folder of images, labels from UTKFace names or ``--labels labels.csv``.
Writes: ``CACHE/<age_group>/<region>/<id>.<ext>``, ``CACHE/manifest.jsonl`` and
``CACHE/cache.json`` (the crop settings), see docs/formats.md.

Offers to the later stages:
- ``manifest``: the manifest's schema and readers (``manifest.load(cache)``);
- ``REGIONS`` (the crop registry), ``DETECTORS`` (the detector registry);
- ``Settings`` (how a cache finds and crops faces) and ``read_settings(cache)``;
- ``faces_in(image, settings)``: every face of a photo with the crops a cache made with
  ``settings`` would hold (``face_crops`` is the one definition of those crops);
- ``decode(data)``: image bytes to pixels, with a reason when it cannot.
"""
from . import manifest
from .crop import ORIGINAL, REGIONS, face_crops, parse_size
from .landmarks import DETECTORS
from .pipeline import Settings, decode, faces_in, read_settings

__all__ = ["DETECTORS", "ORIGINAL", "REGIONS", "Settings", "decode", "face_crops", "faces_in", "manifest",
           "parse_size", "read_settings"]
