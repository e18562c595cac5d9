"""Crops of one region and split from a regions cache, as (image, age, gender) tensors.

Branch regions and the cache crops they read (``mirror``: flipped left-right first):

    face       face
    eyes       left_eye, and right_eye mirrored (one branch for both eyes: a mirrored
               right eye looks like a left eye, so two samples per face, one set of weights)
    left_eye   left_eye        right_eye   right_eye
    mouth      mouth           original    original (resized)
    face_chip  face_chip: the face framed as dlib's own 150-px chips (for dlib's networks)

A branch is named apart from its region (its crop): a recipe's ``[branches.original_gender_cnn]``
says ``crop = "original"`` and ``model = "dlib_gender_cnn"``, so one crop can feed several
networks, each a branch of its own name.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from agefuse.regions import manifest

BRANCH_REGIONS = {
    "face": (("face", False),),
    "eyes": (("left_eye", False), ("right_eye", True)),
    "left_eye": (("left_eye", False),),
    "right_eye": (("right_eye", False),),
    "mouth": (("mouth", False),),
    "original": (("original", False),),
    "face_chip": (("face_chip", False),),
}
# an older agefuse named a crop's second and third networks as regions of their own; a file
# that says one of these is read as the crop it was (and a fused model renames such a branch:
# agefuse.fusion.model.renamed)
RENAMED_REGIONS = {"face_alt": "face", "face_chip_alt": "face_chip", "original_alt": "original",
                   "original_alt2": "original"}
# crops that, mirrored, are still a crop of their kind; a mirrored left eye would be a right eye
_MIRROR_INVARIANT_CROPS = frozenset({"face", "face_chip", "mouth", "original"})
# regions whose every crop is such a crop, read unmirrored (their augmentation flips them)
MIRROR_INVARIANT = frozenset(region for region, crops in BRANCH_REGIONS.items()
                             if all(crop in _MIRROR_INVARIANT_CROPS and not mirrored for crop, mirrored in crops))
UNKNOWN_GENDER = -1


class CacheError(ValueError):
    """The cache cannot serve this region or split; the message says why."""


def cache_rows(cache: str | Path, region: str, split: str, *, fold: tuple[int, int] | None = None) -> list[dict]:
    """Manifest rows of ``split`` that have every crop ``region`` needs, checked on disk;
    for ``train``, without the part ``fold`` (I, K) names (``manifest.fold_of``)."""
    if region not in BRANCH_REGIONS:
        raise CacheError(f"unknown region {region!r}; choose one of {sorted(BRANCH_REGIONS)}")
    cache = Path(cache)
    rows = [r for r in manifest.load(cache) if r["status"] != "rejected"]
    crops = [name for name, _ in BRANCH_REGIONS[region]]
    lacking = [name for name in crops if rows and not any(name in r["crops"] for r in rows)]
    if lacking:
        raise CacheError(f"{cache}: the cache has no {lacking[0]} crops (region {region!r}); "
                         f"rebuild it with agefuse-regions")
    chosen = [r for r in rows if r["split"] == split and r.get("age") is not None
              and not (split == "train" and fold and manifest.fold_of(r["id"], fold[1]) == fold[0] - 1)]
    if not chosen:
        raise CacheError(f"{cache}: the {split!r} split is empty "
                         f"(splits here: {sorted({r['split'] for r in rows})})")
    missing = [r["crops"][name] for r in chosen for name in crops if not (cache / r["crops"][name]).is_file()]
    if missing:
        raise CacheError(f"{cache}: the manifest lists {len(missing)} {region} crops that are not "
                         f"on disk (first: {missing[0]}); the folder and manifest disagree: "
                         f"run agefuse-regions again on this cache to restore them")
    return chosen


def age_range_of(row: dict) -> tuple[float, float]:
    """A manifest row's age label as an inclusive range: (age, age) for an exact age."""
    return tuple(row["age_range"]) if row.get("age_range") else (row["age"], row["age"])


class RegionDataset(Dataset):
    """``(image uint8 3xHxW RGB, age float, gender int (-1 unknown), group index, age range
    (2,) float)``: ``age`` is the exact age or a range label's midpoint, ``age range`` the
    label as (low, high), (age, age) for an exact one.

    The crop is resized to ``image_size`` first, so ``transform`` (an albumentations
    pipeline) costs what the network's input size costs.
    """

    def __init__(self, cache: str | Path, region: str, split: str, image_size: int,
                 transform=None, *, fold: tuple[int, int] | None = None):
        self.cache, self.image_size, self.transform = Path(cache), image_size, transform
        self.rows = cache_rows(cache, region, split, fold=fold)
        self.samples = [(str(self.cache / row["crops"][name]), mirror, index)
                        for index, row in enumerate(self.rows)
                        for name, mirror in BRANCH_REGIONS[region]]
        groups = sorted({r["age_group"] for r in self.rows},
                        key=lambda g: int(g.rstrip("+").split("-")[0]))
        self.group_names = groups
        self.groups = [self.rows[i]["age_group"] for _, _, i in self.samples]
        group_index = {g: i for i, g in enumerate(groups)}
        self.targets = torch.tensor([[self.rows[i]["age"],
                                      UNKNOWN_GENDER if self.rows[i]["gender"] is None else self.rows[i]["gender"],
                                      group_index[self.rows[i]["age_group"]], *age_range_of(self.rows[i])]
                                     for _, _, i in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """The augmentation's seed (``bootstrap.seed_worker`` calls it in each loader worker)."""
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**31)

    def load(self, index: int) -> np.ndarray:
        path, mirror, _ = self.samples[index]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise CacheError(f"{path}: crop cannot be decoded; run agefuse-regions again")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image[:, ::-1] if mirror else image

    def __getitem__(self, index: int):
        image = self.load(index)
        if image.shape[0] != self.image_size or image.shape[1] != self.image_size:
            image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        if self.transform is not None:
            image = self.transform(image=np.ascontiguousarray(image))["image"]
        age, gender, group, low, high = self.targets[index].tolist()
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), float(age), int(gender), int(group),
                torch.tensor([low, high]))
