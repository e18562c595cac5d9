"""One image in, its crops and manifest row out; and the resumable run over many.

``process_image`` is what a worker does: read, decode, detect, landmarks, crops, write.
It never raises for a bad image: the row says ``rejected`` and why.
"""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from agefuse.files import atomic_write

from . import crop, landmarks, manifest
from .labels import Item

ENCODINGS = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, 95], "png": [cv2.IMWRITE_PNG_COMPRESSION, 1]}


@dataclass(frozen=True)
class Settings:
    """Everything that decides what lands in a cache; kept in ``cache.json``."""
    detector: str = "hog"
    upsample: int = 0
    framing: str = "hog"          # how the box the crops are framed on is made (landmarks.FRAMINGS)
    fallback: bool = True         # whole-image fallback for crops the detector misses
    fallback_inset: float = 0.08  # where HOG puts the face in a 200-px UTKFace chip (median)
    sizes: dict = field(default_factory=lambda: dict(crop.DEFAULT_SIZES))
    ext: str = "jpg"
    age_groups: str = manifest.DEFAULT_AGE_GROUPS
    split: tuple = manifest.DEFAULT_SPLIT
    seed: int = 0

    def to_json(self) -> dict:
        return {**asdict(self), "sizes": {k: list(v) for k, v in self.sizes.items()},
                "split": list(self.split)}

    @classmethod
    def from_json(cls, data: dict) -> Settings:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**{**known, "sizes": {**crop.DEFAULT_SIZES, **{k: tuple(v) for k, v in data["sizes"].items()}},
                      "split": tuple(data["split"])})


def read_settings(cache: str | Path) -> Settings:
    """The settings a cache's crops were made with (its ``cache.json``)."""
    path = Path(cache) / manifest.SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a regions cache (no {manifest.SETTINGS}); make one with agefuse-regions")
    return Settings.from_json(json.loads(path.read_text()))


def crop_path(group: str, region: str, image_id: str, ext: str) -> str:
    """Where a crop lives, relative to the cache."""
    return f"{group}/{region}/{image_id}.{ext}"


# What a decoder is allowed to take on: a photo larger than this is refused before any pixel
# is decoded (a few dozen bytes of PNG can claim 50000 x 50000 pixels: 7.5 GB decoded).
MAX_PIXELS = 100_000_000   # an 8000 x 8000 phone photo is 64 M
MAX_BYTES = 200 * 2**20
MIN_SIDE = 16              # smaller holds no face the detector or the crops can use


class TooLarge(ValueError):
    """An image over a pixel or byte limit (the service answers it with 413)."""


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file: a regular file (not a device, FIFO or folder) of at most
    ``MAX_BYTES``; ``ValueError`` (or ``OSError``) says what is wrong."""
    info = os.stat(path)  # follows links; does not block on a FIFO as open() would
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > MAX_BYTES:
        raise TooLarge(f"too large: {info.st_size / 2**20:.0f} MB (the limit is {MAX_BYTES // 2**20} MB)")
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)  # the file may have grown since the stat
    if len(data) > MAX_BYTES:
        raise TooLarge(f"too large: over {MAX_BYTES // 2**20} MB")
    return data


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding. An image whose size Pillow
    cannot read is refused (``ValueError``) rather than handed to OpenCV, which decodes some
    broken files and formats Pillow refuses with no pixel limit short of its own 1 G."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged by the caller
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        # Pillow refuses past twice its own limit before telling the size; a PNG says it in IHDR
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        raise TooLarge(f"too large: over {2 * (Image.MAX_IMAGE_PIXELS or 0) // 10**6} M pixels") from None
    except Exception:
        raise ValueError("not a readable image (not JPEG, PNG, BMP, WebP, TIFF or GIF, or its header is broken)"
                         ) from None


def frame_count(path: str | Path) -> int:
    """How many frames an image file holds (an animated GIF's several, of which the first is
    read); 1 for any file Pillow cannot open (its reading says why, later)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1)
    except Exception:  # noqa: BLE001 (any unreadable file is decode's to name)
        return 1


def truncated_jpeg(data: bytes) -> bool:
    """A JPEG whose data ends before its end-of-image marker. libjpeg fills the missing rows
    with grey and only warns, and that grey is no face. The markers are walked from the start
    (segments by their lengths, scans byte by byte), so data appended after the end (a motion
    photo's video) and an EXIF thumbnail's own markers do not count."""
    if data[:2] != b"\xff\xd8":
        return False
    at, end = 2, len(data)
    while at + 1 < end:
        if data[at] != 0xFF:  # inside a scan: entropy-coded bytes up to the next marker
            at = data.find(b"\xff", at)
            if at < 0:
                return True
            continue
        marker = data[at + 1]
        if marker == 0xD9:
            return False
        if marker in (0x00, 0xFF) or 0xD0 <= marker <= 0xD7:
            at += 1 if marker == 0xFF else 2  # a stuffed byte, fill, or a restart marker
            continue
        if at + 3 >= end:
            return True
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")  # a segment: skip by its length
    return True


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """BGR pixels of an encoded image of at most ``max_pixels``; ``ValueError`` names what is
    wrong (``TooLarge`` for the limit, judged from the header before any decoding)."""
    if not data:
        raise ValueError("empty file")
    width, height = image_size(data)
    check_pixels(width, height, max_pixels, smallest=0)  # the small side is judged on the decoded pixels
    if truncated_jpeg(data):
        raise ValueError("truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:  # OpenCV's own limits, or a header it rejects
        raise ValueError(f"not decodable ({str(err).strip().splitlines()[-1][:120]})") from None
    if image is None:
        raise ValueError("not a decodable image (corrupt, too large or not an image file)")
    check_pixels(image.shape[1], image.shape[0], max_pixels)
    return image


def check_pixels(width: int, height: int, max_pixels: int = MAX_PIXELS, smallest: int = MIN_SIDE) -> None:
    """The limits every image meets, a file's or an array's: at most ``max_pixels``
    (``TooLarge``), at least ``smallest`` a side (``ValueError``)."""
    if width * height > max_pixels:
        raise TooLarge(f"too large: {width} x {height} pixels (the limit is {max_pixels / 10**6:g} M pixels)")
    if min(width, height) < smallest:
        raise ValueError(f"too small: {width} x {height} pixels (at least {smallest} a side)")


def perceptual_hash(gray: np.ndarray) -> str:
    """64-bit DCT hash (pHash): near-identical pictures differ in a few bits."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def detect(image: np.ndarray, settings: Settings, threads: int = 1, limit: int | None = None,
           crops: tuple[str, ...] = crop.CROP_NAMES) -> tuple[list[dict], int]:
    """The faces of a BGR image, largest first, and how many the detector found: each a dict
    of ``box`` (in HOG's framing whatever the detector: ``landmarks.detect_faces``), ``score``
    (None for the whole-image fallback), ``detector``, ``landmarks``, ``points5`` (MTCNN's five
    points, else None), and ``crops`` and ``matrices`` by region (BGR, from ``crop.face_crops``). ``limit``: crop
    only that many faces; ``crops``: only these regions (``landmarks`` is None when none of
    them needs the 68 points). With ``settings.fallback``, an image with no detection is
    taken as one pre-cropped face."""
    height, width = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    reads_rgb = landmarks.detector_of(settings.detector).reads == "rgb"
    found = landmarks.detect_faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if reads_rgb else gray,
                                   settings.detector, settings.upsample, threads, settings.framing)
    detector = settings.detector
    if not found and settings.fallback:
        found = [(landmarks.whole_image_box(width, height, settings.fallback_inset), None, None, None)]
        detector = "whole-image"
    sizes = {name: tuple(size) for name, size in settings.sizes.items()}
    faces = []
    for box, score, _, five in found[:limit]:
        # in HOG's box whatever the detector, so the landmarks are found as HOG's crops had them
        points = landmarks.face_landmarks(gray, box) if crop.needs_landmarks(crops) else None
        cut = crop.face_crops(image, box, points, sizes, crops)
        faces.append({"box": tuple(map(int, box)), "score": score, "detector": detector, "landmarks": points,
                      "points5": five, "crops": {name: pixels for name, (pixels, _) in cut.items()},
                      "matrices": {name: matrix for name, (_, matrix) in cut.items()}})
    return faces, 0 if detector == "whole-image" else len(found)


def process_image(item: Item, group: str, cache: str, settings: Settings) -> dict:
    """Crops of one image written under ``cache``; returns its manifest row."""
    row = {"id": item.id, "source": item.path, "age": item.age, "gender": item.gender,
           "race": item.race, "age_group": group, "status": "rejected", "reason": None,
           "age_range": list(item.age_range) if item.age_range else None}
    try:
        image = decode(read_image_file(item.path))
    except (OSError, ValueError) as err:
        return {**row, "reason": str(err) if isinstance(err, ValueError)
                else f"cannot read: {err.strerror or err}"}

    height, width = image.shape[:2]
    faces, count = detect(image, settings, limit=1)
    if not faces:
        return {**row, "reason": f"no face found by the {settings.detector} detector",
                "faces": 0, "width": width, "height": height}
    face = faces[0]
    crops, matrices = {}, {}
    cache = Path(cache)
    for name, pixels in face["crops"].items():
        ok, encoded = cv2.imencode("." + settings.ext, pixels, ENCODINGS[settings.ext])
        if not ok:
            return {**row, "reason": f"could not encode the {name} crop"}
        crops[name] = crop_path(group, name, item.id, settings.ext)
        matrices[name] = np.round(face["matrices"][name], 6).tolist()
        try:
            _write(cache / crops[name], encoded.tobytes())
        except OSError:  # a full disk: no row will list this image, so none of its crops may stay
            for rel in crops.values():
                (cache / rel).unlink(missing_ok=True)
            raise
    score = face["score"]
    return {**row, "status": "fallback" if face["detector"] == "whole-image" else "ok",
            "detector": face["detector"], "faces": count,
            "score": None if score is None else round(score, 4), "box": list(face["box"]),
            "landmarks": np.round(face["landmarks"], 1).tolist(), "crops": crops, "matrices": matrices,
            "phash": perceptual_hash(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)), "width": width, "height": height}


def faces_in(image: np.ndarray, settings: Settings = Settings(fallback=False), threads: int = 1,
             crops: tuple[str, ...] = crop.CROP_NAMES) -> list[dict]:
    """Every face of a BGR photo, in memory, as ``detect`` gives them, with RGB ``crops``
    (what the branches read): the crops a cache made with ``settings`` would hold for it.
    ``threads`` as in ``landmarks.face_locations``; ``crops``: only these regions (a model
    that reads only ``original`` skips the landmarks)."""
    faces, _ = detect(image, settings, threads, crops=crops)
    for face in faces:
        face["crops"] = {name: cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) for name, pixels in face["crops"].items()}
    return faces


def _write(path: Path, data: bytes) -> None:
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)


def is_complete(row: dict, cache: Path) -> bool:
    """A row whose image needs no more work: rejected for good, or every crop on disk."""
    if row["status"] == "rejected":
        return True
    return all((cache / rel).is_file() for rel in row["crops"].values())


def remove_stale_temporaries(cache: Path) -> int:
    """Temporary files that a killed run left behind; never listed, safe to delete."""
    removed = 0
    for folder in [cache, *cache.glob("*/*")]:
        if folder.is_dir():
            for entry in os.scandir(folder):
                if ".tmp-" in entry.name and entry.name.startswith("."):
                    os.unlink(entry.path)
                    removed += 1
    return removed
