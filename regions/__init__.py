"""regions: face photos in, region crops cached by age group out.

Command: ``agefuse-regions SOURCE --cache CACHE`` (``agefuse.regions.cli``); also ``agefuse-report``
and ``agefuse-regions-merge``.
Reads: a folder of images, labels from UTKFace names or ``--labels labels.csv``.
Writes: ``CACHE/<age_group>/<region>/<id>.<ext>``, ``CACHE/manifest.jsonl`` and
``CACHE/cache.json`` (the crop settings), see docs/formats.md.

Offers to the later stages:
- ``manifest``: the manifest's schema and readers (``manifest.load(cache)``);
- ``REGIONS`` (the crop registry), ``DETECTORS`` (the detector registry), ``FRAMINGS`` (how
  a face's box is made from a detector's: the choices of every --framing);
- ``Settings`` (how a cache finds and crops faces) and ``read_settings(cache)``;
- ``faces_in(image, settings)``: every face of a photo with the crops a cache made with
  ``settings`` would hold (``face_crops`` is the one definition of those crops);
- ``read_image_file(path)`` and ``decode(data)``: an image file's bytes (a regular file,
  within a byte limit) and its pixels (within a pixel limit), with a reason when they cannot
  (``TooLarge`` for a limit; ``check_pixels`` those limits, for an array too);
- ``build_cache(argv)``: the agefuse-regions command run in-process (``regions_parser()``
  is its parser, for whoever checks options before running it).
"""
from . import manifest
from .crop import ORIGINAL, REGIONS, face_crops, parse_size
from .labels import IMAGE_SUFFIXES
from .landmarks import DETECTORS, FRAMING_HELP, FRAMINGS, face_locations
from .pipeline import Settings, TooLarge, check_pixels, decode, faces_in, read_image_file, read_settings


# the command's module is imported on call, so ``python -m agefuse.regions.cli`` does not find it
# imported already
def regions_parser():
    """The agefuse-regions parser."""
    from .cli import get_args_parser
    return get_args_parser()


def near_duplicates(rows: list[dict], max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, bits)`` for rows whose pictures' perceptual hashes differ in at most
    ``max_distance`` bits (the report's near-duplicate search)."""
    from .report import near_duplicates as search
    return search(rows, max_distance)


def build_cache(argv: list[str]) -> int:
    """``agefuse-regions ARGV`` in this process: returns its exit status."""
    from .cli import main
    return main(regions_parser().parse_args(argv))


__all__ = ["DETECTORS", "FRAMING_HELP", "FRAMINGS", "IMAGE_SUFFIXES", "ORIGINAL", "REGIONS", "Settings", "TooLarge",
           "build_cache", "check_pixels",
           "decode", "face_crops", "face_locations", "faces_in", "manifest", "near_duplicates", "parse_size",
           "read_image_file", "read_settings", "regions_parser"]
