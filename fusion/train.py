"""agefuse-train-fusion: the dense fusion head over frozen branches.

    agefuse-train-fusion --cache runs/utk --runs runs --branches face,eyes,mouth --out runs/fused

Loads ``RUNS/<region>/best.pt`` for each region named (or ``region=path`` items) and
computes every branch's outputs once (cached in ``--out``) for the training split (or, with
``--out-of-fold``, a region's outputs from the fold branches that left each face out) and
for the validation split. Trains the head on the training faces with whole branches dropped
at random (so a face with a missing crop is still scored) and picks the epoch by validation
loss. The age interval's temperature is fitted on half the validation split (by a hash of the
id: faces no branch fitted, as a branch is over-confident on its own training faces), and the
script reports how often the stated interval holds on the other half.

Writes ``OUT/fused.pt``: branches and head in one file, all ``agefuse-evaluate`` and
``agefuse-predict`` need.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from agefuse.bootstrap import group_weights
from agefuse.branches import AGE, AGE_LOGITS, GENDER_LOGIT, GENDER_WEIGHT, CheckpointError, branch_loss, load_branch
from agefuse.branches.teacher import TeacherError, add_teacher_options, distill_loss, targets_for
from agefuse.cli import (
    HelpFormatter,
    device_name,
    float_in,
    int_at_least,
    json_text,
    output_folder,
    run_command,
    torch_device,
)
from agefuse.regions import manifest, read_settings

from .features import averaged_branch, fold_branches, out_of_fold, split_features
from .metrics import interval_coverage
from .model import FusedModel, HeadAverage, head_input, in_calibration_half, load_branches, save_fused


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the dense fusion head over frozen branches.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--cache", required=True, help="the regions cache the branches trained on")
    parser.add_argument("--branches", default="face,eyes,mouth,original",
                        help="branches to fuse, each NAME (read RUNS/NAME/best.pt) or NAME=checkpoint; a "
                             "branch's region comes from its checkpoint")
    parser.add_argument("--runs", default="runs", help="folder holding one run folder per branch")
    parser.add_argument("--out", required=True, type=output_folder, help="folder for fused.pt and the cached features")
    parser.add_argument("--out-of-fold", action="append", default=[], metavar="REGION=CKPT,CKPT,...",
                        help="the head learns REGION's outputs on the training faces from these fold branches "
                             "(agefuse-train-branch --fold I/K, one per part), each face's from the one that left "
                             "it out, in place of the full branch's, which it fitted (repeatable; the saved "
                             "model keeps the full branch, or with --cross-fit the fold branches' mean)")
    parser.add_argument("--cross-fit", action=argparse.BooleanOptionalAction, default=False,
                        help="with --out-of-fold: the saved model scores each such region by the mean of its "
                             "fold branches, which stand in for the full branch, so none need be trained (name "
                             "the region in --branches alone; no RUNS/REGION/best.pt is read)")
    add_teacher_options(parser, "head")
    parser.add_argument("--epochs", type=int_at_least(1), default=40, help="passes over the training faces")
    parser.add_argument("--batch-size", type=int_at_least(1), default=256, help="faces per step")
    parser.add_argument("--lr", type=float_in(0, 10, low_open=True), default=1e-3, help="AdamW learning rate")
    parser.add_argument("--branch-dropout", type=float_in(0, 0.9), default=0.15,
                        help="chance a branch is hidden from the head for a training face")
    parser.add_argument("--alpha", type=float_in(0, 1), default=0.0,
                        help="rebalance the head's faces by age group, as the branches' bootstrap does: each "
                             "epoch draws as many faces as there are, with replacement, a face of a group of n "
                             "weighted n ** -alpha (so the old are seen more often); 0: every face once an epoch")
    parser.add_argument("--gender-weight", type=float_in(0, 100), default=GENDER_WEIGHT,
                        help="the gender loss's weight beside the age loss (also in choosing the best epoch)")
    parser.add_argument("--separate-gender", action=argparse.BooleanOptionalAction, default=False,
                        help="gender gets layers of its own in the head, and each of age and gender is kept "
                             "from its own best epoch (by its own validation loss), not from the best of the sum")
    parser.add_argument("--heads", type=int_at_least(1), default=1,
                        help="heads trained apart (head n draws its batches and dropout from seed --seed + n; "
                             "their starting weights are drawn in turn from --seed) and averaged: a steadier head, "
                             "each one costing a head's training over the cached branch outputs (seconds to minutes)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=FusedModel.MIRROR,
                        help="the face, mouth and original branches also see their crop mirrored and average "
                             "the two: steadier estimates for about 1.8x the branches' time; kept in fused.pt, so "
                             "predict, evaluate and the exports do the same")
    parser.add_argument("--interval", type=float_in(0.05, 0.99), default=FusedModel.INTERVAL,
                        help="coverage of the stated age interval")
    parser.add_argument("--seed", type=int, default=0, help="for the head's initialisation, dropout and batches")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when present), cpu, cuda")
    return parser


def branch_paths(spec: str, runs: str, unread: set[str] = frozenset()) -> dict[str, Path | None]:
    """The checkpoint of each region of --branches, in its order; None for those ``unread``."""
    paths = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        region, _, path = item.partition("=")
        if region in unread:
            paths[region] = None
            continue
        paths[region] = Path(path) if path else Path(runs) / region / "best.pt"
        if not paths[region].is_file():
            raise FileNotFoundError(f"{paths[region]}: no trained {region} branch (train it with "
                                    f"agefuse-train-branch --out {Path(runs) / region}, or name its checkpoint "
                                    f"as {region}=PATH)")
    if not paths:
        raise ValueError("--branches names no region")
    return paths


def fold_paths(specs: list[str], regions: list[str]) -> dict[str, list[Path]]:
    """--out-of-fold's REGION=CKPT,CKPT,... items, by region."""
    folds = {}
    for spec in specs:
        region, _, paths = spec.partition("=")
        if region in folds:
            raise ValueError(f"--out-of-fold names {region} twice: give its checkpoints in one REGION=CKPT,CKPT,...")
        folds[region] = [Path(p) for p in paths.split(",") if p]
        if region not in regions:
            raise ValueError(f"--out-of-fold {spec}: {region!r} is not one of the fused branches "
                             f"({', '.join(regions)})")
        if len(folds[region]) < 2:
            raise ValueError(f"--out-of-fold {spec}: needs REGION=CKPT,CKPT,... with one checkpoint per part "
                             "(2 or more)")
        for path in folds[region]:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no fold branch for --out-of-fold {region}")
    return folds


def tensors(data: dict, device) -> tuple[torch.Tensor, ...]:
    """features, present, age, gender, age range: the head's inputs and labels."""
    age_range = data.get("age_range", np.stack([data["age"], data["age"]], 1))  # features cached before ranges
    return tuple(torch.as_tensor(v).to(device) for v in
                 (data["features"], data["present"], data["age"], data["gender"], age_range))


def head_loss(model: FusedModel, features, present, age, gender, age_range,
              gender_weight: float = GENDER_WEIGHT, parts: bool = False, teacher=None, distill_weight: float = 0.0):
    """The head's loss; with ``parts``, also its age and gender terms (the weighted gender's).
    ``teacher``: (age distribution, probability of female, known) per face, ``distill_weight``
    of the loss (training only: epochs are chosen by the labels)."""
    logits, gender_logit = model.head(head_input(features, present))
    out = {AGE_LOGITS: logits, AGE: (logits.softmax(1) * model.ages).sum(1), GENDER_LOGIT: gender_logit}
    total, terms = branch_loss(out, age, gender, age_range=age_range, gender_weight=gender_weight)
    if teacher is not None:
        total = (1 - distill_weight) * total + distill_weight * distill_loss(out, *teacher, gender_weight=gender_weight)
    if not parts:
        return total
    weighted_gender = gender_weight * terms["gender_bce"]
    return total, {"age": total.detach() - weighted_gender, "gender": weighted_gender}


class BestEpochs:
    """The head's best state so far by validation loss: as a whole, or (with a separate
    gender part) age's layers and gender's layers each from the epoch that suits it."""

    def __init__(self, head, separate_gender: bool):
        self.head = head
        self.parts = ("age", "gender") if separate_gender else ("total",)
        self.loss = dict.fromkeys(self.parts, float("inf"))
        self.epoch = dict.fromkeys(self.parts, -1)
        # a part whose loss never improves (NaN throughout) keeps its starting weights, not a hole
        self.state = {k: v.clone() for k, v in head.state_dict().items()}

    def part_of(self, name: str) -> str:
        if self.parts == ("total",):
            return "total"
        return "gender" if name.startswith(self.head.GENDER_PARTS) else "age"

    def update(self, epoch: int, total: float, terms: dict) -> list[str]:
        """Keep what improved; the parts that did."""
        losses = {"total": total, **{k: float(v) for k, v in terms.items()}}
        better = [p for p in self.parts if losses[p] < self.loss[p]]
        for part in better:
            self.loss[part], self.epoch[part] = losses[part], epoch
            self.state.update({k: v.clone() for k, v in self.head.state_dict().items() if self.part_of(k) == part})
        return better

    def restore(self) -> None:
        self.head.load_state_dict(self.state)


def epoch_order(count: int, draw_weights: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """One epoch's faces: each once, or (with per-face ``draw_weights``) as many drawn with
    replacement by their weights."""
    if draw_weights is None:
        return torch.randperm(count, generator=generator)
    return torch.multinomial(draw_weights, count, replacement=True, generator=generator)


def fit_temperature(model: FusedModel, features, present, age) -> float:
    """The softmax temperature whose interval covers the true age as often as it says."""
    best, best_gap = 1.0, float("inf")
    for temperature in np.arange(0.5, 4.01, 0.05):
        model.temperature.fill_(float(temperature))
        with torch.no_grad():
            out = model.predict(features, present)
        gap = abs(interval_coverage(age.cpu().numpy(), out["age_low"].cpu().numpy(),
                                    out["age_high"].cpu().numpy()) - model.interval)
        if gap < best_gap - 1e-9:
            best, best_gap = float(temperature), gap
    model.temperature.fill_(best)
    return best


def fit_head(model: FusedModel, train: dict, val: dict, args: argparse.Namespace, age_groups, device,
             log=print) -> list[BestEpochs]:
    """The head trained on ``train``'s features as ``args`` say (--epochs, --lr, --batch-size,
    --branch-dropout, --alpha, --gender-weight, --separate-gender, --seed) and restored to its
    best epoch(s) by the loss on ``val``; what each head kept. Several heads (HeadAverage) are
    trained one after the other, head n's batches and dropout from seed ``--seed`` + n (their
    starting weights were drawn in turn when the HeadAverage was built). ``log``: each epoch's
    line, or None."""
    together = model.head
    members = list(together.members) if isinstance(together, HeadAverage) else [together]
    kept = []
    try:
        for n, member in enumerate(members):
            model.head = member
            if log and len(members) > 1:
                log(f"head {n + 1} of {len(members)}")
            kept.append(fit_one_head(model, train, val, argparse.Namespace(**{**vars(args), "seed": args.seed + n}),
                                     age_groups, device, log))
    finally:
        model.head = together
    return kept


def fit_one_head(model: FusedModel, train: dict, val: dict, args: argparse.Namespace, age_groups, device,
                 log) -> BestEpochs:
    features, present, age, gender, age_range = tensors(train, device)
    val_tensors = tensors(val, device)
    teacher = (None if not args.teacher else
               tuple(t.to(device) for t in targets_for(args.teacher, train["id"], len(model.ages))))
    # the head's dropout draws from torch's global stream: seeded here, its masks do not depend
    # on what ran before (fold branches' features computed now, or read from the cache)
    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    draw_weights = (None if args.alpha == 0 else
                    group_weights([manifest.age_group(int(a), age_groups) for a in train["age"]], args.alpha))
    best = BestEpochs(model.head, args.separate_gender)
    batch_size = max(8, min(args.batch_size, len(age) // 8))  # a small data set still gets steps
    for epoch in range(args.epochs):
        model.head.train()
        order = epoch_order(len(age), draw_weights, generator)
        for start in range(0, len(age), batch_size):
            index = order[start:start + batch_size].to(device)
            keep = torch.rand(len(index), len(model.regions), generator=generator).to(device) >= args.branch_dropout
            loss = head_loss(model, features[index], present[index] & keep, age[index], gender[index],
                             age_range[index], args.gender_weight,
                             teacher=None if teacher is None else tuple(t[index] for t in teacher),
                             distill_weight=args.distill_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        model.head.eval()
        with torch.no_grad():
            val_loss, terms = head_loss(model, *val_tensors, args.gender_weight, parts=True)
            val_mae = (model.predict(*val_tensors[:2])["age"] - val_tensors[2]).abs().mean().item()
        improved = best.update(epoch, val_loss.item(), terms)
        if log:
            log(f"epoch {epoch:3d}  train loss {loss.item():.4f} | val loss {val_loss.item():.4f} mae {val_mae:.2f}"
                f"{'  *best' if improved else ''}"
                f"{' (' + ', '.join(improved) + ')' if args.separate_gender and improved else ''}")
    best.restore()
    return best


def main(args: argparse.Namespace) -> int:
    device = torch_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)

    # branches, and their outputs on the two splits
    regions = [item.partition("=")[0].strip() for item in args.branches.split(",") if item.strip()]
    folds = fold_paths(args.out_of_fold, regions)
    if args.cross_fit and not folds:
        raise ValueError("--cross-fit averages the fold branches of --out-of-fold: name them there")
    paths = branch_paths(args.branches, args.runs, set(folds) if args.cross_fit else set())
    branches, branch_args = load_branches({r: p for r, p in paths.items() if p is not None})
    # checked before the long work
    fold_models = {r: fold_branches(r, ps, branch_args.get(r)) for r, ps in folds.items()}
    for region in (folds if args.cross_fit else []):
        branches[region], branch_args[region] = averaged_branch(fold_models[region], load_branch(folds[region][0])[1])
        paths[region] = folds[region]  # the features' fingerprint: the fold checkpoints'
    branches, branch_args = {r: branches[r] for r in paths}, {r: branch_args[r] for r in paths}
    torch.manual_seed(args.seed)
    settings = read_settings(cache)
    model = FusedModel(branches, {r: a["image_size"] for r, a in branch_args.items()},
                       interval=args.interval, crop_settings=settings, mirror=args.mirror,
                       separate_gender=args.separate_gender, heads=args.heads,
                       crops={r: a["region"] for r, a in branch_args.items()}).to(device)
    model.eval()
    val = split_features(model, cache, "val", paths, out, device)
    # the interval's temperature is fitted on half the validation split (faces neither the
    # branches nor the head learned from), and the interval is checked on the other half
    fitted = np.array([in_calibration_half(i) for i in val["id"]])
    if fitted.all() or not fitted.any():
        raise ValueError(f"{cache}: the interval is fitted on half the validation split (by a hash of the id) and "
                         f"checked on the other, but its {len(fitted)} validation face(s) all fall in one half: "
                         f"give the cache a larger validation split (agefuse-regions --split)")
    calibration, checked = {k: v[fitted] for k, v in val.items()}, ~fitted
    # the out-of-fold regions' blocks are replaced below: their own branches need not see the training faces
    train = split_features(model, cache, "train", paths, out, device, skip=frozenset(folds))
    for region, fold_checkpoints in folds.items():
        train["features"][:, model.regions.index(region)] = out_of_fold(
            model, cache, train, region, fold_models[region], fold_checkpoints, out, device)
    val_tensors = tensors(val, device)
    print(f"fusing {', '.join(model.regions)}: {len(train['age'])} training faces for the head, "
          f"{len(calibration['age'])} validation faces for the interval, {len(val['age'])} validation faces")
    best = fit_head(model, train, val, args, manifest.parse_age_groups(settings.age_groups), device)
    best_epoch = best[0].epoch["age" if args.separate_gender else "total"]

    # the interval, fitted on one half of the validation faces, checked on the other
    temperature = fit_temperature(model, *tensors(calibration, device)[:3])
    with torch.no_grad():
        result = model.predict(*val_tensors[:2])
    coverage = interval_coverage(val["age"][checked], result["age_low"].cpu().numpy()[checked],
                                 result["age_high"].cpu().numpy()[checked])
    mae = float(np.abs(result["age"].cpu().numpy() - val["age"]).mean())
    branch_mae = {r: float(np.abs(model.block.age(val["features"][:, i]) - val["age"]).mean())
                  for i, r in enumerate(model.regions)}
    # and on the faces the head learned from, as it saw them (the fold branches' with --out-of-fold)
    branch_train_mae = {r: float(np.abs(model.block.age(train["features"][:, i]) - train["age"]).mean())
                        for i, r in enumerate(model.regions)}
    summary = {"best_epoch": best_epoch, "best_epochs": best[0].epoch if len(best) == 1 else [b.epoch for b in best],
               "val_mae": mae, "branch_val_mae": branch_mae,
               "branch_train_mae": branch_train_mae,
               "out_of_fold": {r: [str(p) for p in ps] for r, ps in folds.items()}, "head_faces": len(train["age"]),
               "calibration": {"split": "val", "faces": len(calibration["age"]), "cache": str(cache.resolve())},
               "interval_checked_faces": int(checked.sum()),
               "temperature": temperature, "interval": args.interval, "val_interval_coverage": coverage,
               "cross_fit": sorted(folds) if args.cross_fit else [],
               "branches": {r: [str(q) for q in p] if isinstance(p, list) else str(p) for r, p in paths.items()}}
    save_fused(model.cpu(), branch_args, out / "fused.pt", {"summary": summary, "config": vars(args)})
    (out / "fusion.json").write_text(json_text(summary))
    print(f"fused val MAE {mae:.2f} (branches alone: " + ", ".join(f"{r} {m:.2f}" for r, m in branch_mae.items())
          + f"); the {100 * args.interval:.0f}% age interval holds for {100 * coverage:.1f}% of the other half "
          f"of the validation faces (temperature {temperature:.2f}) -> {out / 'fused.pt'}")
    return 0


def run() -> int:
    return run_command(get_args_parser, main, (CheckpointError, TeacherError))


if __name__ == "__main__":
    sys.exit(run())
