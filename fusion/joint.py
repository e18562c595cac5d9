"""agefuse-train-joint: the branches and the fusion head fine-tuned together.

    agefuse-train-joint --cache runs/utk --fused runs/fused/fused.pt --out runs/joint

Each branch was trained alone and frozen before the head saw it, so nothing asked the
branches to be complementary. This stage starts from a fused model (agefuse-train-fusion's
``fused.pt``) and trains every weight on the fused loss, with each branch's own loss kept
beside it (``--aux-weight``) so that a branch still means what its name says, at a low
learning rate. Faces are drawn like the branches' own (the class-rebalanced bootstrap, one
round at a time, each region's declared augmentation) and the run stops like theirs (the
stop rule over rounds, or ``--max-rounds``).

Reads top to bottom: model, data, resume, the rounds (train, validate, checkpoint), the
interval, the end. ``OUT/last.pt`` is written after every round; ``--resume`` continues
from it with the same start (checked by its SHA-256) and settings, so a run split over
several calls (``--pause-after``) ends with the weights of one uninterrupted run. Writes
``OUT/fused.pt`` (the best round, its interval refitted: the same kind of file as
agefuse-train-fusion's), ``history.json`` and ``joint.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from agefuse.bootstrap import RebalancedBootstrapSampler, StopRule, lr_at, round_seed, seed_worker
from agefuse.branches import (
    BRANCH_REGIONS,
    GENDER_WEIGHT,
    UNKNOWN_GENDER,
    CheckpointError,
    age_range_of,
    augmentation,
    branch_loss,
    read_torch_file,
)
from agefuse.cli import (
    HelpFormatter,
    device_name,
    existing_file,
    float_in,
    int_at_least,
    json_text,
    output_folder,
    run_command,
    torch_device,
)
from agefuse.files import atomic_write
from agefuse.regions import manifest

from .features import read_crops, views_of
from .metrics import interval_coverage
from .model import in_calibration_half, load_fused, save_fused
from .train import fit_temperature, head_loss

AUX_WEIGHT = 0.5  # each branch's own loss, beside the fused one
# what a resumed run must share with the one it continues: anything that changes the draws,
# the augmentation or the schedule (k and epsilon may change: the stop rule is only a reading)
SETTINGS = ("lr", "head_lr", "aux_weight", "gender_weight", "branch_dropout", "aug", "alpha", "round_size",
            "max_rounds", "batch_size", "seed", "workers")
RESUME_KEYS = {"model", "optimizer", "stop", "round", "history", "best", "start_sha256", "settings"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune the branches and the fusion head together.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--cache", required=True, help="the regions cache the fused model was trained on")
    parser.add_argument("--fused", required=True, type=existing_file,
                        help="the fused model to start from (agefuse-train-fusion's fused.pt)")
    parser.add_argument("--out", required=True, type=output_folder, help="folder for fused.pt, last.pt, history")
    parser.add_argument("--lr", type=float_in(0, 1, low_open=True), default=1e-5,
                        help="the branches' peak AdamW learning rate: fresh Adam moments move every weight by about "
                             "this per step, so far below their own training's (on UTKFace 5e-5 and 3e-5 left the "
                             "validation MAE 0.1-0.2 worse after 6,000 faces)")
    parser.add_argument("--head-lr", type=float_in(0, 1, low_open=True), default=3e-5,
                        help="the fusion head's peak learning rate")
    parser.add_argument("--aux-weight", type=float_in(0, 100), default=AUX_WEIGHT,
                        help="weight of each branch's own loss (averaged over the branches) beside the fused loss")
    parser.add_argument("--gender-weight", type=float_in(0, 100), default=GENDER_WEIGHT,
                        help="the gender loss's weight beside the age loss, fused and per branch")
    parser.add_argument("--branch-dropout", type=float_in(0, 0.9), default=0.15,
                        help="chance a branch is hidden from the head for a training face (as in fusion)")
    parser.add_argument("--aug", default="light",
                        help="augmentation: light (branches/augment/light.json: flips and small affine moves, since "
                             "the head learns here too), default, none or a .json")
    parser.add_argument("--alpha", type=float_in(0, 1), default=RebalancedBootstrapSampler.ALPHA,
                        help="rebalancing of the age groups: 0 plain bootstrap, 1 every group equally likely")
    parser.add_argument("--round-size", type=int_at_least(1), default=6000, help="faces drawn per round")
    parser.add_argument("--max-rounds", type=int_at_least(1), default=6, help="bootstrap rounds at most")
    parser.add_argument("--k", type=int_at_least(2), default=StopRule.k, help="rounds the stop rule compares")
    parser.add_argument("--epsilon", type=float_in(0, 1, low_open=True), default=StopRule.epsilon,
                        help="stop when the last k validation losses differ by less than this (relative)")
    parser.add_argument("--batch-size", type=int_at_least(2), default=32, help="faces per step")
    parser.add_argument("--seed", type=int, default=0, help="for the draws, augmentation and dropout")
    parser.add_argument("--workers", type=int_at_least(0), default=1, help="data-loading processes (0 = in the loop)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same start and settings)")
    parser.add_argument("--pause-after", type=int_at_least(1), default=None,
                        help="end this call after so many rounds; --resume continues (a long run split over sessions)")
    return parser


class FaceDataset(Dataset):
    """Every branch's views of one face: ``(views: list of (V, 3, H, W) uint8 per region,
    present (R,) bool, age, gender (-1 unknown), age range (2,))``. A face missing a crop
    has zeros there and ``present`` False; each view passes its region's augmentation."""

    def __init__(self, cache: Path, split: str, regions: list[str], sizes: list[int], aug: str | None,
                 seed: int = 0):
        self.cache, self.regions, self.sizes = cache, regions, sizes
        self.rows = [r for r in manifest.load(cache) if r["status"] != "rejected" and r["split"] == split
                     and r.get("age") is not None]
        if not self.rows:
            raise ValueError(f"{cache}: the {split!r} split is empty")
        self.pipelines = [augmentation(r, aug, seed) for r in regions] if aug else None
        self.groups = [r["age_group"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        crops = read_crops(self.cache, row)
        views, present = [], torch.zeros(len(self.regions), dtype=torch.bool)
        for i, (region, size) in enumerate(zip(self.regions, self.sizes)):
            block = views_of(region, crops, size)
            if block is None:
                block = np.zeros((len(BRANCH_REGIONS[region]), 3, size, size), np.uint8)
            else:
                present[i] = True
                if self.pipelines is not None:
                    block = np.stack([self.pipelines[i](image=np.ascontiguousarray(v.transpose(1, 2, 0)))["image"]
                                      .transpose(2, 0, 1) for v in block])
            views.append(torch.from_numpy(np.ascontiguousarray(block)))
        gender = UNKNOWN_GENDER if row["gender"] is None else row["gender"]
        return views, present, float(row["age"]), int(gender), torch.tensor(age_range_of(row), dtype=torch.float32)

    def reseed(self, seed: int) -> None:
        """Every region's augmentation seed (``bootstrap.seed_worker`` calls it in each loader worker)."""
        for pipeline in self.pipelines or ():
            pipeline.set_random_seed(seed % 2**31)


def train_mode(model) -> None:
    """Training mode, except the branches' dropout: the head learned from their
    deterministic outputs and meets those again at inference (it drops whole branches
    itself, ``--branch-dropout``)."""
    model.train()
    for module in model.branches.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()


def joint_loss(model, views, present, age, gender, age_range, keep, aux_weight: float, gender_weight: float):
    """The fused loss over the head's view of the face (branches in ``keep`` only), plus
    ``aux_weight`` times each branch's own loss on the faces that have its crop."""
    blocks, aux = [], []
    for region, branch, images, has in zip(model.regions, model.branches, views, present.T):
        block, out = model.branch_block(region, branch, images)
        blocks.append(block)
        if has.any():
            rows = has.repeat_interleave(images.shape[1])  # face-major, like the views
            repeat = lambda t: t.repeat_interleave(images.shape[1], 0)[rows]
            aux.append(branch_loss({k: v[rows] for k, v in out.items()}, repeat(age), repeat(gender),
                                   age_range=repeat(age_range), gender_weight=gender_weight)[0])
    fused = head_loss(model, torch.stack(blocks, 1), present & keep, age, gender, age_range, gender_weight)
    return fused + aux_weight * (torch.stack(aux).mean() if aux else 0), fused


@torch.inference_mode()
def evaluate(model, loader, device, gender_weight: float) -> tuple[dict, list[torch.Tensor]]:
    """Fused validation loss, age MAE and gender accuracy (with the model's own mirroring),
    and the data they were read from (features, presence, age, gender, age range), for the
    interval."""
    model.eval()
    features, present, ages, genders, ranges = [], [], [], [], []
    for views, has, age, gender, age_range in loader:
        features.append(model.features([v.to(device) for v in views]).float().cpu())
        present.append(has)
        ages.append(age.float())
        genders.append(gender)
        ranges.append(age_range)
    data = [torch.cat(x) for x in (features, present, ages, genders, ranges)]
    loss = head_loss(model, *[d.to(device) for d in data], gender_weight).item()
    out = model.predict(data[0].to(device), data[1].to(device))
    known = data[3] >= 0
    female = out["gender_female"].cpu()
    return {"val_loss": loss, "val_mae": (out["age"].cpu() - data[2]).abs().mean().item(),
            "val_gender_acc": ((female[known] > 0.5).long() == data[3][known]).float().mean().item()}, data


def main(args: argparse.Namespace) -> int:
    device = torch_device(args.device)
    out, cache = Path(args.out), Path(args.cache)

    if args.round_size < args.batch_size:
        raise SystemExit(f"error: --round-size {args.round_size} is smaller than --batch-size {args.batch_size}: "
                         f"a round would have no full batch")
    settings = {k: getattr(args, k) for k in SETTINGS}
    start_sha256 = hashlib.sha256(Path(args.fused).read_bytes()).hexdigest()

    # the model to start from, every weight trainable
    model, state = load_fused(args.fused, device, fold=False)
    model.requires_grad_(True)
    mirrored = model.mirrored  # mirroring averages at inference; in training a flip is augmentation

    # data
    # the datasets cut each branch's views by its region (its crops), in the head's order
    regions = [model.crops[name] for name in model.regions]
    train_set = FaceDataset(cache, "train", regions, model.image_sizes, args.aug, args.seed)
    val_set = FaceDataset(cache, "val", regions, model.image_sizes, None)
    sampler = RebalancedBootstrapSampler(train_set.groups, args.alpha, args.seed, args.round_size)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        worker_init_fn=seed_worker, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=128, num_workers=args.workers)
    out.mkdir(parents=True, exist_ok=True)
    print(f"joint training of {', '.join(model.regions)} and the head from {args.fused}: "
          f"{len(train_set)} training faces, {len(val_set)} validation faces, on {device}")

    # optimiser, stop rule, resume
    optimizer = torch.optim.AdamW([{"params": model.branches.parameters(), "lr": args.lr, "peak": args.lr},
                                   {"params": model.head.parameters(), "lr": args.head_lr, "peak": args.head_lr}],
                                  weight_decay=1e-4)
    stop = StopRule(args.k, args.epsilon, args.max_rounds + 1)  # + round -1, the frozen fusion
    history, start_round, best_state = [], 0, None
    if args.resume:
        if not (out / "last.pt").is_file():
            raise CheckpointError(f"{out / 'last.pt'}: no joint run to resume")
        saved = read_torch_file(out / "last.pt", "joint checkpoint")
        if not isinstance(saved, dict) or not RESUME_KEYS <= set(saved):
            raise CheckpointError(f"{out / 'last.pt'}: not an agefuse-train-joint checkpoint")
        if saved["start_sha256"] != start_sha256:
            raise CheckpointError(f"{out / 'last.pt'} started from another model than {args.fused} (SHA-256 differs)")
        changed = [f"--{k.replace('_', '-')} {saved['settings'].get(k)!r} there, {v!r} here"
                   for k, v in settings.items() if saved["settings"].get(k) != v]
        if changed:
            raise CheckpointError(f"{out / 'last.pt'} was trained with other settings ({'; '.join(changed)}): "
                                  f"resume with the same ones, or start a new --out")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        stop.load_state_dict(saved["stop"])
        history, start_round, best_state = saved["history"], saved["round"] + 1, saved["best"]
        print(f"resumed from {out / 'last.pt'} after round {saved['round']}")
    else:  # round -1: where the frozen fusion stood
        history.append({"round": -1, **evaluate(model, val_loader, device, args.gender_weight)[0]})
        stop.update(history[0]["val_loss"])
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"before joint training: val loss {history[0]['val_loss']:.4f} mae {history[0]['val_mae']:.3f} "
              f"gender {100 * history[0]['val_gender_acc']:.1f}%")

    total = args.max_rounds * len(loader)
    for round_index in range(start_round, args.max_rounds):
        if stop.should_stop():
            break
        # train one bootstrap round
        torch.manual_seed(round_seed(args.seed, round_index))
        sampler.set_round(round_index)
        train_set.reseed(round_seed(args.seed, round_index))  # workers=0; workers reseed themselves
        train_mode(model)
        model.mirrored = set()
        tick, sums, count = time.perf_counter(), 0.0, 0
        bar = tqdm(loader, desc=f"round {round_index}", unit="batch", leave=False, disable=None)
        for step, (views, present, age, gender, age_range) in enumerate(bar, round_index * len(loader)):
            for group in optimizer.param_groups:
                # a short warm-up: the head meets branches that start moving
                group["lr"] = lr_at(step, total, group["peak"], warmup=min(len(loader), 100))
            views, present = [v.to(device) for v in views], present.to(device)
            age, gender, age_range = age.float().to(device), gender.to(device), age_range.to(device)
            keep = (torch.rand(present.shape) >= args.branch_dropout).to(device)  # the same mask on any device
            loss, fused = joint_loss(model, views, present, age, gender, age_range, keep, args.aux_weight,
                                     args.gender_weight)
            if not torch.isfinite(loss):
                last = f"{out / 'last.pt'} (round {round_index - 1})" if round_index else "none yet"
                print(f"error: the training loss became {loss.item()} in round {round_index}; stopping. "
                      f"The last good checkpoint is {last}", file=sys.stderr)
                return 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums, count = sums + fused.item() * len(age), count + len(age)
            bar.set_postfix(fused_loss=f"{sums / count:.3f}")
        model.mirrored = mirrored
        seconds = time.perf_counter() - tick

        # validate, apply the stop rule, checkpoint
        val = evaluate(model, val_loader, device, args.gender_weight)[0]
        stop.update(val["val_loss"])
        if stop.improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"round": round_index, "train_fused_loss": sums / count, "train_seconds": round(seconds, 1),
                        "faces_per_s": round(count / seconds, 1), **val, "best": stop.improved})
        print(f"round {round_index}  train fused loss {sums / count:.4f} | val loss {val['val_loss']:.4f} "
              f"mae {val['val_mae']:.3f} gender {100 * val['val_gender_acc']:.1f}% | {count / seconds:.1f} faces/s"
              f"{'  *best' if stop.improved else ''}", flush=True)
        saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "stop": stop.state_dict(),
                 "round": round_index, "history": history, "best": best_state, "start_sha256": start_sha256,
                 "settings": settings,
                 "config": vars(args)}
        with atomic_write(out / "last.pt") as tmp:
            torch.save(saved, tmp)
        (out / "history.json").write_text(json_text(history))
        if args.pause_after and round_index + 1 - start_round >= args.pause_after and round_index + 1 < args.max_rounds:
            print(f"paused after round {round_index} (--pause-after {args.pause_after}): continue with --resume")
            return 0

    # the best round, its interval refitted on half the validation split, checked on the other
    model.load_state_dict(best_state)
    val, data = evaluate(model, val_loader, device, args.gender_weight)
    features, present, age = (d.to(device) for d in data[:3])
    fitted = torch.tensor([in_calibration_half(r["id"]) for r in val_set.rows], device=device)
    temperature = fit_temperature(model, features[fitted], present[fitted], age[fitted])
    with torch.no_grad():
        result = model.predict(features, present)
    checked = ~fitted.cpu().numpy()
    coverage = interval_coverage(age.cpu().numpy()[checked], result["age_low"].cpu().numpy()[checked],
                                 result["age_high"].cpu().numpy()[checked])
    best = history[stop.best_round]  # history, like the stop rule, starts at round -1
    summary = {"start": str(args.fused), "best_round": best["round"], "val_mae": val["val_mae"],
               "val_gender_acc": val["val_gender_acc"], "before": history[0], "temperature": temperature,
               "val_interval_coverage": coverage, "interval_checked_faces": int(checked.sum()),
               "rounds": len(history) - 1, "stop": f"{stop.reason()} (round -1 counted)", "start_sha256": start_sha256}
    save_fused(model.cpu().eval(), state["branch_args"], out / "fused.pt",
               {"summary": {**state.get("summary", {}), "joint": summary}, "config": vars(args)})
    (out / "joint.json").write_text(json_text(summary))
    print(f"best round {best['round']} (-1: the frozen fusion): val mae {val['val_mae']:.3f} "
          f"(before {history[0]['val_mae']:.3f}), gender {100 * val['val_gender_acc']:.1f}% "
          f"(before {100 * history[0]['val_gender_acc']:.1f}%); the {100 * model.interval:.0f}% interval holds for "
          f"{100 * coverage:.1f}% of the other half of the validation faces -> {out / 'fused.pt'}")
    return 0


def run() -> int:
    return run_command(get_args_parser, main, (CheckpointError,))


if __name__ == "__main__":
    sys.exit(run())
