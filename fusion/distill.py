"""agefuse-distill: a fused model's soft targets on every face of a cache, for a student to learn.

    agefuse-distill --teacher runs/cpu-long/fused/fused.pt --cache runs/cpu-long/cache --out runs/student/distill

The teacher is any fused model; its age distribution and probability of female on each
training and validation face go to ``OUT/teacher-targets.npz`` (``agefuse.branches.teacher``
reads it). On the training faces the teacher's outputs are **out of fold** wherever its
recipe had fold branches: the head over the same features it learned from (the fold branches'
on the faces each left out, as ``agefuse-train-fusion --out-of-fold`` cached them beside the
teacher), so the student learns what the teacher says of a face it never saw, not what it
memorised. A teacher without those files is run over the crops as it is (said in the output).

Then the student's branches train with ``agefuse-train-branch --teacher OUT/teacher-targets.npz``
and its head with ``agefuse-train-fusion --teacher ...``: the labels and the teacher together,
under the same augmentation and bootstrap; the student is an ordinary ``fused.pt``, its
interval fitted on its own outputs. A recipe's ``[distill]`` table runs all of it
(``agefuse-train``; docs/formats.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from agefuse.branches import CheckpointError
from agefuse.branches.teacher import TARGETS, TeacherError
from agefuse.cli import HelpFormatter, device_name, existing_file, json_text, output_folder, run_command, torch_device
from agefuse.files import atomic_write
from agefuse.regions import manifest

from .features import extract, fold_branches, out_of_fold, split_features
from .model import FusedModel, head_input, load_fused

SPLITS = ("train", "val")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A fused model's soft targets (age distribution, gender "
                                                 "probability) on a cache's faces, for a student to learn.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--teacher", required=True, type=existing_file, help="the teacher: a fused.pt")
    parser.add_argument("--cache", required=True, help="the regions cache the student will train on")
    parser.add_argument("--out", required=True, type=output_folder, help=f"folder for {TARGETS} and teacher.json")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when present), cpu, cuda")
    return parser


def rows_of(cache: Path, split: str) -> list[dict]:
    return [r for r in manifest.load(cache) if r["status"] != "rejected" and r["split"] == split
            and r.get("age") is not None]


def recorded_paths(summary: dict) -> tuple[dict, dict[str, list[Path]]] | None:
    """The branch checkpoints and fold branches a fused model's summary names (as
    agefuse-train-fusion wrote them), or None when any is gone."""
    paths = {r: [Path(q) for q in p] if isinstance(p, list) else Path(p)
             for r, p in summary.get("branches", {}).items()}
    folds = {r: [Path(q) for q in ps] for r, ps in summary.get("out_of_fold", {}).items()}
    files = [q for p in paths.values() for q in (p if isinstance(p, list) else [p])]
    files += [q for ps in folds.values() for q in ps]
    return (paths, folds) if paths and all(q.is_file() for q in files) else None


def teacher_features(teacher: FusedModel, summary: dict, folder: Path, cache: Path, device) -> tuple[dict, dict]:
    """The teacher's head input on the training faces (out of fold where it can be) and on the
    validation faces, and what was out of fold: ``{"regions": [...], "all": bool}``."""
    recorded = recorded_paths(summary)
    if recorded is None or list(recorded[0]) != teacher.regions:
        print(f"the teacher's branch files are not beside it ({folder / 'fusion.json'} names none that exist): "
              f"it is run over the training faces as it is, in fold where it learned them")
        train, val = (extract(teacher, cache, rows_of(cache, split), device=device, desc=f"teacher {split}")
                      for split in SPLITS)
        return {"train": train, "val": val}, {"regions": [], "all": False}
    paths, folds = recorded
    # the same fingerprinted feature files agefuse-train-fusion cached beside the teacher: read back, not run again
    val = split_features(teacher, cache, "val", paths, folder, device)
    train = split_features(teacher, cache, "train", paths, folder, device, skip=frozenset(folds))
    for region, checkpoints in folds.items():
        members = fold_branches(region, checkpoints, None)
        train["features"][:, teacher.regions.index(region)] = out_of_fold(
            teacher, cache, train, region, members, checkpoints, folder, device)
    return {"train": train, "val": val}, {"regions": sorted(folds), "all": set(folds) == set(teacher.regions)}


@torch.inference_mode()
def head_outputs(teacher: FusedModel, data: dict, device) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's age distribution (untempered: the one its estimate is the mean of) and
    probability of female for each face of ``data``."""
    features = torch.as_tensor(data["features"]).to(device)
    present = torch.as_tensor(data["present"]).to(device)
    logits, gender_logit = teacher.head(head_input(features, present))
    return logits.softmax(1).cpu().numpy(), torch.sigmoid(gender_logit).cpu().numpy()


def write_targets(teacher_path: Path, cache: Path, out: Path, device) -> dict:
    """``OUT/teacher-targets.npz`` and ``OUT/teacher.json`` (what was out of fold, the teacher's
    own MAE on each split as its targets say); the summary."""
    teacher, state = load_fused(teacher_path, device=device)
    features, oof = teacher_features(teacher, state.get("summary", {}), teacher_path.parent, cache, device)
    arrays = {k: [] for k in ("id", "split", "age_probabilities", "female", "out_of_fold")}
    report = {"teacher": str(teacher_path), "cache": str(cache), "out_of_fold_regions": oof["regions"],
              "branches": teacher.regions}
    for split in SPLITS:
        data = features[split]
        probabilities, female = head_outputs(teacher, data, device)
        arrays["id"].append(data["id"].astype(str))
        arrays["split"].append(np.full(len(female), split))
        arrays["age_probabilities"].append(probabilities.astype(np.float32))
        arrays["female"].append(female.astype(np.float32))
        arrays["out_of_fold"].append(np.full(len(female), split == "val" or oof["all"]))
        mae = float(np.abs(probabilities @ teacher.ages.cpu().numpy() - data["age"]).mean())
        report[split] = {"faces": len(female), "teacher_mae": round(mae, 4)}
    with atomic_write(out / TARGETS) as tmp, open(tmp, "wb") as handle:  # a handle: savez adds .npz to a bare name
        np.savez(handle, **{k: np.concatenate(v) for k, v in arrays.items()})
    (out / "teacher.json").write_text(json_text(report))
    return report


def main(args: argparse.Namespace) -> int:
    device = torch_device(args.device)
    out, cache = Path(args.out), Path(args.cache)
    if not (cache / manifest.MANIFEST).is_file():
        raise FileNotFoundError(f"{cache}: no {manifest.MANIFEST} here (make the cache with agefuse-regions)")
    out.mkdir(parents=True, exist_ok=True)
    report = write_targets(Path(args.teacher), cache, out, device)
    where = (f"out of fold in {', '.join(report['out_of_fold_regions'])}" if report["out_of_fold_regions"]
             else "in fold (the teacher saw them)")
    print(f"teacher {args.teacher} ({', '.join(report['branches'])}): {report['train']['faces']} training faces, "
          f"{where}, its MAE on them {report['train']['teacher_mae']:.2f}; {report['val']['faces']} validation faces, "
          f"MAE {report['val']['teacher_mae']:.2f} -> {out / TARGETS}")
    return 0


def run() -> int:
    return run_command(get_args_parser, main, (CheckpointError, TeacherError))


if __name__ == "__main__":
    sys.exit(run())
