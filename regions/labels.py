"""Labels: where each image's age (and gender, race) comes from.

Three sources (``--labels-format``):
- UTKFace file names, ``<age>_<gender>_<race>_<date&time>.jpg.chip.jpg``;
- a CSV with a header ``path,age[,gender]`` for a user's own data set (paths relative to
  the CSV's folder, or absolute); an age is a number (``34``) or a range (``25-32``,
  ``(25, 32)``), mixed freely;
- Adience's fold files (``fold_*_data.txt``, tab-separated; ``age`` a range such as
  ``(25, 32)`` or a number, ``gender`` ``m``/``f``/``u``), the faces found under the image
  folder by ``user_id``, ``face_id`` and ``original_image``.

A folder with none of these is label-free: every image is an ``Item`` with no age (a
cache for prediction and audit, no split).

A name or row that cannot be read, or a label out of range, is reported as a ``Problem``
(file and reason) and skipped: a label is never guessed.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # a GIF: its first frame
MAX_AGE = 120  # UTKFace goes to 116; anything beyond is a typo, not a person
GENDERS = {0: "male", 1: "female"}  # UTKFace's coding, kept for CSVs too
RACES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}

# UTKFace: age_gender_race_datetime; the date field is free text (two public files carry a
# stray space or a missing dot there), but the three label fields must all be present.
_UTKFACE_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<date>[^_]+)$")


@dataclass(frozen=True)
class Item:
    """One image to process. ``age`` is the exact age, or for a range label its midpoint
    (what places it in an age group); ``age_range`` is (low, high), inclusive, for a range
    and None for an exact age; both None for a label-free image. ``subject``: the person,
    where the labels say (Adience's ``user_id``), so one person's photos share a split."""
    id: str
    path: str
    age: int | None
    gender: int | None = None
    race: int | None = None
    age_range: tuple[int, int] | None = None
    subject: str | None = None
    where: str | None = field(default=None, compare=False)  # the labels file's row, FILE:LINE

    @property
    def label(self) -> str:
        age = "no age" if self.age is None else f"age {'-'.join(map(str, self.age_range or (self.age,)))}"
        return age + (f", {GENDERS[self.gender]}" if self.gender is not None else "")


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    conflict: bool = False  # two rows give one image different labels: an error in the labels, not a skip

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class LabelError(ValueError):
    pass


def image_id(path: str | Path) -> str:
    """A file-system-safe id from a file name: UTKFace's ``.jpg.chip.jpg`` and any image
    suffix removed, characters other than letters, digits, ``.``, ``_`` and ``-`` folded."""
    name = Path(path).name
    if name.lower().endswith(".chip.jpg"):
        name = name[: -len(".chip.jpg")]
    stem, suffix = name.rsplit(".", 1) if "." in name else (name, "")
    if "." + suffix.lower() in IMAGE_SUFFIXES:
        name = stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def check_age(age: int) -> int:
    if not 0 <= age <= MAX_AGE:
        raise LabelError(f"age {age} is outside 0..{MAX_AGE}")
    return age


_RANGE = re.compile(r"^\(?\s*(\d+(?:\.0*)?)\s*(?:-|,|\u2013)\s*(\d+(?:\.0*)?)\s*\)?$")


def parse_age(text: str) -> tuple[int, tuple[int, int] | None]:
    """``"34"`` -> (34, None); ``"25-32"`` or ``"(25, 32)"`` -> (28, (25, 32)): the midpoint
    and the range. ``LabelError`` says what is wrong (not a number, an empty or reversed
    range, outside 0..MAX_AGE)."""
    text = text.strip()
    match = _RANGE.match(text)
    if match is None:
        return check_age(_integer(text, "age")), None
    low, high = int(float(match[1])), int(float(match[2]))
    if high < low:
        raise LabelError(f"age range {text!r} is empty (it ends before it starts)")
    if high > MAX_AGE:
        raise LabelError(f"age range {text!r} goes outside 0..{MAX_AGE}")
    return ((low + high) // 2, (low, high)) if high > low else (low, None)


def check_gender(gender: int | None) -> int | None:
    if gender is not None and gender not in GENDERS:
        raise LabelError(f"gender {gender} is not 0 (male) or 1 (female)")
    return gender


def parse_utkface_name(path: str | Path) -> Item:
    """The labels in a UTKFace file name; ``LabelError`` says what is wrong with it."""
    name = Path(path).name
    if not name.lower().endswith(".jpg.chip.jpg") and not name.lower().endswith(".jpg"):
        raise LabelError("not a UTKFace .jpg file name")
    stem = name.split(".jpg", 1)[0] if ".jpg" in name else name
    stem = stem.removesuffix("jpg.chip").strip()
    match = _UTKFACE_NAME.match(stem)
    if match is None:
        fields = stem.split("_")
        raise LabelError(
            f"malformed UTKFace name: expected age_gender_race_date, got {len(fields)} "
            f"field(s) {fields!r}")
    race = int(match["race"])
    if race not in RACES:
        raise LabelError(f"race {race} is not one of 0..4")
    return Item(id=image_id(name), path=str(path), age=check_age(int(match["age"])),
                gender=check_gender(int(match["gender"])), race=race)


def _is_image(path: Path) -> bool:
    # not is_file(): a broken link or unreadable entry must be reported later, not vanish
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()


def is_cache(folder: str | Path) -> bool:
    """An agefuse cache: its ``cache.json`` holds crop settings (not just any file of that name)."""
    try:
        settings = json.loads((Path(folder) / manifest.SETTINGS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and {"detector", "sizes"} <= settings.keys()


def image_files(folder: str | Path) -> list[Path]:
    """The image files below ``folder``, sorted, leaving out any agefuse cache inside it (a
    cache written into the folder it was made from must not become its own input). Linked
    folders are followed, each real folder once (a link back up would loop)."""
    found, seen = [], set()
    for root, folders, files in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen or (Path(root) != Path(folder) and is_cache(root)):
            folders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        found.extend(p for p in (Path(root, f) for f in files) if _is_image(p))
    return sorted(found)


def utkface_items(folder: str | Path) -> tuple[list[Item], list[Problem]]:
    """Every image file below ``folder`` labelled from its name, sorted by id."""
    items, problems = [], []
    for path in image_files(folder):
        try:
            items.append(parse_utkface_name(path))
        except LabelError as err:
            problems.append(Problem(str(path), str(err)))
    return _unique(items, problems)


def csv_items(csv_path: str | Path) -> tuple[list[Item], list[Problem]]:
    """Rows of a ``path,age[,gender]`` CSV (extra columns ignored), sorted by id."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: labels CSV not found")
    items, problems = [], []
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower() for c in reader.fieldnames or []}
        if not {"path", "age"} <= columns:
            raise LabelError(f"{csv_path}: the header must name the columns path,age[,gender]; "
                             f"found {sorted(columns)}")
        for line, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            where = f"{csv_path}:{line}"
            try:
                path = Path(row["path"])
                path = path if path.is_absolute() else csv_path.parent / path
                gender = row.get("gender", "")
                age, age_range = parse_age(row["age"])
                items.append(Item(id=image_id(path), path=str(path), age=age, age_range=age_range,
                                  gender=check_gender(_integer(gender, "gender") if gender else None), where=where))
            except LabelError as err:
                problems.append(Problem(f"{where} ({row.get('path', '')})", str(err)))
    return _unique(items, problems)


def _integer(text: str, field: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise LabelError(f"{field} {text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise LabelError(f"{field} {text!r} is not a whole number")
    return int(value)


def _unique(items: list[Item], problems: list[Problem]) -> tuple[list[Item], list[Problem]]:
    """Ids name cache files, so two images with one id would overwrite each other: the
    second is reported, not silently merged. One image listed twice with two labels keeps
    neither (a label is never guessed); listed twice with one label, it is kept once."""
    seen: dict[str, Item] = {}
    conflicting: set[str] = set()
    for item in sorted(items, key=lambda i: (i.id, i.path)):  # stable: a file's rows stay in their order
        first = seen.setdefault(item.id, item)
        if first is item:
            continue
        here = f"{item.where} ({item.path})" if item.where else item.path
        there = first.where or first.path
        if first.path != item.path:
            problems.append(Problem(here, f"same image id {item.id!r} as {there}"))
        elif (item.age, item.age_range, item.gender, item.race) != (first.age, first.age_range, first.gender,
                                                                    first.race):
            problems.append(Problem(here, f"the same image as {there}, with another label ({item.label} here, "
                                          f"{first.label} there): both rows left out", conflict=True))
            conflicting.add(item.id)
        else:
            problems.append(Problem(here, f"the same image and label as {there}: kept once"))
    return [item for item in seen.values() if item.id not in conflicting], problems


def exclude(items: list[Item], path: str | Path) -> tuple[list[Item], list[Problem]]:
    """``items`` less those named in ``path`` (image ids or paths, one per line; or a CSV
    whose header has an ``id`` column, as agefuse-audit writes); each left out is a
    ``Problem`` saying so."""
    with named_file_errors(path):
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    header = [c.strip().strip('"').lower() for c in lines[0].split(",")] if lines else []
    if "id" in header:
        column = header.index("id")
        names = {row[column].strip() for row in csv.reader(lines[1:]) if len(row) > column and row[column].strip()}
    else:
        names = set(lines)
    kept, left_out, matched = [], [], set()
    for item in items:
        hit = names & {item.id, item.path, Path(item.path).name}
        if hit:
            matched |= hit
            left_out.append(Problem(item.path, f"excluded by {path}"))
        else:
            kept.append(item)
    unmatched = sorted(names - matched)
    if unmatched:  # a typo or another data set's ids: said, so the user does not think them gone
        left_out.append(Problem(str(path), f"{len(unmatched)} name(s) match no image here, e.g. "
                                           + ", ".join(unmatched[:3])))
    return kept, left_out


ADIENCE_GENDERS = {"m": 0, "f": 1, "u": None, "": None}


def adience_items(fold: str | Path, source: str | Path) -> tuple[list[Item], list[Problem]]:
    """Faces of Adience fold files (a ``fold_*_data.txt``, or a folder of them) found under
    ``source``: ``<user_id>/<prefix>.<face_id>.<original_image>``, as Adience's ``aligned/``
    and ``faces/`` folders name them."""
    fold = Path(fold)
    files = sorted(fold.glob("fold_*_data.txt")) if fold.is_dir() else [fold]
    if not files:
        raise FileNotFoundError(f"{fold}: no fold_*_data.txt files here")
    index: dict[tuple[str, str], Path] = {}
    for path in image_files(source):
        if "." in path.name:
            index.setdefault((path.parent.name, path.name.split(".", 1)[1]), path)
    items, problems = [], []
    for fold_file in files:
        with fold_file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            columns = {c.strip() for c in reader.fieldnames or []}
            if not {"user_id", "original_image", "face_id", "age", "gender"} <= columns:
                raise LabelError(f"{fold_file}: not an Adience fold file (it needs the columns user_id, "
                                 f"original_image, face_id, age, gender; found {sorted(columns)})")
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                where = f"{fold_file}:{line}"
                try:
                    path = index.get((row["user_id"], f"{row['face_id']}.{row['original_image']}"))
                    if path is None:
                        raise LabelError(f"no image {row['user_id']}/*.{row['face_id']}.{row['original_image']} "
                                         f"under {source}")
                    if row["age"] in ("", "None"):
                        raise LabelError("no age")
                    age, age_range = parse_age(row["age"])
                    if row["gender"].lower() not in ADIENCE_GENDERS:
                        raise LabelError(f"gender {row['gender']!r} is not m, f or u")
                    items.append(Item(id=image_id(path), path=str(path), age=age, age_range=age_range,
                                      gender=ADIENCE_GENDERS[row["gender"].lower()], subject=row["user_id"],
                                      where=where))
                except LabelError as err:
                    problems.append(Problem(where, str(err)))
    return _unique(items, problems)


def unlabelled_items(folder: str | Path) -> list[Item]:
    """Every image file below ``folder``, without labels."""
    return [Item(id=image_id(p), path=str(p), age=None)
            for p in image_files(folder)]


LABEL_FORMATS = ("auto", "utkface", "csv", "adience", "none")


@contextlib.contextmanager
def named_file_errors(path: str | Path):
    """A labels or exclude file that is not UTF-8 text or breaks the CSV reader: one line naming it."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise LabelError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:
        raise LabelError(f"{path}: not a readable CSV ({err})") from None


def collect(source: str | Path, labels: str | Path | None = None, labels_format: str = "auto"
            ) -> tuple[list[Item], list[Problem]]:
    """Items of ``labels_format``: ``csv`` or ``adience`` from the ``labels`` file, ``utkface``
    from the names under ``source``, ``none`` without labels; ``auto``: the CSV when
    ``labels`` is given, else UTKFace names, else (no name parses) label-free."""
    source = Path(source)
    if labels_format not in LABEL_FORMATS:
        raise ValueError(f"unknown labels format {labels_format!r}; choose one of {LABEL_FORMATS}")
    if labels is not None and labels_format in ("utkface", "none"):
        raise ValueError(f"--labels {labels} and --labels-format {labels_format} contradict each other: "
                         f"{labels_format} reads no labels file (drop one of them)")
    if labels_format in ("csv", "adience") or labels is not None:
        if labels is None:
            raise ValueError(f"--labels-format {labels_format} reads the labels from --labels FILE")
        with named_file_errors(labels):
            return adience_items(labels, source) if labels_format == "adience" else csv_items(labels)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: image folder not found")
    if labels_format == "none":
        return _unique(unlabelled_items(source), [])
    items, problems = utkface_items(source)
    if labels_format == "auto" and not items:
        return _unique(unlabelled_items(source), [])
    return items, problems
