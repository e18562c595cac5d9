"""Region crops of a face, from its detected box and its 68 landmarks.

``face_crops(image, box, landmarks, sizes)`` is the one definition of every crop: the cache
writer, ``agefuse-predict``, ``agefuse-watch`` and ``agefuse-evaluate`` all call it, so a face
gives the same pixels whichever command cut it.

Every crop is one affine warp of the source image. The face is first aligned: rotated so
the eye centres are level and scaled to a fixed inter-ocular distance. The part crops
(eyes, mouth) are boxes around named landmark ranges *in that aligned frame*, so they are
level too, and each is resampled once from the source (no crop of a crop). ``original`` is
the detector's box, not the landmarks: a square around it in which the box fills a fixed
share of the side, unrotated, the framing of an aligned-and-cropped face photo (a 200-px
UTKFace chip), the same for a chip and for a face in a large photo.

The 2x3 matrix of each crop maps original-image pixels to crop pixels; the manifest keeps
it, so any later stage can carry a landmark into a crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .landmarks import points

ORIGINAL = "original"  # the face as a face-photo chip frames it (BoxFraming)


@dataclass(frozen=True)
class PartRegion:
    """A box around named landmark ranges of the aligned face, grown by ``margin`` (a
    fraction of the box's larger side), widened to the output's aspect ratio."""
    landmarks: tuple[str, ...]
    margin: float


@dataclass(frozen=True)
class AlignedFace:
    """The whole face: eye midpoint at (0.5, ``eye_y``) of the output, eyes ``iod`` of its
    width apart. 0.30 and 0.40 leave the forehead, chin and cheeks in the frame."""
    iod: float = 0.30
    eye_y: float = 0.40


@dataclass(frozen=True)
class BoxFraming:
    """The detector's box, centred in a square whose side it fills ``fill`` of. 0.9 is
    about where dlib's HOG box sits in a 200-px UTKFace chip, so a chip is framed nearly
    as it comes, and a face in a photo the way a chip would frame it."""
    fill: float = 0.9


# Each region once, by the landmark names of ``agefuse.regions.landmarks.LANDMARKS``: the registry
# every command's region choices come from.
REGIONS = {
    ORIGINAL: BoxFraming(),
    "face": AlignedFace(),
    # the face as dlib frames the 150-px chips its networks were trained on (get_face_chip,
    # padding 0.25: eyes 0.368 of the width apart, at 0.317 of the height, measured on 100
    # UTKFace faces). dlib's face-recognition ResNet, frozen, tells gender from it 92.3% of
    # the time, against 88.8% from ``face`` (logistic regression, 2,000 faces)
    "face_chip": AlignedFace(iod=0.368, eye_y=0.317),
    # an eye with its brow and the frown area between the brows
    "left_eye": PartRegion(("left_eye", "left_brow", "glabella"), margin=0.25),
    "right_eye": PartRegion(("right_eye", "right_brow", "glabella"), margin=0.25),
    # the lips and the nose wings, with room at the sides for the nasolabial folds
    "mouth": PartRegion(("outer_lip", "nose_tip"), margin=0.35),
}
CROP_NAMES = tuple(REGIONS)
DEFAULT_SIZES = {ORIGINAL: (200, 200), "face": (160, 160), "face_chip": (150, 150), "left_eye": (64, 64),
                 "right_eye": (64, 64), "mouth": (80, 80)}


def eye_centers(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points(landmarks, "left_eye").mean(0), points(landmarks, "right_eye").mean(0)


def eye_angle(landmarks: np.ndarray) -> float:
    """Degrees by which the line from the image-left to the image-right eye leaves level."""
    left, right = eye_centers(landmarks)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def alignment_matrix(landmarks: np.ndarray, size: tuple[int, int],
                     face: AlignedFace = AlignedFace()) -> np.ndarray:
    """The 2x3 similarity taking the original image to the aligned face of ``size`` (w, h)."""
    left, right = eye_centers(landmarks)
    dx, dy = right - left
    distance = max(math.hypot(dx, dy), 1e-3)
    scale = face.iod * size[0] / distance
    cos, sin = scale * dx / distance, scale * dy / distance  # rotates (dx, dy) onto +x
    midpoint = (left + right) / 2
    target = np.array([0.5 * size[0], face.eye_y * size[1]])
    linear = np.array([[cos, sin], [-sin, cos]])
    return np.hstack([linear, (target - linear @ midpoint)[:, None]]).astype(np.float64)


def transform(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points (n, 2) through a 2x3 affine matrix."""
    return np.asarray(xy, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def part_matrix(landmarks: np.ndarray, aligned: np.ndarray, part: PartRegion,
                size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine taking the original image to the crop of ``part``, through the
    aligned frame ``aligned``."""
    xy = transform(aligned, points(landmarks, *part.landmarks))
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    grow = part.margin * max(x1 - x0, y1 - y0)
    width, height = x1 - x0 + 2 * grow, y1 - y0 + 2 * grow
    aspect = size[0] / size[1]
    width, height = max(width, height * aspect), max(height, width / aspect)
    scale = size[0] / width
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    offset = np.array(size) / 2 - scale * center
    crop = np.array([[scale, 0, offset[0]], [0, scale, offset[1]], [0, 0, 1]])
    return (crop @ np.vstack([aligned, [0, 0, 1]]))[:2]


def framing_matrix(box, size: tuple[int, int], framing: BoxFraming = BoxFraming()) -> np.ndarray:
    """The 2x3 affine taking the image to a crop of ``size`` (w, h) framed on ``box``
    (left, top, right, bottom): the box's centre in the middle, its longer side ``fill`` of
    the crop's shorter one."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top, 1) / framing.fill
    scale = min(size) / side
    cx, cy = (left + right) / 2, (top + bottom) / 2
    return np.array([[scale, 0, size[0] / 2 - scale * cx], [0, scale, size[1] / 2 - scale * cy]])


def needs_landmarks(names) -> bool:
    """Whether any of the crops ``names`` is placed by the landmarks (all but ``original``,
    which the detector's box frames): a caller that wants only box-framed crops can skip the
    68-point predictor."""
    return any(not isinstance(REGIONS[name], BoxFraming) for name in names)


def region_matrices(box, landmarks: np.ndarray | None, sizes: dict[str, tuple[int, int]] | None = None,
                    names=CROP_NAMES) -> dict[str, np.ndarray]:
    """The affine of each region ``names`` (every one in ``REGIONS`` by default) for one
    face; ``landmarks`` may be None when none of them needs it."""
    sizes, names = {**DEFAULT_SIZES, **(sizes or {})}, tuple(names)
    # parts are placed in an aligned frame of unit width, so their boxes do not depend on
    # the face crop's size
    unit = alignment_matrix(landmarks, (1, 1), REGIONS["face"]) if needs_landmarks(names) else None
    matrices = {}
    for name in names:
        region = REGIONS[name]
        if isinstance(region, BoxFraming):
            matrices[name] = framing_matrix(box, sizes[name], region)
        elif isinstance(region, AlignedFace):
            matrices[name] = alignment_matrix(landmarks, sizes[name], region)
        else:
            matrices[name] = part_matrix(landmarks, unit, region, sizes[name])
    return matrices


def warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The crop: ``image`` resampled through ``matrix`` at ``size`` (w, h); outside the
    image is black."""
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def face_crops(image: np.ndarray, box, landmarks: np.ndarray | None,
               sizes: dict[str, tuple[int, int]] | None = None, names=CROP_NAMES
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{region: (crop, matrix)}`` for the regions ``names`` of one face (all by default):
    the one definition of the crops, in the image's own channel order."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    return {name: (warp(image, matrix, sizes[name]), matrix)
            for name, matrix in region_matrices(box, landmarks, sizes, names).items()}


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` or ``"96x64"`` (width x height) as ``(w, h)``."""
    try:
        width, _, height = text.lower().partition("x")
        size = (int(width), int(height or width))
    except ValueError:
        raise ValueError(f"size {text!r} is not N or WxH") from None
    if min(size) < 8 or max(size) > 2048:
        raise ValueError(f"size {text!r} is outside 8..2048 pixels")
    return size
