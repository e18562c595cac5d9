"""agefuse-train-branch: train one region's CNN branch on a regions cache.

    agefuse-train-branch --cache runs/utk --region face --model small_cnn --out runs/face

Reads top to bottom: data, model, resume, the loop over bootstrap rounds (train, evaluate,
stop rule, checkpoint), the end. A round is one class-rebalanced bootstrap draw of the
training split (``--alpha``); training stops when the validation loss of the last ``--k``
rounds varies by less than ``--epsilon`` or after ``--max-rounds``.

Writes to ``--out``: ``last.pt`` (every round: model, optimiser, sampler, stop rule, RNG),
``best.pt`` (the best validation round: what the fusion stage loads), ``history.json``,
``learning_curve.png`` and ``augmentation.json`` (the resolved pipeline).

Several processes (DDP): ``torchrun --nproc_per_node 2 -m agefuse.branches.train ...``: gloo on CPU,
NCCL on CUDA; each rank trains on a disjoint share of the same round.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from agefuse.bootstrap import RebalancedBootstrapSampler, StopRule, lr_at, round_seed, seed_worker
from agefuse.cli import (
    HelpFormatter,
    device_name,
    existing_file,
    float_in,
    fold_spec,
    int_at_least,
    output_folder,
    run_command,
    torch_device,
)

from . import augment
from .checkpoint import CheckpointError, load_checkpoint, model_args_of, repair_run, save_round
from .data import BRANCH_REGIONS, CacheError, RegionDataset
from .metrics import age_metrics, plot_learning_curve
from .model import EMBEDDING_DIM, FEATURE_SCALE, GENDER_WEIGHT, MAX_AGE, branch_loss, create_model, model_names
from .teacher import TeacherError, WithTeacher, add_teacher_options, distill_loss


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train one region's CNN branch.", add_help=add_help,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--cache", required=True, help="a cache written by agefuse-regions")
    parser.add_argument("--region", "--crop", dest="region", required=True, choices=sorted(BRANCH_REGIONS),
                        help="the region (its crops) the branch reads; the branch's name is its --out folder's, "
                             "or the name a recipe's [branches.NAME] table gives it")
    parser.add_argument("--out", required=True, type=output_folder, help="run folder: checkpoints, history, plots")
    # model
    parser.add_argument("--model", default="small_cnn", choices=model_names())
    parser.add_argument("--max-age", type=int_at_least(1), default=MAX_AGE, help="oldest age the head can say")
    parser.add_argument("--embedding-dim", type=int_at_least(1), default=EMBEDDING_DIM,
                        help="size of the embedding fusion reads")
    parser.add_argument("--feature-scale", type=float_in(0, 1000, low_open=True), default=FEATURE_SCALE,
                        help="multiplies the backbone's features before the embedding layer: 8 for "
                             "dlib_face_resnet, whose descriptor is about 0.12 per dimension")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="start from scratch even where shipped weights exist (the dlib backbones')")
    parser.add_argument("--weights", default=None, type=existing_file, help="local weights file for the backbone")
    parser.add_argument("--image-size", type=int_at_least(16), default=64, help="input side in pixels (16 or more)")
    parser.add_argument("--fold", type=fold_spec, default=None,
                        help="I/K: leave part I of the training split's K parts out (parts chosen by a hash of "
                             "the id), so that this branch's outputs on them are out of fold: what "
                             "agefuse-train-fusion --out-of-fold feeds the head in place of the full branch's")
    parser.add_argument("--init", default=None, metavar="BRANCH.pt",
                        help="start from this trained branch's weights (the same network, region aside: a "
                             "teacher's own branch, say) instead of the backbone's shipped ones")
    add_teacher_options(parser, "branch")
    parser.add_argument("--aug", default="default",
                        help="augmentation: none, default (branches/augment/default.json) or a .json")
    # the bootstrap and the stop rule
    parser.add_argument("--alpha", type=float_in(0, 1), default=RebalancedBootstrapSampler.ALPHA,
                        help="rebalancing: 0 plain bootstrap, 1 every age group equally likely")
    parser.add_argument("--round-size", type=int_at_least(1), default=None,
                        help="draws per bootstrap round (default: the training split's size)")
    parser.add_argument("--k", type=int_at_least(2), default=StopRule.k, help="rounds the stop rule compares")
    parser.add_argument("--epsilon", type=float_in(0, 1, low_open=True), default=StopRule.epsilon,
                        help="stop when the last k validation losses differ by less than this (relative)")
    parser.add_argument("--max-rounds", type=int_at_least(1), default=StopRule.max_rounds,
                        help="bootstrap rounds at most: with the stop rule, what a recipe fixes")
    parser.add_argument("--time-limit", type=float_in(0, 10**6, low_open=True), default=None,
                        help="minutes: no new round starts that would end past this")
    # optimisation
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="per process")
    parser.add_argument("--lr", type=float_in(0, 10, low_open=True), default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--head-lr", type=float_in(0, 10, low_open=True), default=None,
                        help="peak learning rate of the layers a branch adds to its backbone (embedding, age "
                             "and gender heads), default --lr. A backbone fine-tuned slowly needs faster new "
                             "layers: dlib_face_resnet at 1e-4 throughout left gender at chance for 3 rounds")
    parser.add_argument("--weight-decay", type=float_in(0, 10), default=1e-4)
    parser.add_argument("--gender-weight", type=float_in(0, 100), default=GENDER_WEIGHT,
                        help="the gender loss's weight beside the age loss (higher for a branch started "
                             "from a gender network, so that the age loss does not wash its features out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int_at_least(0), default=1, help="data-loading processes (0 = in the loop)")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto (CUDA when present), cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    return parser


# ---- devices and processes ----------------------------------------------------------------

def setup_device(name: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); starts the process group under torchrun."""
    device = torch_device(name)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device(f"cuda:{local}")
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def seed_round(seed: int, round_index: int) -> int:
    """Everything random in a round comes from (seed, round): resuming at a round boundary
    replays exactly what an uninterrupted run would do."""
    seed = round_seed(seed, round_index)
    torch.manual_seed(seed)
    return seed


def parameter_groups(model, lr: float, head_lr: float | None) -> list[dict]:
    """AdamW's parameter groups, each with its ``peak`` learning rate (kept in the checkpoint):
    one group, or (with ``head_lr``) the backbone at ``lr`` and the layers the branch adds at
    ``head_lr``."""
    if head_lr is None:
        return [{"params": list(model.parameters()), "peak": lr}]
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    return [{"params": backbone, "peak": lr},
            {"params": [p for p in model.parameters() if id(p) not in ids], "peak": head_lr}]


def start_from(model, path: str, model_args: dict) -> None:
    """``model`` takes the weights of the trained branch at ``path``, which must be the same
    network (its region, the faces it saw and its image size may differ: every backbone pools
    its last map to a fixed size, so its weights fit any input, and a 150-px face ResNet starts
    a 128-px one)."""
    if not Path(path).is_file():
        raise CheckpointError(f"--init {path}: no branch checkpoint here")
    state = load_checkpoint(path)
    theirs, ours = state["model_args"], {**model_args}
    differ = [f"{k} is {theirs.get(k)!r} there, {v!r} here" for k, v in ours.items()
              if k not in ("region", "fold", "image_size") and theirs.get(k) != v]
    if differ:
        raise CheckpointError(f"--init {path}: another network: " + ", ".join(differ))
    model.load_state_dict(state["model"])


# ---- one round, and the evaluation ----------------------------------------------------------

def train_one_epoch(model, loader, optimizer, device, step: int, lr_fn, show: bool,
                    description: str, gender_weight: float = GENDER_WEIGHT,
                    distill_weight: float = 0.0) -> tuple[dict, int]:
    """One bootstrap round. Returns the round's statistics and the next step number. A loader
    of ``WithTeacher`` samples adds the teacher's term, ``distill_weight`` of the loss."""
    model.train()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    sums, count, start = {"loss": 0.0, "age_l1": 0.0, "gender_correct": 0.0, "gender_known": 0}, 0, time.perf_counter()
    bar = tqdm(loader, desc=description, unit="batch", disable=None if show else True, leave=False,
               dynamic_ncols=True)
    for images, age, gender, _, age_range, *teacher in bar:
        for group, lr in zip(optimizer.param_groups, lr_fn(step)):
            group["lr"] = lr
        images, age, gender = images.to(device, non_blocking=True), age.to(device), gender.to(device)
        with amp:
            out = model(images)
        loss, parts = branch_loss(out, age, gender, age_range=age_range.to(device), gender_weight=gender_weight)
        if teacher:
            loss = (1 - distill_weight) * loss + distill_weight * distill_loss(
                out, *(t.to(device) for t in teacher), gender_weight=gender_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(age)
        known = gender >= 0
        sums["loss"] += loss.item() * n
        sums["age_l1"] += parts["age_l1"].item() * n
        sums["gender_correct"] += ((out["gender_logit"][known] > 0).long() == gender[known]).sum().item()
        sums["gender_known"] += known.sum().item()
        count += n
        step += 1
        bar.set_postfix(loss=f"{sums['loss'] / count:.3f}", mae=f"{sums['age_l1'] / count:.2f}")
    seconds = time.perf_counter() - start
    return {"train_loss": sums["loss"] / max(count, 1), "train_mae": sums["age_l1"] / max(count, 1),
            "train_gender_acc": sums["gender_correct"] / max(sums["gender_known"], 1),
            "train_images": count, "train_seconds": round(seconds, 2),
            "train_images_per_s": round(count / seconds, 1) if seconds else None}, step


@torch.inference_mode()
def evaluate(model, loader, device, gender_weight: float = GENDER_WEIGHT) -> dict:
    """Validation loss, age MAE (overall, per decade), gender accuracy. Several crops of one
    face (the eyes) are scored as separate samples here; fusion combines them."""
    model.eval()
    losses, ages, predicted, genders, gender_logits = [], [], [], [], []
    for images, age, gender, _, age_range in loader:
        images, age, gender = images.to(device), age.to(device), gender.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(images)
        loss, _ = branch_loss(out, age, gender, age_range=age_range.to(device), gender_weight=gender_weight)
        losses.append(loss.item() * len(age))
        ages.append(age.cpu())
        predicted.append(out["age"].float().cpu())
        genders.append(gender.cpu())
        gender_logits.append(out["gender_logit"].float().cpu())
    ages, predicted = torch.cat(ages), torch.cat(predicted)
    genders, gender_logits = torch.cat(genders), torch.cat(gender_logits)
    known = genders >= 0
    return {"val_loss": sum(losses) / len(ages), **age_metrics(ages.numpy(), predicted.numpy()),
            "val_gender_acc": float(((gender_logits[known] > 0).long() == genders[known]).float().mean())
            if known.any() else None}


# ---- the run --------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    device, rank, world = setup_device(args.device)
    is_main = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = print if is_main else (lambda *a, **k: None)

    # data
    pipeline = augment.build_pipeline(args.region, args.aug, seed=args.seed)
    train_set = RegionDataset(args.cache, args.region, "train", args.image_size, pipeline, fold=args.fold)
    val_set = RegionDataset(args.cache, args.region, "val", args.image_size, None)
    if args.teacher:
        train_set = WithTeacher(train_set, args.teacher, args.max_age + 1)
    if is_main:  # only now: a bad cache or augmentation file leaves no run folder behind
        out.mkdir(parents=True, exist_ok=True)
    sampler = RebalancedBootstrapSampler(train_set.groups, args.alpha, args.seed,
                                         args.round_size, rank=rank, world_size=world)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        worker_init_fn=seed_worker, pin_memory=device.type == "cuda", drop_last=False)
    val_loader = DataLoader(val_set, batch_size=2 * args.batch_size, num_workers=args.workers)
    log(f"region {args.region}: {len(train_set)} training and {len(val_set)} validation crops "
        f"from {args.cache}{f' (part {args.fold[0]} of {args.fold[1]} left out)' if args.fold else ''}; "
        f"{world} process(es) on {device}")
    if args.teacher:
        log(f"teacher {args.teacher}: {args.distill_weight:g} of the loss"
            + (f"; {train_set.missing} training face(s) it lacks learn from their labels alone"
               if train_set.missing else ""))

    # model, optimiser, stop rule
    torch.manual_seed(args.seed)  # the initial weights
    model = create_model(args.model, max_age=args.max_age, embedding_dim=args.embedding_dim,
                         pretrained=args.pretrained, weights=args.weights, feature_scale=args.feature_scale).to(device)
    if args.init and not args.resume:
        start_from(model, args.init, model_args_of(args))
    groups = parameter_groups(model, args.lr, args.head_lr)
    peaks = [group["peak"] for group in groups]  # this run's, whatever a resumed checkpoint's groups say
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    stop = StopRule(args.k, args.epsilon, args.max_rounds)
    history, start_round = [], 0
    model_args = model_args_of(args)
    if args.resume:
        state = load_checkpoint(out / "last.pt", model_args)
        repair_run(out, state, log)  # a kill during the last save: best.pt and history.json made to agree with it
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # one parameter group against two: --head-lr given to one run only
            raise CheckpointError(f"{out / 'last.pt'}: its optimiser does not match this run's "
                                  f"(was --head-lr the same?): {err}") from None
        sampler.load_state_dict(state["sampler"])
        stop.load_state_dict(state["stop"])
        history, start_round = state["history"], state["round"] + 1
        torch.set_rng_state(state["rng"])
        log(f"resumed from {out / 'last.pt'} after round {state['round']}")
        if stop.should_stop():
            log(f"nothing to do: the run had already stopped ({stop.reason()})")
            return 0
    raw_model = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if is_main:
        (out / "augmentation.json").write_text(json.dumps(augment.describe(pipeline), indent=1))

    steps_per_round = len(loader)
    total_steps = args.max_rounds * steps_per_round
    lr_fn = lambda step: [lr_at(step, total_steps, peak, warmup=min(steps_per_round, 200)) for peak in peaks]
    started = time.perf_counter()
    for round_index in range(start_round, args.max_rounds):
        # train one bootstrap round
        round_seed = seed_round(args.seed, round_index)
        sampler.set_round(round_index)
        if args.workers == 0:  # else each worker reseeds its copy (seed_worker)
            train_set.reseed(round_seed)
        try:
            stats, _ = train_one_epoch(model, loader, optimizer, device, round_index * steps_per_round,
                                       lr_fn, is_main, f"round {round_index}", args.gender_weight,
                                       args.distill_weight)
        except FloatingPointError as err:
            last = f"{out / 'last.pt'} (round {round_index - 1})" if round_index else "none yet"
            print(f"error: {err}; stopping. The last good checkpoint is {last}", file=sys.stderr)
            return 1
        # evaluate, apply the stop rule
        val = evaluate(raw_model, val_loader, device, args.gender_weight)
        stopping = stop.update(val["val_loss"])
        record = {"round": round_index, "lr": round(lr_fn((round_index + 1) * steps_per_round - 1)[0], 6),
                  **stats, **val, "best": stop.improved, "sampler": sampler.round_record()}
        history.append(record)
        log(f"round {round_index:3d}  train loss {stats['train_loss']:.4f} mae {stats['train_mae']:.2f}"
            f" | val loss {val['val_loss']:.4f} mae {val['val_mae']:.2f} gender "
            f"{100 * (val['val_gender_acc'] or 0):.1f}% | {stats['train_images_per_s']} img/s"
            f"{'  *best' if stop.improved else ''}")
        # checkpoint
        if is_main:
            state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                     "sampler": sampler.state_dict(), "stop": stop.state_dict(), "round": round_index,
                     "history": history, "rng": torch.get_rng_state(), "model_args": model_args,
                     "config": {k: v for k, v in vars(args).items()}}
            save_round(state, out, stop.improved)
            plot_learning_curve(history, out / "learning_curve.png", title=f"{args.region} branch ({args.model})")
        elapsed = (time.perf_counter() - started) / 60
        per_round = elapsed / (round_index - start_round + 1)
        if stopping:
            log(f"stopped after round {round_index} (rounds count from 0): {stop.reason()}")
            break
        if args.time_limit and elapsed + per_round > args.time_limit:
            log(f"stopped after round {round_index}: another round would pass --time-limit {args.time_limit} min")
            break
    best = history[stop.best_round]
    log(f"best round {best['round']}: val mae {best['val_mae']:.2f}, gender "
        f"{100 * (best['val_gender_acc'] or 0):.1f}%, worst decade {best['val_worst_decade']} "
        f"mae {best['val_worst_decade_mae']:.2f} -> {out / 'best.pt'}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def run() -> int:
    return run_command(get_args_parser, main, (CacheError, CheckpointError, TeacherError))


if __name__ == "__main__":
    sys.exit(run())
