"""OpenCV's Haar cascade face detector (Viola-Jones; ``haarcascade_frontalface_default.xml``),
evaluated here with numpy.

OpenCV 5 dropped ``CascadeClassifier`` and ships no cascades (``cv2.data`` is empty in the
5.x wheel), so the cascade file is taken from the opencv-python-headless 4.10.0.84 wheel (its
Intel licence is in the file's header; ``weights/NOTICE.md``) and run the way OpenCV 4's
``detectMultiScale`` runs it: the photo shrunk by ``SCALE_STEP`` per level, every 24x24 window
(a step of 2 pixels, 1 past a factor of 2) normalised by its standard deviation, and windows
that pass all 25 stages grouped into faces (``group``), a face's score being how many windows
it grouped (OpenCV's ``numDetections``).
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CASCADE = Path(__file__).parent / "weights" / "haarcascade_frontalface_default.xml"
SCALE_STEP = 1.1     # detectMultiScale's scaleFactor
MIN_NEIGHBOURS = 5   # windows a face must group to count; OpenCV's default 3 lets more clutter through
GROUP_EPS = 0.2      # how near two windows must be to group (OpenCV's GROUP_EPS)
MIN_STD = 10.0       # a flatter window holds no face (OpenCV's own early-out, in pixel values)
BATCH = 16384        # windows evaluated at a time: bounds the memory of one stage's gathers
DENSE_SHARE = 0.1    # while more of a level's windows are alive, a stage runs on the whole grid


@dataclass(frozen=True)
class Stage:
    rects: np.ndarray       # (k, 3, 5): each weak classifier's rectangles, x y w h weight
    thresholds: np.ndarray  # (k,): a feature value below it takes the left leaf
    leaves: np.ndarray      # (k, 2)
    threshold: float        # the stage's sum must reach it


@functools.cache
def cascade(path: str = str(CASCADE)) -> tuple[tuple[int, int], tuple[Stage, ...]]:
    """The window size and the stages of an OpenCV (new-format, stump, upright HAAR) cascade."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: Haar cascade missing (it ships with agefuse)")
    root = ElementTree.parse(path).getroot().find("cascade")
    if root.findtext("featureType").strip() != "HAAR" or root.find(".//tilted") is not None:
        raise ValueError(f"{path}: not an upright HAAR cascade")
    features = []
    for feature in root.find("features"):
        rects = [[float(v) for v in r.text.split()] for r in feature.find("rects")]
        features.append(rects + [[0, 0, 0, 0, 0.0]] * (3 - len(rects)))
    features = np.array(features)
    stages = []
    for stage in root.find("stages"):
        nodes = [[float(v) for v in w.findtext("internalNodes").split()] for w in stage.find("weakClassifiers")]
        leaves = [[float(v) for v in w.findtext("leafValues").split()] for w in stage.find("weakClassifiers")]
        if any(n[:2] != [0.0, -1.0] for n in nodes):
            raise ValueError(f"{path}: only stump cascades are read")
        nodes = np.array(nodes)
        stages.append(Stage(features[nodes[:, 2].astype(int)], nodes[:, 3], np.array(leaves),
                            float(stage.findtext("stageThreshold"))))
    return (int(root.findtext("width")), int(root.findtext("height"))), tuple(stages)


def _corners(rects: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat offsets of rectangles' four corners in an integral image of row ``stride``, in
    the order the sum takes them (+ - - +), and the rectangles' weights."""
    x, y, w, h = (rects[..., i].astype(np.int64) for i in range(4))
    offsets = np.stack([(y + h) * stride + x + w, y * stride + x + w, (y + h) * stride + x, y * stride + x], -1)
    return offsets, rects[..., 4]


def _sums(integral: np.ndarray, base: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    corner = integral[base.reshape(-1, *([1] * offsets.ndim)) + offsets]
    return corner[..., 0] - corner[..., 1] - corner[..., 2] + corner[..., 3]


def _dense_values(phases: dict, stage: Stage, grid: tuple[int, int], step: int) -> np.ndarray:
    """A stage's weak-classifier sums at every window of a level, (k, rows, cols), unnormalised:
    each rectangle's sum over the whole grid is four slices of the integral image's ``phases``
    (``_phases``). The cascade's
    weights are whole numbers (-1, 2, 3), so the sums stay exact in int32."""
    rows, cols = grid

    def at(y: int, x: int) -> np.ndarray:
        return phases[y % step, x % step][y // step:y // step + rows, x // step:x // step + cols]
    values = np.zeros((len(stage.rects), rows, cols), np.int32)
    for k, rects in enumerate(stage.rects):
        for x, y, w, h, weight in rects.astype(int):
            if weight:
                values[k] += weight * (at(y + h, x + w) - at(y, x + w) - at(y + h, x) + at(y, x))
    return values.astype(np.float32)


def _phases(summed: np.ndarray, step: int) -> dict:
    """The integral image split by the remainders of its coordinates, so that each read of a
    grid of that step is a plain slice of a contiguous array."""
    return {(a, b): np.ascontiguousarray(summed[a::step, b::step]) for a in range(step) for b in range(step)}


def _windows(gray: np.ndarray, step: int, window: tuple[int, int], stages: tuple[Stage, ...]) -> np.ndarray:
    """Top-left corners (n, 2) of the windows of one pyramid level that pass every stage."""
    # int32 sums are exact (a level's total is under 2**31) and half the bytes of float64
    summed, squared = cv2.integral2(gray, sdepth=cv2.CV_32S, sqdepth=cv2.CV_64F)
    stride = summed.shape[1]
    ys, xs = np.mgrid[0:gray.shape[0] - window[1] + 1:step, 0:gray.shape[1] - window[0] + 1:step]
    base = (ys * stride + xs).ravel()
    # the variance is taken inside a 1-px border of the window, as OpenCV does
    inner, _ = _corners(np.array([1, 1, window[0] - 2, window[1] - 2, 1.0]), stride)
    area = (window[0] - 2) * (window[1] - 2)
    spread = area * _sums(squared.ravel(), base, inner) - _sums(summed.ravel(), base, inner).astype(np.float64) ** 2
    alive = spread > (area * MIN_STD) ** 2
    norm = np.sqrt(np.where(alive, spread, 1.0)).astype(np.float32)
    stages, phases = list(stages), _phases(summed, step)
    # while most windows are alive, a stage is cheaper on the whole grid by slices than by gathers
    while stages and alive.mean() > DENSE_SHARE:
        stage = stages.pop(0)
        values = _dense_values(phases, stage, ys.shape, step).reshape(len(stage.rects), -1).T / norm[:, None]
        total = np.where(values < stage.thresholds, stage.leaves[:, 0], stage.leaves[:, 1]).sum(1)
        alive &= total >= stage.threshold
    base, norm, summed = base[alive], norm[alive], summed.ravel()
    for stage in stages:
        if not len(base):
            break
        offsets, weights = _corners(stage.rects, stride)
        passed = np.zeros(len(base), bool)
        for at in range(0, len(base), BATCH):
            part = slice(at, at + BATCH)
            values = (_sums(summed, base[part], offsets) * weights).sum(-1) / norm[part, None]
            total = np.where(values < stage.thresholds, stage.leaves[:, 0], stage.leaves[:, 1]).sum(1)
            passed[part] = total >= stage.threshold
        base, norm = base[passed], norm[passed]
    return np.stack([base % stride, base // stride], axis=1)


def group(rects: np.ndarray, min_neighbours: int = MIN_NEIGHBOURS, eps: float = GROUP_EPS
          ) -> list[tuple[tuple[int, int, int, int], int]]:
    """OpenCV's ``groupRectangles``: windows (n, 4 as x y w h) that nearly coincide joined into
    their mean; a group of at most ``min_neighbours`` windows, or one inside a stronger group,
    dropped. Returns ``(x, y, w, h)`` and the group's size."""
    if not len(rects):
        return []
    x, y, w, h = rects.T.astype(float)
    delta = eps * (np.minimum.outer(w, w) + np.minimum.outer(h, h)) / 2
    near = ((np.abs(np.subtract.outer(x, x)) <= delta) & (np.abs(np.subtract.outer(y, y)) <= delta)
            & (np.abs(np.subtract.outer(x + w, x + w)) <= delta) & (np.abs(np.subtract.outer(y + h, y + h)) <= delta))
    from scipy.sparse.csgraph import connected_components
    _, label = connected_components(near, directed=False)
    groups = []
    for lab in np.unique(label):
        members = rects[label == lab]
        if len(members) > min_neighbours:
            groups.append((tuple(int(round(v)) for v in members.mean(0)), len(members)))
    kept = []
    for (x1, y1, w1, h1), n1 in groups:
        inside = any((x1, y1, w1, h1) != r2 and x1 >= r2[0] - int(r2[2] * eps) and y1 >= r2[1] - int(r2[3] * eps)
                     and x1 + w1 <= r2[0] + r2[2] + int(r2[2] * eps) and y1 + h1 <= r2[1] + r2[3] + int(r2[3] * eps)
                     and (n2 > max(3, n1) or n1 < 3) for r2, n2 in groups)
        if not inside:
            kept.append(((x1, y1, w1, h1), n1))
    return kept


def detect(gray: np.ndarray, upsample: int = 0) -> list[tuple[tuple[int, int, int, int], float]]:
    """Faces of a grayscale uint8 image as ``((left, top, right, bottom), windows grouped)``;
    ``upsample`` doubles the image that many times first, to find faces under 24 px."""
    window, stages = cascade()
    zoom = 2 ** upsample
    if zoom > 1:
        gray = cv2.resize(gray, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    height, width = gray.shape
    found, factor = [], 1.0
    while True:
        size = (round(window[0] * factor), round(window[1] * factor))
        scaled = (round(width / factor), round(height / factor))
        if size[0] > width or size[1] > height or scaled[0] < window[0] or scaled[1] < window[1]:
            break
        level = cv2.resize(gray, scaled, interpolation=cv2.INTER_LINEAR_EXACT)
        for x, y in _windows(level, 1 if factor > 2 else 2, window, stages):
            found.append((round(x * factor), round(y * factor), *size))
        factor *= SCALE_STEP
    faces = group(np.array(found, dtype=np.int64).reshape(-1, 4))
    return [((x / zoom, y / zoom, (x + w) / zoom, (y + h) / zoom), float(n)) for (x, y, w, h), n in faces]
