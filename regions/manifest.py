"""The cache's manifest: the one file later stages read to find crops and labels.

Layout of a cache folder::

    <cache>/cache.json                     settings the crops were made with (seed included)
    <cache>/manifest.jsonl                 one JSON object per image, sorted by id
    <cache>/manifest.shard-K-of-N.jsonl    the same for one shard, until merged
    <cache>/label_problems.csv             files skipped for their labels (path, reason)
    <cache>/summary.json                   counts: images, cached, detected, rejected, per age group and region
    <cache>/<age_group>/<region>/<id>.<ext>

A manifest row (``docs/formats.md`` in the README lists every field): ``id``, ``source``,
``age``, ``gender``, ``race``, ``age_group``, ``split``, ``status`` (``ok``, ``fallback`` or
``rejected``), ``detector``, ``faces``, ``box``, ``landmarks`` (68 x,y), ``crops``
(region -> path relative to the cache), ``matrices`` (region -> 2x3 affine from the source
image to the crop), ``phash``, ``width``, ``height``, ``reason``.

Writes are crash-safe: a crop is written to a temporary name and renamed into place before
its row is appended, so a listed crop is always whole; a row cut short by a kill is named and
left out on the next read; a finished manifest is rewritten sorted through a rename.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agefuse.files import atomic_write

MANIFEST = "manifest.jsonl"
SETTINGS = "cache.json"
LABEL_PROBLEMS = "label_problems.csv"
SPLITS = ("train", "val", "test")
STATUSES = ("ok", "fallback", "rejected")
DEFAULT_AGE_GROUPS = "0-2,3-9,10-19,20-29,30-39,40-49,50-59,60-69,70+"
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
UNLABELLED = "unlabelled"  # the age-group folder of a label-free image (its split is null)


# ---- age groups ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AgeGroup:
    label: str
    low: int
    high: int | None  # inclusive; None = no upper end

    def __contains__(self, age: int) -> bool:
        return self.low <= age and (self.high is None or age <= self.high)


def parse_age_groups(text: str = DEFAULT_AGE_GROUPS) -> list[AgeGroup]:
    """``"0-2,3-9,...,70+"``: contiguous, increasing, from 0, the last open-ended."""
    groups = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)-(\d+)|(\d+)\+", part)
        if match is None:
            raise ValueError(f"age group {part!r} is not LOW-HIGH or LOW+")
        low, high = (int(match[1]), int(match[2])) if match[1] else (int(match[3]), None)
        if high is not None and high < low:
            raise ValueError(f"age group {part!r} ends before it starts")
        groups.append(AgeGroup(part, low, high))
    for before, after in zip(groups, groups[1:]):
        if before.high is None or after.low != before.high + 1:
            raise ValueError(f"age groups {before.label} and {after.label} are not contiguous")
    if groups[0].low != 0 or groups[-1].high is not None:
        raise ValueError("age groups must start at 0 and end open-ended, e.g. 70+")
    return groups


def age_group(age: int, groups: list[AgeGroup]) -> str:
    return next(g.label for g in groups if age in g)


# ---- the split ----------------------------------------------------------------------------

def parse_split(text: str) -> tuple[float, float, float]:
    """``"80/10/10"`` or ``"0.8,0.1,0.1"`` as fractions of train, val, test."""
    try:
        parts = [float(p) for p in re.split(r"[/,]", text)]
    except ValueError:
        raise ValueError(f"split {text!r} is not three numbers like 80/10/10") from None
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        raise ValueError(f"split {text!r} needs three non-negative parts: train/val/test")
    total = sum(parts)
    if not (math.isclose(total, 100) or math.isclose(total, 1)):
        raise ValueError(f"split {text!r} adds up to {total:g}: give percentages that make 100 "
                         f"(80/10/10) or fractions that make 1 (0.8,0.1,0.1)")
    return tuple(p / total for p in parts)


def assign_split(ids_by_group: dict[str, list[str]], seed: int,
                 fractions: tuple[float, float, float] = DEFAULT_SPLIT,
                 subject_of: dict[str, str] | None = None) -> dict[str, str]:
    """train/val/test per id, stratified by age group.

    Within each group the ids are ordered by a hash of (seed, id) and cut at the
    fractions, so the same seed gives the same split on any machine and in any order,
    and each group is divided in the same proportions.

    Where the labels name the person (``subject_of``, id to subject), the split is the
    person's instead: a hash of (seed, subject) placed against the fractions, so no one's
    photos are on both sides (the same face at two ages would otherwise leak; Adience's own
    folds are split by person). Not stratified: a person's photos span age groups.
    """
    split = {}
    if subject_of:
        for image_id in (i for ids in ids_by_group.values() for i in ids):
            digest = hashlib.blake2b(f"{seed}:{subject_of[image_id]}".encode(), digest_size=8).digest()
            share = int.from_bytes(digest, "big") / 2**64
            split[image_id] = SPLITS[0 if share < fractions[0] else 1 if share < fractions[0] + fractions[1] else 2]
        return split
    for ids in ids_by_group.values():
        ordered = sorted(ids, key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(),
                                                            digest_size=8).digest())
        n_train = round(fractions[0] * len(ordered))
        n_val = round((fractions[0] + fractions[1]) * len(ordered)) - n_train
        for rank, image_id in enumerate(ordered):
            split[image_id] = SPLITS[0 if rank < n_train else 1 if rank < n_train + n_val else 2]
    return split


# ---- shards -------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"``: the K-th (0-based) of N disjoint shares."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"shard {text!r} is not K/N with 0 <= K < N")
    return int(match[1]), int(match[2])


def in_shard(image_id: str, shard: tuple[int, int]) -> bool:
    """Shares by a hash of the id, so they stay disjoint and complete however the
    machines list their files."""
    k, n = shard
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=4).digest()) % n == k


def fold_of(image_id: str, folds: int) -> int:
    """Which of ``folds`` fixed parts of its split a face falls in (0-based, by a hash of the
    id): a branch trained with ``--fold I/K`` leaves part I-1 out, so its outputs on those
    faces are out of fold, like its outputs on faces it will meet."""
    return int(hashed_unit(image_id, "fold") * folds)


def hashed_share(image_id: str, fraction: float, purpose: str) -> bool:
    """Whether an image falls in a fixed ``fraction`` of its split, by a hash of its id and
    ``purpose`` (so shares drawn for different purposes are independent, and reproducible
    without storing a list)."""
    return fraction > 0 and hashed_unit(image_id, purpose) < fraction


def hashed_unit(image_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by the id and ``purpose``, spread evenly over the ids."""
    digest = hashlib.blake2b(f"{purpose}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2 ** 64


def manifest_name(shard: tuple[int, int] = (0, 1)) -> str:
    return MANIFEST if shard[1] == 1 else f"manifest.shard-{shard[0]}-of-{shard[1]}.jsonl"


# ---- reading and writing ------------------------------------------------------------------

def read_rows(path: str | Path) -> list[dict]:
    """The rows of a manifest file; a last line cut short by a kill is left out and named on
    stderr (whoever reads the cache must not think it whole; ``cut_short`` tells them)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):  # an append interrupted mid-line: agefuse-regions redoes that image
                print(f"{path}:{number}: the last row is cut short (a run was killed while writing it); left out "
                      f"until agefuse-regions makes it again", file=sys.stderr)
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not a JSON row; the manifest is damaged") from None
    return rows


def cut_short(path: str | Path) -> bool:
    """Whether a manifest's last row is cut short (``read_rows`` leaves it out): its last byte
    alone is read."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"


def write_rows(path: str | Path, rows: Iterable[dict]) -> None:
    """Replace a manifest with ``rows`` sorted by id, through a rename. A manifest that would
    not change is not rewritten: its modification time dates the cache, and the fusion's
    cached branch outputs are keyed by it (a resumed run that redid nothing keeps them)."""
    path = Path(path)
    data = "".join(json.dumps(row, separators=(",", ":")) + "\n"
                   for row in sorted(rows, key=lambda r: r["id"])).encode("utf-8")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def load(cache: str | Path) -> list[dict]:
    """The manifest of a finished cache (every shard merged)."""
    cache = Path(cache)
    path = cache / MANIFEST
    if not path.is_file():
        shards = sorted(p.name for p in cache.glob("manifest.shard-*.jsonl"))
        hint = f"; merge its shards first: agefuse-regions-merge {cache}" if shards else ""
        raise FileNotFoundError(f"{path}: no manifest in this cache{hint}")
    return read_rows(path)


def merge_shards(cache: str | Path) -> Path:
    """Join ``manifest.shard-K-of-N.jsonl`` files (all N of them) into ``manifest.jsonl``."""
    cache = Path(cache)
    found = {}
    for path in cache.glob("manifest.shard-*-of-*.jsonl"):
        k, n = map(int, re.findall(r"\d+", path.name.removeprefix("manifest.shard-")))
        found.setdefault(n, {})[k] = path
    if not found:
        raise FileNotFoundError(f"{cache}: no shard manifests (manifest.shard-K-of-N.jsonl) to merge")
    if len(found) > 1:
        raise ValueError(f"{cache}: shard manifests of different N {sorted(found)}; keep one set")
    (n, shards), = found.items()
    missing = sorted(set(range(n)) - set(shards))
    if missing:
        raise FileNotFoundError(f"{cache}: shards {missing} of {n} are missing; run them first")
    rows, origin = [], {}
    for k in range(n):
        for row in read_rows(shards[k]):
            if row["id"] in origin:
                raise ValueError(f"{cache}: image {row['id']} is in shards {origin[row['id']]} and {k}")
            origin[row["id"]] = k
            rows.append(row)
    write_rows(cache / MANIFEST, rows)
    return cache / MANIFEST
