"""Branch outputs for every face of a split, computed once and cached on disk.

``<out>/features-<split>.npz`` holds, per manifest row: the branch features (N, R, F), the
presence flags (N, R), age, gender, race and id. Its name carries a fingerprint of the
branch checkpoints and the manifest, so a changed branch or cache is recomputed, an
unchanged one is read back.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from branches import BRANCH_REGIONS, UNKNOWN_GENDER, age_range_of
from regions import REGIONS, manifest

from .model import FusedModel, load_branches


def views_of(region: str, crops: dict[str, np.ndarray | None], size: int) -> np.ndarray | None:
    """(V, 3, size, size) uint8 views of one face for a branch, from RGB crops by cache
    name; None when a crop it needs is missing."""
    views = []
    for name, mirror in BRANCH_REGIONS[region]:
        image = crops.get(name)
        if image is None:
            return None
        if mirror:
            image = image[:, ::-1]
        if image.shape[:2] != (size, size):
            image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA)
        views.append(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return np.stack(views)


def crops_read(regions: list[str]) -> tuple[str, ...]:
    """The cache crops that branches of ``regions`` read, in the crop registry's order."""
    names = {name for region in regions for name, _ in BRANCH_REGIONS[region]}
    return tuple(name for name in REGIONS if name in names)


def batch_inputs(model: FusedModel, faces: list[dict[str, np.ndarray | None]]
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The model's inputs for a list of faces (each a dict of RGB crops by cache name)."""
    inputs, present = [], torch.zeros(len(faces), len(model.regions), dtype=torch.bool)
    for r, (region, size) in enumerate(zip(model.regions, model.image_sizes)):
        count = len(BRANCH_REGIONS[region])
        block = np.zeros((len(faces), count, 3, size, size), np.uint8)
        for i, crops in enumerate(faces):
            views = views_of(region, crops, size)
            if views is not None:
                block[i], present[i, r] = views, True
        inputs.append(torch.from_numpy(block))
    return inputs, present


def read_crops(cache: Path, row: dict) -> dict[str, np.ndarray | None]:
    """RGB crops of a manifest row; a crop not listed or not decodable is None."""
    crops = {}
    for name, rel in row.get("crops", {}).items():
        image = cv2.imread(str(cache / rel), cv2.IMREAD_COLOR)
        crops[name] = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return crops


def fingerprint(cache: Path, checkpoints: dict[str, Path]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for region, path in checkpoints.items():  # in order: the order is the features' layout
        digest.update(f"{region}:{Path(path).resolve()}:{Path(path).stat().st_mtime_ns}".encode())
    digest.update(str((cache / manifest.MANIFEST).stat().st_mtime_ns).encode())
    return digest.hexdigest()


@torch.inference_mode()
def extract(model: FusedModel, cache: Path, rows: list[dict], batch_size: int = 128,
            device: torch.device = torch.device("cpu"), desc: str = "features") -> dict[str, np.ndarray]:
    features, present = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=None):
        faces = [read_crops(cache, row) for row in rows[start:start + batch_size]]
        inputs, mask = batch_inputs(model, faces)
        features.append(model.features([x.to(device) for x in inputs]).float().cpu())
        present.append(mask)
    return {"features": torch.cat(features).numpy(), "present": torch.cat(present).numpy(),
            "age": np.array([r["age"] for r in rows], np.float32),
            "age_range": np.array([age_range_of(r) for r in rows], np.float32),
            "gender": np.array([UNKNOWN_GENDER if r["gender"] is None else r["gender"] for r in rows]),
            "race": np.array([-1 if r.get("race") is None else r["race"] for r in rows]),
            "id": np.array([r["id"] for r in rows])}


def split_features(model: FusedModel, cache: Path, split: str, checkpoints: dict[str, Path], out: Path,
                   device: torch.device = torch.device("cpu"), fusion_holdout: float = 0.0) -> dict[str, np.ndarray]:
    """The split's features, from ``out`` when already computed for these branches. With a
    ``fusion_holdout``, only the training faces the branches were kept from."""
    name = split if fusion_holdout <= 0 else f"{split}-holdout{fusion_holdout:g}"
    name += "-mirrored" if model.mirrored else ""
    path = out / f"features-{name}-{fingerprint(cache, checkpoints)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return dict(data)
    rows = [r for r in manifest.load(cache) if r["status"] != "rejected" and r["split"] == split
            and r.get("age") is not None
            and (fusion_holdout <= 0 or manifest.in_fusion_holdout(r["id"], fusion_holdout))]
    if not rows:
        raise ValueError(f"{cache}: the {split!r} split is empty")
    data = extract(model, cache, rows, device=device, desc=f"{split} features")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    return data


def fold_branches(model: FusedModel, region: str, paths: list[Path]) -> dict[int, torch.nn.Module]:
    """``region``'s fold branches (``agefuse-train-branch --fold I/K``) by part I, checked to
    be one per part and at the full branch's input size."""
    folds = {}
    for path in paths:
        (branch,), (branch_args,) = (v.values() for v in load_branches({region: path}))
        fold = branch_args.get("fold")
        if not fold:
            raise ValueError(f"{path}: not a fold branch (train it with agefuse-train-branch --fold I/K)")
        if fold[1] != len(paths) or fold[0] in folds:
            raise ValueError(f"--out-of-fold {region}: {len(paths)} checkpoints, but {path} is part {fold[0]} "
                             f"of {fold[1]}: give one checkpoint per part, each part once")
        size = model.image_sizes[model.regions.index(region)]
        if branch_args["image_size"] != size:
            raise ValueError(f"{path}: trained at {branch_args['image_size']} px, the {region} branch at {size}")
        folds[fold[0]] = branch
    return folds


def out_of_fold(model: FusedModel, cache: Path, train: dict[str, np.ndarray], region: str, paths: list[Path],
                out: Path, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """``region``'s block of the training features, (N, F) in ``train``'s order, each face's
    from the fold branch (``fold_branches``) that left it out: the outputs the head should
    learn from, as the full branch's on its own training faces are better than it will ever
    be on a new face (and more so the more it overfit)."""
    mirrored = region in model.mirrored
    name = (f"features-train-oof-{region}{'-mirrored' if mirrored else ''}-"
            f"{fingerprint(cache, {f'{region}{i}': p for i, p in enumerate(paths)})}.npz")
    if (out / name).is_file():
        with np.load(out / name) as data:
            return data["block"]
    rows = {r["id"]: r for r in manifest.load(cache) if r["split"] == "train"}
    block = np.zeros((len(train["id"]),) + train["features"].shape[2:], np.float32)
    part = np.array([manifest.fold_of(str(i), len(paths)) for i in train["id"]])
    size = model.image_sizes[model.regions.index(region)]
    for fold, branch in sorted(fold_branches(model, region, paths).items()):
        single = FusedModel({region: branch}, {region: size}, mirror=mirrored).to(device).eval()
        index = np.flatnonzero(part == fold - 1)
        data = extract(single, cache, [rows[str(train["id"][i])] for i in index], device=device,
                       desc=f"{region} without part {fold} of {len(paths)}")
        block[index] = data["features"][:, 0]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.tmp.npz"
    np.savez(tmp, block=block)
    tmp.replace(out / name)
    return block
