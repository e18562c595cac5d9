"""Augmentation as declared albumentations pipelines, one per region, read from JSON.

A config file (``default.json`` beside this file, or your own) maps each region to a list of
steps ``{"TransformName": {arguments}}``; ``OneOf``/``SomeOf``/``Sequential`` take
``"transforms": [...]`` of the same form. Names are albumentations transforms or the two
defined here, ``ColorSpaceView`` and ``Denoise``. ``--aug none`` gives an empty pipeline.

Eyes: a flipped left eye looks like a right eye, so the ``eyes`` branch is fed left eyes and
mirrored right eyes (see ``agefuse.branches.data``), and its pipeline has no horizontal flip.
"""
from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform

from ..data import BRANCH_REGIONS

CONFIG_DIR = Path(__file__).parent
COLOR_SPACES = ("gray", "red", "green", "blue", "yuv", "hsv", "lab")
_TO_SPACE = {"yuv": cv2.COLOR_RGB2YUV, "hsv": cv2.COLOR_RGB2HSV, "lab": cv2.COLOR_RGB2LAB}
_CHANNEL = {"red": 0, "green": 1, "blue": 2}


class ColorSpaceView(ImageOnlyTransform):
    """The image in another colour space, still 3 channels: grayscale or one of R, G, B
    repeated, or the YUV/HSV/LAB channels shown as RGB. Teaches a branch not to lean on the
    colour cast of a camera or a skin tone."""

    def __init__(self, spaces: list[str] | tuple[str, ...] = COLOR_SPACES, p: float = 0.5):
        super().__init__(p=p)
        unknown = set(spaces) - set(COLOR_SPACES)
        if unknown or not spaces:
            raise ValueError(f"ColorSpaceView: unknown spaces {sorted(unknown)}; use {COLOR_SPACES}")
        self.spaces = list(spaces)

    def get_params(self) -> dict:
        return {"space": self.py_random.choice(self.spaces)}

    def apply(self, img: np.ndarray, space: str = "gray", **params) -> np.ndarray:
        if space == "gray":
            return np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
        if space in _CHANNEL:
            return np.repeat(img[:, :, _CHANNEL[space], None], 3, axis=2)
        return cv2.cvtColor(img, _TO_SPACE[space])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("spaces",)


DENOISERS = {
    # their cost per crop on this project's CPU: bench/train_speed.py (nlmeans is too slow to train with)
    "median": lambda img, s: cv2.medianBlur(img, 3 if s < 2 else 5),
    "bilateral": lambda img, s: cv2.bilateralFilter(img, 5, 20 * s, 5),
    "nlmeans": lambda img, s: cv2.fastNlMeansDenoisingColored(img, None, 3 * s, 3 * s, 3, 9),
}


class Denoise(ImageOnlyTransform):
    """Removes sensor noise and JPEG grain, as a camera's noise reduction would; strength
    drawn in ``strength``. ``nlmeans`` is the best and by far the slowest."""

    def __init__(self, method: str = "bilateral", strength: tuple[float, float] = (1.0, 2.0),
                 p: float = 0.5):
        super().__init__(p=p)
        if method not in DENOISERS:
            raise ValueError(f"Denoise: unknown method {method!r}; use {sorted(DENOISERS)}")
        self.method, self.strength = method, tuple(strength)

    def get_params(self) -> dict:
        return {"level": self.py_random.uniform(*self.strength)}

    def apply(self, img: np.ndarray, level: float = 1.0, **params) -> np.ndarray:
        return DENOISERS[self.method](np.ascontiguousarray(img), level)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("method", "strength")


CUSTOM = {"ColorSpaceView": ColorSpaceView, "Denoise": Denoise}


def build_step(step: dict) -> A.BasicTransform:
    """``{"Name": {args}}`` as a transform."""
    if not isinstance(step, dict) or len(step) != 1:
        raise ValueError(f"an augmentation step is one {{\"Name\": {{arguments}}}}, got {step!r}")
    (name, kwargs), = step.items()
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"{name}: its arguments must be an object of name: value, got {kwargs!r}")
    kwargs = dict(kwargs or {})
    if "transforms" in kwargs:
        kwargs["transforms"] = [build_step(s) for s in kwargs["transforms"]]
    cls = CUSTOM.get(name) or getattr(A, name, None)
    # only transform classes: a name from the file must never reach another albumentations
    # attribute (a function, a module) and call it
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        raise ValueError(f"unknown augmentation {name!r}: not an albumentations transform nor "
                         f"one of {sorted(CUSTOM)}")
    try:
        return cls(**kwargs)
    except Exception as err:  # albumentations checks arguments with pydantic, and TypeError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{name}: bad arguments {kwargs!r} ({reason})") from None


def load_config(aug: str) -> dict[str, list]:
    """``none``, the name of a JSON beside this file (``default``), or a path to one."""
    if aug == "none":
        return {}
    path = Path(aug) if Path(aug).suffix == ".json" else CONFIG_DIR / f"{aug}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: augmentation config not found (give none, default, "
                                f"or a .json file)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: an augmentation config is an object of region: [steps]")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_pipeline(region: str, aug: str = "default", seed: int | None = None) -> A.Compose:
    """The region's Compose (empty for ``none`` or a region the config does not name). A
    region of one unmirrored crop the config does not name is augmented as that crop."""
    config = load_config(aug)
    if region not in config and region in BRANCH_REGIONS:
        (crop, mirrored), *more = BRANCH_REGIONS[region]
        if not (more or mirrored) and crop in config:
            region = crop
    if config and region not in config:
        raise ValueError(f"the augmentation config {aug!r} has no entry for region {region!r} "
                         f"(it has {sorted(config)})")
    steps = config.get(region, [])
    if not isinstance(steps, list):
        raise ValueError(f"{aug}: {region} must be a list of steps")
    try:
        return A.Compose([build_step(s) for s in steps], seed=seed)
    except ValueError as err:
        raise ValueError(f"{aug}: {region}: {err}") from None


def describe(pipeline: A.Compose) -> dict:
    """The resolved pipeline, kept in the run folder so a run says what it saw."""
    return A.to_dict(pipeline)
