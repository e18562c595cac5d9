"""Faces and their 68 landmarks, with dlib.

Small verbs in the manner of face_recognition's ``api.py``: ``face_locations`` and
``face_landmarks`` return plain tuples and arrays; dlib's own types stay inside.

Side convention: ``left`` and ``right`` are as seen in the image, as in face_recognition.
The ``left_eye`` (points 36-41) is the eye on the image's left, which is the subject's right.

Models load lazily, once per process, on first use; the files come from the
``face_recognition_models`` package, found without importing it (its ``__init__`` imports
``pkg_resources``, which recent setuptools no longer ship).
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import hog_pyramid

# The 68-point iBUG scheme by region; every crop is defined from these names.
LANDMARKS = {
    "jaw": range(0, 17),
    "left_brow": range(17, 22),
    "right_brow": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_tip": range(31, 36),
    "left_eye": range(36, 42),
    "right_eye": range(42, 48),
    "outer_lip": range(48, 60),
    "inner_lip": range(60, 68),
    # the frown area between the brows, where the vertical glabellar lines form
    "glabella": (21, 22, 27),
}
Box = tuple[int, int, int, int]  # left, top, right, bottom, in pixels


def points(landmarks: np.ndarray, *names: str) -> np.ndarray:
    """The rows of a (68, 2) landmark array that belong to the named regions."""
    return np.concatenate([landmarks[list(LANDMARKS[name])] for name in names])


def model_file(name: str) -> Path:
    """A model file shipped by ``face_recognition_models``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package face_recognition_models is not installed: it ships dlib's landmark "
            "and face-detector models (pip install face_recognition_models)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found in face_recognition_models")


@functools.cache
def _hog_detector():
    import dlib
    return dlib.get_frontal_face_detector()


@functools.cache
def _cnn_detector(path: str):
    import dlib
    return dlib.cnn_face_detection_model_v1(path)


@functools.cache
def get_predictor(path: str | None = None):
    """The 68-point shape predictor, loaded once per process."""
    import dlib
    path = path or str(model_file("shape_predictor_68_face_landmarks.dat"))
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: shape predictor file not found")
    return dlib.shape_predictor(path)


# A detector's find(image, upsample, threads) gives (box, score, five points or None) in its own
# framing, from the image as its Detector.reads says.
Found = tuple[tuple[float, float, float, float], float, "np.ndarray | None"]


def _find_hog(image: np.ndarray, upsample: int, threads: int) -> list[Found]:
    split = hog_pyramid.split_detector() if threads > 1 and upsample == 0 else None
    if split is not None:
        return [(box, score, None) for box, score in split.run(image)]
    # run() also returns a confidence; plain __call__ would not
    rects, scores, _ = _hog_detector().run(image, upsample)
    return [(hog_pyramid.box_of(r), s, None) for r, s in zip(rects, scores)]


def _find_cnn(image: np.ndarray, upsample: int, threads: int) -> list[Found]:
    detections = _cnn_detector(str(model_file("mmod_human_face_detector.dat")))(image, upsample)
    return [(hog_pyramid.box_of(d.rect), d.confidence, None) for d in detections]


def _find_haar(image: np.ndarray, upsample: int, threads: int) -> list[Found]:
    from . import haar
    return [(box, score, None) for box, score in haar.detect(image, upsample)]


def _find_mtcnn(image: np.ndarray, upsample: int, threads: int) -> list[Found]:
    from . import mtcnn
    return mtcnn.detect(image, mtcnn.MIN_FACE / 2 ** upsample)


@dataclass(frozen=True)
class Detector:
    """A face detector: ``find`` (above), what it reads (``rgb``, ``gray`` or ``any``: the image
    as given, RGB or grayscale), and ``start``: how its box
    becomes the box dlib's 68-point predictor starts from, (dx, dy, scale) of the box's side
    (the HOG box's centre at the box's centre plus (dx, dy) sides, its side ``scale`` sides),
    fitted against the HOG boxes of the same faces by ``tools/fit_detector_boxes.py``; None for
    HOG itself, whose own box the ``hog`` framing keeps (``FRAMINGS``)."""
    find: Callable[[np.ndarray, int, int], list[Found]]
    reads: str
    start: tuple[float, float, float] | None


# The face detectors by name: every --detector's choices. A detector other than HOG gives its
# faces in HOG's framing (``hog_framing``): within HOG's own jitter of its box in the ``hog``
# framing, the same crops in the ``landmarks`` one (``FRAMINGS``).
DETECTORS = {
    # dlib's frontal HOG + linear SVM detector: fast, frontal faces of about 80 px and up
    "hog": Detector(_find_hog, "any", start=None),
    # dlib's MMOD CNN detector: slower, more robust to pose and light
    "cnn": Detector(_find_cnn, "rgb", start=(0.0826, 0.1223, 1.0948)),
    # OpenCV's Haar cascade (frontalface_default), run by our own evaluator (``haar``)
    "haar": Detector(_find_haar, "gray", start=(0.0312, 0.0909, 1.0655)),
    # MTCNN's three networks (``mtcnn``): faces from 20 px, turned ones too, and five points
    "mtcnn": Detector(_find_mtcnn, "rgb", start=(0.0432, 0.0729, 0.9375)),
}
# Detectors that have a place here but no detector to run, and why (a name stays out of DETECTORS
# until it can run offline).
UNAVAILABLE = {"yolo": "no YOLO face weights ship in any package installable offline (yolov5-face, uniface, "
                       "scrfd and mediapipe wheels checked)"}

# The HOG box from the 68 landmarks: its centre at the points' centroid plus (dx, dy) and its
# side ``side`` times their RMS distance from the centroid, (dx, dy) in that distance and turned
# with the eyes' line (``tools/fit_detector_boxes.py`` fits them on UTKFace chips at random
# scales, padded so that no HOG box is cut by the edge).
LANDMARK_FRAMING = {"dx": 0.0165, "dy": -0.1092, "side": 2.7027}
# HOG's boxes come in steps of its pyramid's 6/5, 180 * 1.2**k pixels a side (k whole, upsample 0):
# in the "hog" framing a framed box takes the nearest, as HOG's own would
HOG_SIDE, HOG_STEP = 180.0, 1.2
# How a face's box, which every crop is framed on, is made (Settings.framing). HOG's own box
# also moves with where the face sits on its 8-px cell grid and with its side's steps: the same
# face shifted by a few pixels can be boxed 30 px apart, so no other detector's box can follow
# it closer than that.
FRAMINGS = {
    # HOG's own box; another detector's box framed like it through the 68 landmarks (its side in
    # HOG's steps): what every cache and model was made with before "landmarks"
    "hog": "HOG's own box; another detector's mapped to it",
    # every detector's box, HOG's too, through the 68 landmarks, its side as the landmarks give
    # it: the same crops whatever the detector (within a pixel on the sample faces)
    "landmarks": "every detector's box, HOG's too, framed from the 68 landmarks",
}
# the --framing option of the commands that find faces for a model (predict, evaluate, watch, serve)
FRAMING_HELP = ("how a face's box is made: hog (HOG's own; another detector's mapped to it) or landmarks (from "
                "the 68 landmarks whatever the detector: the same crops from every detector); default: as the "
                "model's training cache")


def detector_of(name: str) -> Detector:
    """The registry's detector ``name``; ``ValueError`` names the choices or why it is not offered."""
    if name in UNAVAILABLE:
        raise ValueError(f"detector {name!r} is not offered: {UNAVAILABLE[name]}")
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


def detect_faces(image: np.ndarray, detector: str = "hog", upsample: int = 0, threads: int = 1,
                 framing: str = "hog") -> list[tuple[Box, float, np.ndarray | None, np.ndarray | None]]:
    """Faces of an RGB or grayscale uint8 image as ``(box, score, landmarks, points5)``,
    largest first: ``box`` in HOG's framing (``FRAMINGS``; a detector other than HOG, or the
    "landmarks" framing: ``hog_framing``), ``landmarks`` the 68 points from which that box was
    framed (None for HOG's own box), ``points5`` MTCNN's five points (None for the others). ``score`` is the detector's
    own (HOG's and Haar's are margins, MMOD's a confidence, MTCNN's a probability).
    ``upsample`` looks for faces that many halvings smaller; ``threads`` 2 or more shares HOG's
    pyramid between two threads (``hog_pyramid``: the same faces and scores, box corners within
    a pixel of rounding, in about 60% of the time)."""
    spec = detector_of(detector)
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")
    image = np.ascontiguousarray(image)  # dlib silently finds nothing in a strided view
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    read = {"any": image, "gray": gray,
            "rgb": image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)}[spec.reads]
    height, width = image.shape[:2]
    faces = []
    for box, score, five in spec.find(read, upsample, threads):
        points = None
        if spec.start is not None or framing == "landmarks":
            box, points = hog_framing(gray, box, spec.start or (0.0, 0.0, 1.0), hog_steps=framing == "hog")
        box = _clip(tuple(int(round(v)) for v in box), width, height)
        if box[2] > box[0] and box[3] > box[1]:
            faces.append((box, float(score), points, five))
    return sorted(faces, key=lambda f: -(f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))


def face_locations(image: np.ndarray, detector: str = "hog", upsample: int = 0, threads: int = 1,
                   framing: str = "hog") -> list[tuple[Box, float]]:
    """Faces in an RGB or grayscale uint8 image as ``(box, score)``, largest first, every
    detector's box in HOG's framing (``detect_faces``, whose options these are)."""
    return [(box, score) for box, score, _, _ in detect_faces(image, detector, upsample, threads, framing)]


def hog_framing(gray: np.ndarray, box, start: tuple[float, float, float], rounds: int = 2,
                hog_steps: bool = True) -> tuple[tuple[float, ...], np.ndarray]:
    """A detector's ``box`` as dlib's HOG detector would frame the same face, and the 68
    landmarks it was framed from: the predictor starts from ``box`` moved by ``start``, and
    each round frames the landmarks (``landmark_box``, ``hog_steps`` as there) and runs the
    predictor in that box."""
    left, top, right, bottom = box
    side = (right - left + bottom - top) / 2
    cx, cy = (left + right) / 2 + start[0] * side, (top + bottom) / 2 + start[1] * side
    half = start[2] * side / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    for _ in range(rounds):
        points = face_landmarks(gray, box)
        box = landmark_box(points, hog_steps=hog_steps)
    return box, points


def landmark_box(points: np.ndarray, framing: dict = LANDMARK_FRAMING, hog_steps: bool = True) -> tuple[float, ...]:
    """The HOG box of a face from its 68 landmarks (``LANDMARK_FRAMING``), its side the nearest
    of HOG's steps (``hog_steps``) or as the landmarks give it."""
    centre = points.mean(0)
    scale = float(np.sqrt(((points - centre) ** 2).sum(1).mean()))
    left, right = points[36:42].mean(0), points[42:48].mean(0)
    angle = np.arctan2(right[1] - left[1], right[0] - left[0])
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = framing["dx"] * scale, framing["dy"] * scale
    cx, cy = centre[0] + cos * dx - sin * dy, centre[1] + sin * dx + cos * dy
    side = framing["side"] * scale
    if hog_steps:
        side = HOG_SIDE * HOG_STEP ** round(np.log(side / HOG_SIDE) / np.log(HOG_STEP))
    half = (side - 1) / 2  # dlib's right and bottom are inside the box
    return (cx - half, cy - half, cx + half, cy + half)


def face_landmarks(image: np.ndarray, box: Box, predictor_path: str | None = None) -> np.ndarray:
    """The 68 landmarks of the face in ``box`` as a float32 (68, 2) array of (x, y)."""
    import dlib
    shape = get_predictor(predictor_path)(image, dlib.rectangle(*map(int, box)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def whole_image_box(width: int, height: int, inset: float = 0.08) -> Box:
    """The fallback box for an already-cropped face the detector missed: the image less a
    margin, about where dlib's detector puts a face that fills the frame."""
    dx, dy = int(round(width * inset)), int(round(height * inset))
    return (dx, dy, width - 1 - dx, height - 1 - dy)


def _clip(box: Box, width: int, height: int) -> Box:
    left, top, right, bottom = box
    return (max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom))
