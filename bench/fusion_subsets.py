"""Which branches pay for their time: the fusion head trained again over a run's cached branch
features, with some branches hidden, or a fold region's inputs changed.

    python bench/fusion_subsets.py --run bench/out/cpu-budget-v4 --seeds 0,1,2 \
        --variant "every branch=" --variant "no eyes=-eyes" --variant "no eyes, cross-fitted=-eyes,cross-fit"

``--run`` is a folder of ``bench/utk_accuracy.py`` whose ``fused/`` holds the branch features
(nothing is extracted again, but for ``cross-fit``). A variant is NAME=TOKENS, the tokens
comma-separated:
- ``-REGION``: the branch is hidden from the head, on training and validation faces alike
  (as if it were not fused; its features stay cached, so no branch runs);
- ``own:REGION``: for a region the run's head learned out of fold, the head learns the saved
  branch's own outputs on its training faces instead;
- ``cross-fit``: the validation faces of every out-of-fold region are scored by the mean of
  its fold branches (``agefuse-train-fusion --cross-fit``), not by the full branch;
- ``--OPTION=VALUE``: one of the head's ``agefuse-train-fusion`` settings changed (``--alpha=0.5``;
  ``--no-separate-gender`` for an on/off one).
Each variant's head is trained with the run's own fusion settings (its ``fused.pt`` config)
once per seed; the table gives each seed's MAE and worst decade 0-89, the median seed's other
figures, and its margin below the run's best branch alone. A seed's head starts from other
weights than the run's own head (which is built with the branches), so neither row is the
run's exact model. Validation split only: the test split stays unseen.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agefuse.branches import read_torch_file  # noqa: E402
from agefuse.fusion.features import averaged_branch, extract, fold_branches, read_features  # noqa: E402
from agefuse.fusion.metrics import age_report, gender_report, interval_coverage  # noqa: E402
from agefuse.fusion.model import FusedModel, create_head, in_calibration_half, load_fused  # noqa: E402
from agefuse.fusion.train import fit_head, fit_temperature, get_args_parser as fusion_parser, tensors  # noqa: E402
from agefuse.regions import manifest, read_settings  # noqa: E402

DECADES_0_89 = [f"{10 * d}-{10 * d + 9}" for d in range(9)]
FINGERPRINT = "[0-9a-f]" * 16  # fusion.features.fingerprint: keeps features-train-* from matching the oof blocks


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a bench/utk_accuracy.py output folder")
    parser.add_argument("--variant", action="append", default=[], help="NAME=TOKENS (repeatable; see above)")
    parser.add_argument("--seeds", default="0,1,2", help="the head's seeds, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    return parser


def head_options(config: dict, tokens: list[str], spec: str) -> argparse.Namespace:
    """The run's head settings with a variant's ``--OPTION=VALUE`` tokens read by
    agefuse-train-fusion's own parser, so they are checked and typed as there
    (``--no-separate-gender``, not ``--separate-gender=false``)."""
    parser = argparse.ArgumentParser(prog=f"--variant {spec}", add_help=False)
    for action in fusion_parser(add_help=False)._actions:
        if action.dest in config and not action.required:
            parser._add_action(action)
    # argparse keeps what the namespace already holds, so only the tokens change the run's settings
    return parser.parse_args(tokens, namespace=argparse.Namespace(**config))


def cached(folder: Path, pattern: str) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """The one file of ``pattern``: its arrays, and the regions it skipped (agefuse.fusion.features.read_features)."""
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: {folder}: {len(found)} files match {pattern}, expected 1 (run the recipe first)")
    return read_features(found[0])  # an out-of-fold block's file too: it skipped nothing


def crossfit_blocks(model: FusedModel, cache: Path, val: dict, out_of_fold: dict, branch_args: dict) -> dict:
    """Each out-of-fold region's validation block from the mean of its fold branches."""
    rows = {r["id"]: r for r in manifest.load(cache) if r["split"] == "val"}
    ordered = [rows[str(i)] for i in val["id"]]
    blocks = {}
    for region, paths in out_of_fold.items():
        folds = fold_branches(region, [ROOT / p if not Path(p).is_absolute() else Path(p) for p in paths], None)
        branch, args = averaged_branch(folds, branch_args[region])
        single = FusedModel({region: branch}, {region: args["image_size"]}, mirror=region in model.mirrored)
        blocks[region] = extract(single.eval(), cache, ordered, desc=f"{region} cross-fitted")["features"][:, 0]
    return blocks


def score(model: FusedModel, val: dict) -> dict:
    """The head's validation figures, its interval fitted on one half and checked on the other."""
    fitted = np.array([in_calibration_half(i) for i in val["id"]])
    calibration = {k: v[fitted] for k, v in val.items()}
    fit_temperature(model, *tensors(calibration, "cpu")[:3])
    with torch.no_grad():
        out = model.predict(*tensors(val, "cpu")[:2])
    age = age_report(val["age"], out["age"].numpy())
    worst = max((age["mae_by_decade"][d], d) for d in DECADES_0_89 if d in age["mae_by_decade"])
    return {"mae": age["mae"], "cs5": age["cs5"], "gender": gender_report(val["gender"], out["gender_female"].numpy())["accuracy"],
            "worst": worst, "coverage": interval_coverage(val["age"][~fitted], out["age_low"].numpy()[~fitted],
                                                          out["age_high"].numpy()[~fitted])}


class RunFeatures(NamedTuple):
    """What a finished run's head learned from and is scored on."""
    model: FusedModel      # the run's fused model, fold branches not loaded
    summary: dict          # its fused/fusion.json
    train: dict            # training faces' head inputs as the head learned them (out-of-fold blocks put in)
    val: dict              # validation faces' head inputs
    not_run: frozenset     # regions whose branches the features file skipped over the training faces
    own: np.ndarray        # the training features before the out-of-fold blocks went in


def head_features(run: Path) -> RunFeatures:
    """A finished run's cached head inputs (``RunFeatures``)."""
    fused = run / "fused"
    summary = json.loads((fused / "fusion.json").read_text())
    base, _ = load_fused(fused / "fused.pt", fold=False)
    mirrored = "-mirrored" if base.mirrored else ""  # as fusion.features.split_features names them
    train, not_run = cached(fused, f"features-train{mirrored}-{FINGERPRINT}.npz")
    own = train["features"].copy()
    for region in summary.get("out_of_fold", {}):  # what the run's head learned from
        flipped = "-mirrored" if region in base.mirrored else ""
        block, _ = cached(fused, f"features-train-oof-{region}{flipped}-{FINGERPRINT}.npz")
        position = {face: n for n, face in enumerate(block["id"])}
        train["features"][:, base.regions.index(region)] = block["block"][[position[face] for face in train["id"]]]
    val, _ = cached(fused, f"features-val{mirrored}-{FINGERPRINT}.npz")
    return RunFeatures(base, summary, train, val, not_run, own)


def main(args: argparse.Namespace) -> int:
    fused = args.run / "fused"
    state = read_torch_file(fused / "fused.pt", "agefuse model")
    config = {"heads": 1, **state["config"]}  # a run from before --heads had one
    cache = args.run / "cache"
    base, summary, train, val, not_run, own = head_features(args.run)
    regions = base.regions
    crossfit = None
    best_branch = min(summary["branch_val_mae"].items(), key=lambda item: item[1])
    age_groups = manifest.parse_age_groups(read_settings(cache).age_groups)
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [f"# {args.run}: the head again over its cached branch features ({len(val['age'])} validation faces); "
             f"best branch alone {best_branch[0]} {best_branch[1]:.2f}; the run's own head "
             f"{summary['val_mae']:.2f}",
             "", "| variant | MAE per seed (worst decade 0-89) | median | CS@5 | gender | worst decade 0-89 | interval | below best branch |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for spec in args.variant or ["every branch="]:
        name, _, tokens = spec.partition("=")
        tokens = [t.strip() for t in tokens.split(",") if t.strip()]
        head_args = head_options(config, [t for t in tokens if t.startswith("--")], spec)
        tokens = [t for t in tokens if not t.startswith("--")]
        unknown = [t for t in tokens if not (t == "cross-fit" or t.lstrip("-") in regions
                                            or (t.startswith("own:") and t[4:] in summary.get("out_of_fold", {})))]
        unknown += [f"{t} (the run never ran that branch over the training faces: its out-of-fold block stood in)"
                    for t in tokens if t.startswith("own:") and t[4:] in not_run]
        if unknown:
            raise SystemExit(f"error: --variant {spec}: {', '.join(unknown)} (regions: {', '.join(regions)}; "
                             f"out of fold: {', '.join(summary.get('out_of_fold', {})) or 'none'})")
        variant_train = {**train, "features": train["features"].copy(), "present": train["present"].copy()}
        variant_val = {**val, "features": val["features"].copy(), "present": val["present"].copy()}
        for token in tokens:
            if token.startswith("-"):
                column = regions.index(token[1:])
                variant_train["present"][:, column] = variant_val["present"][:, column] = False
            elif token.startswith("own:"):
                column = regions.index(token[4:])
                variant_train["features"][:, column] = own[:, column]
            else:
                crossfit = crossfit or crossfit_blocks(base, cache, val, summary["out_of_fold"], state["branch_args"])
                for region, block in crossfit.items():
                    variant_val["features"][:, regions.index(region)] = block
        results = []
        for seed in seeds:
            model = copy.deepcopy(base)  # the branches are not run: only the head is new
            torch.manual_seed(seed)
            head_args.seed = seed
            model.head = create_head(len(regions) * (base.block.width + 1), int(base.ages[-1]),
                                     head_args.separate_gender, head_args.heads)
            fit_head(model, variant_train, variant_val, head_args,
                     age_groups, torch.device("cpu"), log=None)
            results.append(score(model, variant_val))
        median = sorted(results, key=lambda r: r["mae"])[len(results) // 2]
        per_seed = " / ".join(f"{r['mae']:.3f} ({r['worst'][0]:.2f})" for r in results)
        line = (f"| {name} | {per_seed} | {median['mae']:.3f} | "
                f"{100 * median['cs5']:.1f}% | {100 * median['gender']:.1f}% | {median['worst'][1]} "
                f"({median['worst'][0]:.2f}) | {100 * median['coverage']:.1f}% | "
                f"{100 * (1 - median['mae'] / best_branch[1]):.1f}% |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
