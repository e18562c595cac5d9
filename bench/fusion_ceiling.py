"""How far below its best branch any fusion of a run's branches can go: the 5 % margin's ceiling.

    python bench/fusion_ceiling.py --run bench/out/cpu-long-v5

Reads the branch outputs a recipe's fusion stage cached (``RUN/fused/features-*.npz``, the
regions in ``RUN/fused/fusion.json``'s order) and prints:

- each branch's age MAE and gender accuracy on the training faces and on the validation
  split: how much better a branch looks on the faces it fitted. The head learns from the
  former, so it trusts most the branch that overfit most;
- the correlation of the branches' age errors on the validation split: two branches that
  err together gain little from being averaged;
- linear blends of the branches' ages, fitted by least absolute error: on the training
  faces (what the head sees), and out of fold on the validation split (5 folds, each fitted
  on the other four): the second is an honest estimate of what a head reading these ages
  reaches when its inputs are not overfit, and so of the margin's ceiling with these
  branches;
- gender: logistic regressions over the branches' gender logits and over all their
  features, fitted the same two ways.

Nothing here becomes a model: a blend fitted on validation faces is a measurement only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, QuantileRegressor
from sklearn.model_selection import KFold

from agefuse.branches import MIRROR_INVARIANT
from agefuse.fusion import BranchBlock, oof_path, read_features

FOLDS = 5


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a bench/utk_accuracy.py output folder")
    parser.add_argument("--train-faces", type=int, default=6000,
                        help="training faces the least-absolute-error blend is fitted on (a random draw: "
                             "the fit's cost grows fast with the count)")
    parser.add_argument("--seed", type=int, default=0, help="for the draw and the folds")
    return parser


def cached_features(fused: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]:
    """The training and validation features of the same branches: the newest validation cache
    and the training cache of the same name's tail (mirroring and the branches' fingerprint);
    and whether they are of mirrored crops."""
    paths = sorted(fused.glob("features-val-*.npz"), key=lambda p: p.stat().st_mtime)
    train = fused / paths[-1].name.replace("features-val-", "features-train-", 1) if paths else None
    if train is None or not train.is_file():
        raise SystemExit(f"error: {fused}: no cached training and validation features of the same branches; "
                         f"run the recipe's fusion stage first")
    (train_data, not_run), (val_data, _) = read_features(train), read_features(paths[-1])
    if not_run:
        raise SystemExit(f"error: {train}: the {', '.join(sorted(not_run))} branches were not run over the training "
                         f"faces (out of fold: their blocks are in features-train-oof-*); this bench reads full "
                         f"branches only (bench/fusion_subsets.py reads the out-of-fold blocks)")
    return train_data, val_data, "-mirrored-" in paths[-1].name


def l1_blend(x: np.ndarray, y: np.ndarray) -> QuantileRegressor:
    return QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(x, y)


def out_of_fold(fit, x: np.ndarray, y: np.ndarray, seed: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Each face's prediction from a model fitted on the other folds (on ``keep`` faces only)."""
    keep = np.ones(len(y), bool) if keep is None else keep
    predicted = np.zeros(len(y))
    for fitted, held in KFold(FOLDS, shuffle=True, random_state=seed).split(x):
        fitted = fitted[keep[fitted]]
        predicted[held] = fit(x[fitted], y[fitted]).predict(x[held])
    return predicted


def main(args: argparse.Namespace) -> None:
    fused = args.run / "fused"
    summary = json.loads((fused / "fusion.json").read_text())
    regions = list(summary["branches"])
    train, val, mirrored = cached_features(fused)
    # the head's training inputs: a region with fold branches (--out-of-fold) from those
    cache = Path(summary["calibration"]["cache"])
    for region, checkpoints in summary.get("out_of_fold", {}).items():
        path = oof_path(fused, cache, region, mirrored and region in MIRROR_INVARIANT, list(map(Path, checkpoints)))
        if not path.is_file():
            raise SystemExit(f"error: {path}: the fusion's out-of-fold features of {region} are missing; "
                             f"run its fusion stage again")
        with np.load(path) as data:
            train["features"][:, regions.index(region)] = data["block"]
        print(f"{region}: training faces' outputs from its fold branches ({path.name})")
    block = BranchBlock(train["features"].shape[-1] - 2)
    ages = {split: block.age(data["features"]) for split, data in (("train", train), ("val", val))}
    logits = {split: block.gender_logit(data["features"]) for split, data in (("train", train), ("val", val))}

    def gender_acc(logit, data):
        known = data["gender"] >= 0
        return 100 * float(((logit[known] > 0) == (data["gender"][known] == 1)).mean())

    print(f"# {args.run}: {len(train['age'])} training faces, {len(val['age'])} validation faces\n")
    print("| branch | train MAE | val MAE | gap | train gender | val gender |\n|---|---|---|---|---|---|")
    val_mae = {}
    for i, region in enumerate(regions):
        maes = [float(np.abs(ages[s][:, i] - d["age"]).mean()) for s, d in (("train", train), ("val", val))]
        val_mae[region] = maes[1]
        print(f"| {region} | {maes[0]:.2f} | {maes[1]:.2f} | {maes[1] - maes[0]:+.2f} | "
              f"{gender_acc(logits['train'][:, i], train):.1f}% | {gender_acc(logits['val'][:, i], val):.1f}% |")
    best = min(val_mae, key=val_mae.get)

    errors = ages["val"] - val["age"][:, None]
    correlation = np.corrcoef(errors.T)
    print("\nage-error correlation, validation split\n\n| | " + " | ".join(regions) + " |\n" + "|---" * (len(regions) + 1) + "|")
    for i, region in enumerate(regions):
        print(f"| {region} | " + " | ".join(f"{c:.2f}" for c in correlation[i]) + " |")

    draw = np.random.default_rng(args.seed).permutation(len(train["age"]))[:args.train_faces]
    on_train = l1_blend(ages["train"][draw], train["age"][draw])
    blends = {
        f"linear blend of the ages, fitted on {len(draw)} training faces": on_train.predict(ages["val"]),
        f"linear blend of the ages, out of fold on validation ({FOLDS} folds)": out_of_fold(
            l1_blend, ages["val"], val["age"], args.seed),
    }
    print(f"\n| age blend | val MAE | below {best} ({val_mae[best]:.2f}) |\n|---|---|---|")
    for name, predicted in blends.items():
        mae = float(np.abs(predicted - val["age"]).mean())
        print(f"| {name} | {mae:.3f} | {100 * (1 - mae / val_mae[best]):.1f}% |")
    print("weights fitted on training faces: " + ", ".join(
        f"{r} {w:.2f}" for r, w in zip(regions, on_train.coef_)))

    known_train, known_val = train["gender"] >= 0, val["gender"] >= 0
    everything = {s: d["features"].reshape(len(d["age"]), -1) for s, d in (("train", train), ("val", val))}
    print("\n| gender from | fitted on training faces | out of fold on validation |\n|---|---|---|")
    # all features at C 1 is left out: minutes to converge, and no better in the runs tried
    for name, inputs, strengths in (("the branches' gender logits", logits, (0.01, 1.0)),
                                    ("all branch features", everything, (0.01,))):
        for c in strengths:
            def fit(x, y, c=c):
                return LogisticRegression(C=c, max_iter=3000).fit(x, y)
            on_train = fit(inputs["train"][known_train], train["gender"][known_train])
            own = on_train.predict(inputs["val"])
            folded = out_of_fold(fit, inputs["val"], val["gender"], args.seed, keep=known_val)
            accuracy = [100 * float((p[known_val] == val["gender"][known_val]).mean()) for p in (own, folded)]
            print(f"| {name} (C {c:g}) | {accuracy[0]:.1f}% | {accuracy[1]:.1f}% |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
