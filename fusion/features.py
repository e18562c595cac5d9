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

from agefuse.branches import BRANCH_REGIONS, UNKNOWN_GENDER, FoldAverage, age_range_of, load_branch
from agefuse.files import atomic_write
from agefuse.regions import REGIONS, manifest

from .model import FusedModel


def views_of(region: str, crops: dict[str, np.ndarray | None], size: int) -> np.ndarray | None:
    """(V, 3, size, size) uint8 views of one face for a branch of ``region`` (its crop,
    ``FusedModel.crops``), from RGB crops by cache name; None when a crop it needs is missing."""
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


def crops_read(regions) -> tuple[str, ...]:
    """The cache crops that branches of ``regions`` read, in the crop registry's order."""
    names = {name for region in regions for name, _ in BRANCH_REGIONS[region]}
    return tuple(name for name in REGIONS if name in names)


def batch_inputs(model: FusedModel, faces: list[dict[str, np.ndarray | None]]
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The model's inputs for a list of faces (each a dict of RGB crops by cache name)."""
    inputs, present = [], torch.zeros(len(faces), len(model.regions), dtype=torch.bool)
    for r, (name, size) in enumerate(zip(model.regions, model.image_sizes)):
        region = model.crops[name]
        block = np.zeros((len(faces), len(BRANCH_REGIONS[region]), 3, size, size), np.uint8)
        for i, crops in enumerate(faces):
            views = views_of(region, crops, size)
            if views is not None:
                block[i], present[i, r] = views, True
        inputs.append(torch.from_numpy(block))
    return inputs, present


def read_crops(cache: Path, row: dict, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray | None]:
    """RGB crops of a manifest row (only those ``names``, when given); a crop not listed or
    not decodable is None."""
    crops = {}
    for name, rel in row.get("crops", {}).items():
        if names is not None and name not in names:
            continue
        image = cv2.imread(str(cache / rel), cv2.IMREAD_COLOR)
        crops[name] = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return crops


def fingerprint(cache: Path, checkpoints: dict[str, Path]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for region, given in checkpoints.items():  # in order: the order is the features' layout
        for path in given if isinstance(given, (list, tuple)) else [given]:  # a FoldAverage's: its folds'
            digest.update(f"{region}:{Path(path).resolve()}:{Path(path).stat().st_mtime_ns}".encode())
    digest.update(str((cache / manifest.MANIFEST).stat().st_mtime_ns).encode())
    return digest.hexdigest()


@torch.inference_mode()
def extract(model: FusedModel, cache: Path, rows: list[dict], batch_size: int = 128,
            device: torch.device = torch.device("cpu"), desc: str = "features",
            skip: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """The model's branch features of ``rows``. The branches of ``skip`` are not run: their
    blocks stay zero (their presence flags are still read), for a caller that fills them in
    from elsewhere (``out_of_fold``)."""
    features, present = [], []
    names = crops_read(model.crops.values())  # a fold branch's pass over the training faces decodes its one crop
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=None):
        faces = [read_crops(cache, row, names) for row in rows[start:start + batch_size]]
        inputs, mask = batch_inputs(model, faces)
        # FusedModel.features' blocks, one branch at a time (so a skipped one is not run)
        blocks = [torch.zeros(len(faces), model.block.width) if region in skip else
                  model.branch_block(region, branch, images.to(device))[0].float().cpu()
                  for region, branch, images in zip(model.regions, model.branches, inputs)]
        features.append(torch.stack(blocks, 1))
        present.append(mask)
    return {"features": torch.cat(features).numpy(), "present": torch.cat(present).numpy(),
            "age": np.array([r["age"] for r in rows], np.float32),
            "age_range": np.array([age_range_of(r) for r in rows], np.float32),
            "gender": np.array([UNKNOWN_GENDER if r["gender"] is None else r["gender"] for r in rows]),
            "race": np.array([-1 if r.get("race") is None else r["race"] for r in rows]),
            "id": np.array([r["id"] for r in rows])}


def split_features(model: FusedModel, cache: Path, split: str, checkpoints: dict[str, Path], out: Path,
                   device: torch.device = torch.device("cpu"),
                   skip: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """The split's features, from ``out`` when already computed for these branches. The
    branches of ``skip`` are not run (``extract``): their blocks are zero, for the caller to
    fill in; a cached file is read back only if it skipped none that the caller needs."""
    name = split + ("-mirrored" if model.mirrored else "")
    path = out / f"features-{name}-{fingerprint(cache, checkpoints)}.npz"
    if path.is_file():
        data, skipped = read_features(path)
        if skipped <= skip:
            return data
    rows = [r for r in manifest.load(cache) if r["status"] != "rejected" and r["split"] == split
            and r.get("age") is not None]
    if not rows:
        raise ValueError(f"{cache}: the {split!r} split is empty")
    data = extract(model, cache, rows, device=device, desc=f"{split} features", skip=skip)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:  # a handle: savez adds .npz to a bare name
        np.savez(handle, **data, skipped=np.array(sorted(skip), dtype=str))
    return data


def read_features(path: Path) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """A ``split_features`` file: its per-face arrays, and the regions whose blocks were not
    computed (zero; none in a file from before it could skip)."""
    with np.load(path) as data:
        faces = {k: data[k] for k in data.files if k != "skipped"}
        return faces, frozenset(data["skipped"].tolist() if "skipped" in data.files else ())


# what a fold branch may differ in from the branch it stands in for
FOLD_ARGS = ("fold",)


def fold_branches(region: str, paths: list[Path], full_args: dict | None) -> dict[int, torch.nn.Module]:
    """``region``'s fold branches (``agefuse-train-branch --fold I/K``) by part I, checked to
    be one per part and the full branch's network (``full_args``, its model_args; None: the
    first fold branch's) but for the faces it saw."""
    folds = {}
    for path in paths:
        branch, args = load_branch(path)
        full_args = full_args if full_args is not None else fold_free(args)
        if not args.get("fold"):
            raise ValueError(f"{path}: not a fold branch (train it with agefuse-train-branch --fold I/K)")
        (part, count) = args["fold"]
        if count != len(paths) or part in folds:
            raise ValueError(f"--out-of-fold {region}: {len(paths)} checkpoints, but {path} is part {part} "
                             f"of {count}: give one checkpoint per part, each part once")
        differ = [k for k in sorted(set(args) | set(full_args))
                  if k not in FOLD_ARGS and args.get(k) != full_args.get(k)]
        if differ:
            raise ValueError(f"{path}: not the {region} branch's network: " + ", ".join(
                f"{k} is {args.get(k)!r} there, {full_args.get(k)!r} in the branch" for k in differ))
        folds[part] = branch.requires_grad_(False)
    return folds


def fold_free(args: dict) -> dict:
    """A fold branch's model_args without what makes it one fold (``FOLD_ARGS``)."""
    return {k: v for k, v in args.items() if k not in FOLD_ARGS}


def averaged_branch(folds: dict[int, torch.nn.Module], fold_args: dict) -> tuple[FoldAverage, dict]:
    """``fold_branches``' K branches as one (``FoldAverage``), and its model_args: what a fused
    model saves to build it again."""
    members = [folds[part] for part in sorted(folds)]
    return FoldAverage(members).requires_grad_(False).eval(), {**fold_free(fold_args), "averaged_folds": len(members)}


def oof_path(out: Path, cache: Path, region: str, mirrored: bool, paths: list[Path]) -> Path:
    """Where ``out_of_fold`` caches ``region``'s block (the checkpoints in any order)."""
    checkpoints = {f"{region}{i}": p for i, p in enumerate(sorted(map(str, paths)))}
    return out / f"features-train-oof-{region}{'-mirrored' if mirrored else ''}-{fingerprint(cache, checkpoints)}.npz"


def out_of_fold(model: FusedModel, cache: Path, train: dict[str, np.ndarray], region: str,
                folds: dict[int, torch.nn.Module], paths: list[Path], out: Path,
                device: torch.device = torch.device("cpu")) -> np.ndarray:
    """``region``'s block of the training features, (N, F) in ``train``'s order, each face's
    from the fold branch (``fold_branches``) that left it out: the outputs the head should
    learn from, as the full branch's on its own training faces are better than it will ever
    be on a new face (and more so the more it overfit).

    The whole block, embedding included: the fold branches start from the same weights and
    seed as the full branch, so their embeddings stay close to its (median per-dimension correlation
    0.84-0.92 on validation faces, original and mouth in cpu-budget), and keeping the full
    branch's embedding for the head leaks the overfit back (validation MAE 4.61 against 4.49
    with the whole block, docs/benchmarks.md)."""
    mirrored = region in model.mirrored
    path = oof_path(out, cache, region, mirrored, paths)
    if path.is_file():
        with np.load(path) as data:
            if "id" in data.files and np.array_equal(data["id"], train["id"]):  # else: recomputed
                return data["block"]
    rows = {r["id"]: r for r in manifest.load(cache) if r["split"] == "train"}
    block = np.zeros((len(train["id"]),) + train["features"].shape[2:], np.float32)
    part = np.array([manifest.fold_of(str(i), len(folds)) for i in train["id"]])
    size = model.image_sizes[model.regions.index(region)]
    for fold, branch in sorted(folds.items()):
        index = np.flatnonzero(part == fold - 1)
        if not len(index):
            raise ValueError(f"--out-of-fold {region}: no training face falls in part {fold} of {len(folds)} "
                             f"({len(part)} faces): use fewer folds")
        single = FusedModel({region: branch}, {region: size}, mirror=mirrored,
                            crops={region: model.crops[region]}).to(device).eval()
        data = extract(single, cache, [rows[str(train["id"][i])] for i in index], device=device,
                       desc=f"{region} without part {fold} of {len(folds)}")
        block[index] = data["features"][:, 0]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, block=block, id=train["id"])
    return block
