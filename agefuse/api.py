"""The Python API: ``import agefuse`` and estimate the faces of an image in one call.

    import agefuse
    faces = agefuse.estimate("photo.jpg")                   # the installed model, loaded once
    faces = agefuse.estimate(frame, channels="bgr")         # a NumPy array: say its channel order
    model = agefuse.Estimator("runs/fused/fused.pt", upsample=1)
    for photo, faces in zip(paths, model.estimate_many(paths)): ...

Each face is the record ``agefuse-predict`` writes to its JSON: ``box`` [left, top, right,
bottom], ``detector_score``, ``age``, ``age_interval`` [low, high], ``interval_coverage``,
``gender`` and ``gender_probability``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

Image = str | os.PathLike | bytes | np.ndarray
Channels = Literal["rgb", "bgr"]


def to_bgr(image: Image, channels: Channels | None = None) -> np.ndarray:
    """BGR uint8 pixels from a path, encoded bytes, or an array whose channel order is
    given (``channels``: ``"rgb"`` or ``"bgr"``; a 2-D array is grey)."""
    import cv2

    from agefuse.regions import TooLarge, check_pixels, decode, read_image_file
    if channels not in (None, "rgb", "bgr"):
        raise ValueError(f"channels={channels!r}: an array's channel order is 'rgb' (PIL, matplotlib) "
                         f"or 'bgr' (OpenCV)")
    if isinstance(image, (str, os.PathLike)):
        try:
            return decode(read_image_file(Path(image)))
        except ValueError as err:  # decode's reasons name no file: the caller may have many
            kind = type(err) if type(err) in (ValueError, TooLarge) else ValueError  # TooLarge: a service's 413
            raise kind(f"{image}: {err}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(bytes(image))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"an image is a path, bytes or a NumPy array, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (0..255), not {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"an image array is (H, W), (H, W, 3) or (H, W, 4), not {image.shape}")
    check_pixels(image.shape[1], image.shape[0])  # an array obeys the limits a file does, before any copy
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels not in ("rgb", "bgr"):
        raise ValueError("say the array's channel order: channels='rgb' (PIL, matplotlib) or 'bgr' (OpenCV)")
    image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1] if channels == "rgb" else image)


class Estimator:
    """A fused model and how faces are found for it; the model loads on first use.

    ``model``: a ``fused.pt`` (default: the UTKFace model installed with agefuse);
    ``detector``/``upsample``/``framing``: as ``agefuse-predict`` (default: as the model's training cache);
    ``whole_image_fallback``: an image with no detected face is taken as one cropped face;
    ``threads``: CPU cores (branches side by side, the detection shared between two); more
    than one sets torch's thread count, which is one for the whole process, so the default
    leaves it alone. ``.model`` is traced for speed (``FusedModel.trace``): load the file with
    ``agefuse.fusion.load_fused`` to save or export it."""

    def __init__(self, model: str | os.PathLike | None = None, device: str = "cpu", detector: str | None = None,
                 upsample: int | None = None, whole_image_fallback: bool = False, threads: int = 1,
                 framing: str | None = None):
        self.path, self.device, self.framing = model, device, framing
        self.detector, self.upsample, self.fallback, self.threads = detector, upsample, whole_image_fallback, threads
        self._model = self._pool = self._settings = None

    @property
    def model(self):
        if self._model is None:
            from agefuse.fusion import branch_pool, crop_settings, load_fused
            self._model, _ = load_fused(self.path, self.device)
            # an Estimator is for many faces: traced branches run a photo's few faces faster
            # (no Python between ops, no turns at the GIL), as agefuse-predict runs them
            self._model.trace()
            self._settings = crop_settings(self._model, self.detector, self.upsample, self.fallback, self.framing)
            self._pool = branch_pool(self._model, self.threads) if self.threads > 1 else None
        return self._model

    def estimate(self, image: Image, channels: Channels | None = None) -> list[dict]:
        """Every face of one image, largest first (records as agefuse-predict's JSON)."""
        from agefuse.fusion import predict_faces
        model = self.model
        return predict_faces(model, to_bgr(image, channels), self._settings, self._pool, self.threads)

    def estimate_many(self, images: Iterable[Image], channels: Channels | None = None) -> Iterator[list[dict]]:
        """The faces of each image in turn (lazily: one image in memory at a time)."""
        for image in images:
            yield self.estimate(image, channels)


_DEFAULT: Estimator | None = None


def estimate(image: Image, channels: Channels | None = None) -> list[dict]:
    """Every face of one image with the installed model (loaded once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Estimator()
    return _DEFAULT.estimate(image, channels)
