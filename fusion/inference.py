"""Inference: find a photo's faces the way a fused model learned them, and estimate each.

The commands (agefuse-predict, -evaluate, -serve, -watch) and the Python API meet here, so a
face is found, cropped and scored the same way by all of them:

- ``crop_settings(model, ...)``: how to find and crop faces for ``model``;
- ``check_cache_fits(model, cache, name)``: refuses a cache cut with other crop settings;
- ``find_faces(model, image)``: the faces of a BGR image with the crops the model reads;
- ``estimate(model, faces)``: those faces through the model (age, interval, gender);
- ``predict_faces(model, image)``: both, as the records agefuse-predict writes;
- ``branch_pool(model, threads)``: the branches side by side on several cores;
- ``draw_labelled_box(image, box, label, female)``: a face's box and label on a photo.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import cv2
import numpy as np
import torch

from agefuse.regions import Settings, faces_in

from .features import batch_inputs, crops_read
from .groups import Group, group_probabilities, parse_groups
from .model import FusedModel


def branch_pool(model: FusedModel, threads: int) -> ThreadPoolExecutor | None:
    """A pool that runs the branches side by side (see FusedModel.features), with torch's
    own threads shared out among them; None for one core. A mirrored branch is two tasks, a
    cross-fitted one a task per fold branch."""
    workers = min(threads, model.task_count())
    torch.set_num_threads(max(1, threads // max(workers, 1)))
    return ThreadPoolExecutor(workers, thread_name_prefix="branch") if workers > 1 else None


@torch.inference_mode()
def estimate(model: FusedModel, faces: list[dict], pool: ThreadPoolExecutor | None = None
             ) -> dict[str, torch.Tensor]:
    """The fused model's outputs (``FusedModel.predict``) for faces found by ``find_faces``;
    ``model`` may also be an ``OnnxModel``."""
    inputs, present = batch_inputs(model, [face["crops"] for face in faces])
    return model.outputs(inputs, present, pool)


def crop_settings(model: FusedModel, detector: str | None = None, upsample: int | None = None,
                  fallback: bool = False, framing: str | None = None) -> Settings:
    """How to find and crop faces for ``model``: as the cache it learned from did (its crop
    sizes and framing), with the detector, upsampling, whole-image fallback and framing asked here."""
    asked = {"detector": detector, "upsample": upsample, "framing": framing}
    return replace(model.crop_settings, fallback=fallback, **{k: v for k, v in asked.items() if v is not None})


# the settings that change a crop's pixels (ext, age groups and the split do not)
CROP_FIELDS = ("detector", "upsample", "framing", "fallback_inset")


def check_cache_fits(model: FusedModel, cache, model_name: str) -> None:
    """Refuses (``ValueError``, one line) a cache whose crops were cut otherwise than the
    model learned from: another detector, upsampling, framing, fallback box or crop size gives other
    pixels, and scoring those says nothing true about the model (an MAE of 11 for 5)."""
    from agefuse.regions import read_settings
    cached, learned = read_settings(cache), model.crop_settings
    differ = [f"{name}: {getattr(cached, name)!r} in the cache, {getattr(learned, name)!r} in the model"
              for name in CROP_FIELDS if getattr(cached, name) != getattr(learned, name)]
    differ += [f"{name} size: {'x'.join(map(str, cached.sizes[name]))} in the cache, "
               f"{'x'.join(map(str, learned.sizes[name]))} in the model"
               for name in crops_read(model.crops.values())
               if tuple(cached.sizes.get(name, ())) != tuple(learned.sizes.get(name, ()))]
    if differ:
        raise ValueError(f"{cache} was cut with other crop settings than {model_name} learned from "
                         f"({'; '.join(differ)}): its faces would be scored from other pixels; use a cache made "
                         f"with the model's settings, or give the photos with --images (cut as the model's)")


def find_faces(model: FusedModel, image: np.ndarray, settings: Settings | None = None, threads: int = 1
               ) -> list[dict]:
    """The faces of a BGR image with the crops ``model`` reads (``regions.faces_in``): a
    model of box-framed branches alone skips the landmarks and the other crops."""
    return faces_in(image, settings or crop_settings(model), threads=threads, crops=crops_read(model.crops.values()))


@torch.inference_mode()
def predict_faces(model: FusedModel, image: np.ndarray, settings: Settings | None = None,
                  pool: ThreadPoolExecutor | None = None, threads: int = 1,
                  groups: list[Group] | None = None) -> list[dict]:
    """Every face of a BGR image with its estimates. ``settings``: how faces are found and
    cropped (default: ``crop_settings(model)``); ``pool``: see ``branch_pool``; ``threads``
    2 or more also shares the detection between two threads; ``groups``: the age groups
    whose probabilities each record holds (default: minors and adults)."""
    groups = groups or parse_groups()
    faces = find_faces(model, image, settings, threads)
    if not faces:
        return []
    out = estimate(model, faces, pool)
    # the ONNX export carries no distribution: its records have no groups
    in_groups = group_probabilities(out["age_probabilities"], groups) if "age_probabilities" in out else None
    results = []
    for i, face in enumerate(faces):
        female = float(out["gender_female"][i])
        results.append({
            "box": list(face["box"]), "detector_score": face["score"],
            "age": round(float(out["age"][i]), 1),
            "age_interval": [float(out["age_low"][i]), float(out["age_high"][i])],
            "interval_coverage": model.interval,
            "gender": "female" if female >= 0.5 else "male",
            "gender_probability": round(max(female, 1 - female), 3)})
        if in_groups is not None:
            results[-1]["groups"] = {g.name: round(float(p), 3) for g, p in zip(groups, in_groups[i])}
    return results


def draw_labelled_box(image: np.ndarray, box, label: str, female: bool) -> None:
    """A face's box and its label on a filled strip at its top (in place); red for female,
    blue for male. Hershey fonts are ASCII: no ± sign in ``label``."""
    scale = max(0.4, min(image.shape[:2]) / 600)
    left, top, right, bottom = map(int, box)
    color = (60, 60, 230) if female else (230, 130, 40)
    cv2.rectangle(image, (left, top), (right, bottom), color, max(1, int(2 * scale)))
    (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
    # the strip stays inside the image: a face at the right edge gets its label moved left
    x = max(0, min(left, image.shape[1] - w - 4))
    y = max(top, h + 4)
    cv2.rectangle(image, (x, y - h - 4), (x + w + 4, y), color, -1)
    cv2.putText(image, label, (x + 2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), 1,
                cv2.LINE_AA)
