"""dlib's frontal HOG face detector with its image pyramid shared out between two threads.

The detector slides its filters over a pyramid of the photo, each level 5/6 the size of
the one before. Most of its time goes into the HOG features of the first levels, and dlib
releases the GIL while it works, so two threads can split the pyramid: one runs the first
``NEAR_LEVELS`` levels of the photo, the other the whole pyramid of the photo already
shrunk by those levels (dlib's own ``pyramid_down``, so every level is the image dlib itself
would have built). The two lists of detections are merged with dlib's own rule (highest
score first, dropping a box that overlaps one kept). That gives the ordinary detector's
faces and scores, box corners within a pixel, on every photo of
``tests/test_hog_pyramid.py``; it is not exactly dlib's single pass in one case: two
overlapping detections of one half, one dropped by the other inside dlib, where the other
is then dropped by a better box of the other half (crowded, overlapping faces).

The near-levels detector is the frontal detector's own file with one field changed
(``max_pyramid_levels``), read and rewritten here in dlib's serialization format: an
object_detector (version 2) holding a scan_fhog_pyramid, the box-overlap test and one
weight vector per filter. A dlib whose file does not read as expected gets the plain
detector (``split_detector`` returns None), never a wrong one.
"""
from __future__ import annotations

import functools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

NEAR_LEVELS = 2  # levels 0-1 hold about as many pixels as levels 2 and up (1.69 vs 1.5)


def box_of(rect) -> tuple[int, int, int, int]:
    """A dlib rectangle as (left, top, right, bottom)."""
    return (rect.left(), rect.top(), rect.right(), rect.bottom())


def _read_int(data: bytes, at: int) -> tuple[int, int]:
    """dlib's integer: a byte with the length (low bits) and the sign (0x80), then the
    bytes, little-endian."""
    head = data[at]
    size = head & 0x0F
    value = int.from_bytes(data[at + 1:at + 1 + size], "little")
    return (-value if head & 0x80 else value), at + 1 + size


def _write_int(value: int) -> bytes:
    size = (abs(value).bit_length() + 7) // 8
    return bytes([size | (0x80 if value < 0 else 0)]) + abs(value).to_bytes(size, "little")


def _read_double(data: bytes, at: int) -> tuple[float, int]:
    """dlib's portable double: an integer mantissa and a base-2 exponent."""
    mantissa, at = _read_int(data, at)
    exponent, at = _read_int(data, at)
    return float(mantissa) * 2.0 ** exponent, at


class SplitDetector:
    def __init__(self, near, full, iou: float, covered: float):
        self.near, self.full = near, full  # dlib.fhog_object_detector each
        self.iou, self.covered = iou, covered
        import dlib
        self.pyramid = dlib.pyramid_down(6)
        self._pool, self._pid = None, None

    @property
    def pool(self) -> ThreadPoolExecutor:
        """One worker thread, made again in a forked child (a parent's threads do not follow)."""
        if self._pid != os.getpid():
            self._pool, self._pid = ThreadPoolExecutor(1, thread_name_prefix="hog-far"), os.getpid()
        return self._pool

    def overlap(self, a: tuple, b: tuple) -> bool:
        """dlib's test_box_overlap: intersection over the bounding box of both, or over
        either box's own area (inclusive pixel coordinates, as dlib counts them)."""
        def area(left, top, right, bottom):
            return max(0, right - left + 1) * max(0, bottom - top + 1)
        inner = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
        if inner == 0:
            return False
        outer = area(min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
        return inner / outer > self.iou or inner / area(*a) > self.covered or inner / area(*b) > self.covered

    def run(self, image: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
        """``(box, score)`` of each face, the highest score first (``upsample`` 0), for a
        C-contiguous grayscale or RGB uint8 image."""
        pyramid = self.pyramid

        def far():
            small = image
            for _ in range(NEAR_LEVELS):
                small = pyramid(small)
            # even a level smaller than the window is scanned: dlib finds faces that hang
            # over the photo's edge there
            rects, scores, _ = self.full.run(small, 0)
            found = []
            for rect, score in zip(rects, scores):
                for _ in range(NEAR_LEVELS):
                    rect = pyramid.rect_up(rect)
                found.append((rect, score))
            return found

        far_job = self.pool.submit(far)
        rects, scores, _ = self.near.run(image, 0)
        found = list(zip(rects, scores)) + far_job.result()
        kept: list[tuple[tuple[int, int, int, int], float]] = []
        for rect, score in sorted(found, key=lambda rs: -rs[1]):
            box = box_of(rect)
            if not any(self.overlap(box, other) for other, _ in kept):
                kept.append((box, float(score)))
        return kept


@functools.cache
def split_detector() -> SplitDetector | None:
    """The frontal detector as a SplitDetector, or None where its file has another layout."""
    import dlib
    full = dlib.get_frontal_face_detector()
    with tempfile.TemporaryDirectory() as folder:
        full.save(str(Path(folder) / "frontal.svm"))
        data = (Path(folder) / "frontal.svm").read_bytes()
        # object_detector v2: version, then scan_fhog_pyramid v1: version, fe, feats,
        # cell size, padding, window width, height, max levels, min layer width, height
        at, fields = 0, []
        for _ in range(11):
            value, at = _read_int(data, at)
            fields.append((value, at))
        window = (fields[6][0], fields[7][0])
        if (fields[0][0], fields[1][0]) != (2, 1) or window != (full.detection_window_width,
                                                                full.detection_window_height):
            return None
        levels_start, levels_end = fields[7][1], fields[8][1]
        _, at = _read_double(data, at)  # nuclear norm regularisation
        _, at = _read_int(data, at)  # number of dimensions
        iou, at = _read_double(data, at)
        covered, at = _read_double(data, at)
        near_data = (data[:levels_start] + _write_int(NEAR_LEVELS) + data[levels_end:])
        (Path(folder) / "near.svm").write_bytes(near_data)
        near = dlib.fhog_object_detector(str(Path(folder) / "near.svm"))
    if near.num_detectors != full.num_detectors:
        return None
    return SplitDetector(near, full, iou, covered)
