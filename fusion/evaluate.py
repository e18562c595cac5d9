"""agefuse-evaluate: the fused model and each branch alone, side by side.

    agefuse-evaluate --model runs/fused/fused.pt --cache runs/utk --split val --out runs/eval
    agefuse-evaluate --images photos/ [--labels labels.csv] [--upsample 1] --out runs/eval

A plain folder goes through the same regions pipeline first (into ``OUT/cache``), finding
faces as the model's training cache did (``--detector``, ``--upsample``, ``--framing`` as agefuse-predict);
a cache cut with other crop settings than the model's is refused. Reports
age MAE, MSE, R², CS@5, MAE per decade and per race, minors-vs-adults precision/recall, and
gender accuracy, precision, recall, F1 and confusion matrix; writes ``evaluation.json``,
``evaluation.md`` and PNGs (predicted vs true age, error by age, gender confusion).
Images where no face was found are counted and listed, never dropped silently: the
detector's found rate is reported, and a photo it missed is a miss, not scored. Only a
chip-like image (``chip_like``: small and square, the face filling the frame) missed by the
detector is scored from the whole image, and said so.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from agefuse.cli import HelpFormatter, checked, existing_file, int_at_least, json_text, output_folder, run_command
from agefuse.regions import DETECTORS, FRAMING_HELP, FRAMINGS, build_cache, manifest

from .features import extract
from .groups import DEFAULT_GROUPS, Group, group_probabilities, group_report, parse_groups
from .inference import check_cache_fits, crop_settings
from .metrics import age_report, gender_report, interval_coverage
from .model import in_calibration_half, load_fused


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate the fused model and each branch alone.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, type=existing_file,
                        help="fused.pt from agefuse-train-fusion (default: the UTKFace model installed with agefuse)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", help="a regions cache; evaluate its --split")
    source.add_argument("--images", help="a plain folder of labelled face images")
    parser.add_argument("--split", default="val", choices=[*manifest.SPLITS, "all"],
                        help="with --cache: the manifest split to evaluate (default: val)")
    parser.add_argument("--labels", default=None, type=existing_file, help="with --images: CSV path,age[,gender]")
    parser.add_argument("--detector", default=None, choices=DETECTORS,
                        help="with --images: the face detector (default: the one the model's training cache used)")
    parser.add_argument("--upsample", type=int_at_least(0), default=None,
                        help="with --images: enlarge each photo this many times before detection (1 finds faces "
                             "down to about 40 px; default: as the model's training cache)")
    parser.add_argument("--framing", default=None, choices=FRAMINGS, help="with --images: " + FRAMING_HELP)
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="a face the detector misses is never evaluated, not even in a chip-like image (small "
                             "and square: the face fills it), which is otherwise scored from the whole image; a "
                             "photo the detector missed is a miss either way")
    parser.add_argument("--groups", type=checked(parse_groups), default=DEFAULT_GROUPS,
                        help="age groups whose probabilities are checked: NAME:LOW-HIGH,...,NAME:LOW-")
    parser.add_argument("--out", required=True, type=output_folder,
                        help="folder for the tables, plots and predictions.csv")
    parser.add_argument("--workers", type=int_at_least(1), default=2,
                        help="with --images: processes for the regions stage")
    return parser


def prepare_folder(args, model, out: Path) -> Path:
    """Run the regions stage on a plain folder, finding and cropping faces as the cache the
    model learned from did (its detector, upsampling, fallback box and crop sizes), so the
    branches see what agefuse-predict would give them."""
    settings = crop_settings(model, args.detector, args.upsample, fallback=args.fallback, framing=args.framing)
    cache = out / "cache"
    # lossless crops: the faces are scored from exactly the pixels agefuse-predict would cut
    argv = [args.images, "--cache", str(cache), "--workers", str(args.workers), "--detector", settings.detector,
            "--upsample", str(settings.upsample), "--framing", settings.framing,
            "--fallback-inset", str(settings.fallback_inset), "--ext", "png"]
    for region, (width, height) in settings.sizes.items():
        argv += [f"--{region.replace('_', '-')}-size", f"{width}x{height}"]
    if args.labels:
        argv += ["--labels", args.labels]
    if not args.fallback:
        argv.append("--no-fallback")
    build_cache(argv)
    return cache


CHIP_MAX_SIDE = 512   # a UTKFace chip is 200 px; a photo of one face that fills it is seldom larger
CHIP_MAX_ASPECT = 1.25


def chip_like(row: dict) -> bool:
    """An image that is one face filling the frame (a chip, as UTKFace's), where a face the
    detector missed may be scored from the whole image; a photo's whole image is no face."""
    width, height = row.get("width") or 0, row.get("height") or 0
    return (0 < max(width, height) <= CHIP_MAX_SIDE
            and max(width, height) <= CHIP_MAX_ASPECT * min(width, height))


def image_counts(chosen: list[dict], fallback: bool) -> tuple[list[dict], dict]:
    """The rows to score, and what became of every image: found by the detector, missed (a
    photo, or any image without the fallback: counted, never scored), scored from the whole
    image (a chip-like one), unreadable."""
    whole = [r for r in chosen if r["status"] == "fallback" and fallback and chip_like(r)]
    missed = [r for r in chosen if (r["status"] == "fallback" and r not in whole)
              or (r["status"] == "rejected" and r.get("faces") == 0)]
    found = sum(r["status"] == "ok" for r in chosen)
    scored = {id(r) for r in [*whole, *(r for r in chosen if r["status"] == "ok")]}
    rows = [r for r in chosen if id(r) in scored and r.get("age") is not None]
    unreadable = [f"{r['source']}: {r['reason']}" for r in chosen if r["status"] == "rejected" and r.get("faces") != 0]
    readable = found + len(whole) + len(missed)
    return rows, {"evaluated": len(rows), "faces found": found, "no face found": len(whole) + len(missed),
                  "found_rate": round(found / readable, 4) if readable else None,
                  "of which scored from the whole image": len(whole), "missed (not scored)": len(missed),
                  "unreadable": len(unreadable), "no_face_files": [r["source"] for r in [*missed, *whole]],
                  "missed_files": [r["source"] for r in missed],
                  "whole_image_files": [r["source"] for r in whole], "unreadable_files": unreadable}


def evaluate_rows(model, cache: Path, rows: list[dict], calibrated: set[str] = frozenset(),
                  groups: list[Group] | None = None) -> dict:
    """Every figure for the fused model and each branch; the interval's coverage leaves out
    the ``calibrated`` ids (the faces its temperature was fitted on); ``groups``: the age
    groups whose probabilities are checked (default: minors and adults)."""
    groups = groups or parse_groups()
    data = extract(model, cache, rows, desc="evaluating")
    checked = np.array([str(i) not in calibrated for i in data["id"]])
    features, present = torch.from_numpy(data["features"]), torch.from_numpy(data["present"])
    with torch.no_grad():
        out = model.predict(features, present)
    fused = {"age": out["age"].numpy(), "gender_female": out["gender_female"].numpy(),
             "age_low": out["age_low"].numpy(), "age_high": out["age_high"].numpy(),
             "groups": group_probabilities(out["age_probabilities"].numpy(), groups)}
    result = {"fused": {**age_report(data["age"], fused["age"], data["race"]),
                        "gender": gender_report(data["gender"], fused["gender_female"]),
                        "interval_coverage": interval_coverage(data["age"][checked], out["age_low"].numpy()[checked],
                                                               out["age_high"].numpy()[checked])
                        if checked.any() else None,
                        "interval_checked_faces": int(checked.sum()),
                        "interval": model.interval,
                        "age_groups": group_report(data["age"], fused["groups"], groups)}}
    for i, region in enumerate(model.regions):
        have = data["present"][:, i]
        block = data["features"][have, i]
        result[region] = {**age_report(data["age"][have], model.block.age(block), data["race"][have]),
                          "gender": gender_report(data["gender"][have],
                                                  1 / (1 + np.exp(-model.block.gender_logit(block))))}
    return result, data, fused


def write_predictions(path: Path, model, rows: list[dict], data: dict, fused: dict, groups: list[Group]) -> None:
    """One line per face: its label, the fused model's estimate (the fields of
    agefuse-predict's records) and each branch's own age (empty where its crop is missing)."""
    source = {r["id"]: r["source"] for r in rows}
    branch_ages = model.block.age(data["features"])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "source", "age", "predicted_age", "age_low", "age_high", "gender", "p_female",
                         *(f"age_{region}" for region in model.regions), *(f"p_{g.name}" for g in groups)])
        for i, image_id in enumerate(data["id"]):
            gender = int(data["gender"][i])
            writer.writerow([image_id, source[str(image_id)], f"{data['age'][i]:g}", f"{fused['age'][i]:.2f}",
                             f"{fused['age_low'][i]:g}", f"{fused['age_high'][i]:g}",
                             "" if gender < 0 else gender, f"{fused['gender_female'][i]:.4f}",
                             *(f"{age:.2f}" if data["present"][i, r] else "" for r, age in enumerate(branch_ages[i])),
                             *(f"{p:.4f}" for p in fused["groups"][i])])


def markdown(result: dict, counts: dict) -> str:
    columns = list(result)
    rows = [("age MAE", "mae", "{:.2f}"), ("age MSE", "mse", "{:.1f}"), ("age R²", "r2", "{:.3f}"),
            ("CS@5", "cs5", "{:.1%}"), ("worst decade MAE", "worst_decade_mae", "{:.2f}")]
    lines = [f"| figure | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt.format(result[c][key]) for c in columns) + " |")
    for label, key in (("gender accuracy", "accuracy"), ("gender precision (F)", "precision"),
                       ("gender recall (F)", "recall"), ("gender F1 (F)", "f1")):
        lines.append(f"| {label} | " + " | ".join(f"{result[c]['gender'][key]:.1%}" for c in columns) + " |")
    for group, label in (("minors", "minors (<18)"), ("adults", "adults (18+)")):
        for key in ("precision", "recall"):
            lines.append(f"| {label} {key} | " +
                         " | ".join(f"{result[c][group][key]:.1%}" for c in columns) + " |")
    decades = result["fused"]["mae_by_decade"]
    lines += ["", "MAE per age decade:", "", "| decade | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    for decade in decades:
        lines.append(f"| {decade} | " + " | ".join(
            f"{result[c]['mae_by_decade'].get(decade, float('nan')):.2f}" for c in columns) + " |")
    if "mae_by_race" in result["fused"]:
        lines += ["", "MAE per race:", "", "| race | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for race in result["fused"]["mae_by_race"]:
            lines.append(f"| {race} | " + " | ".join(
                f"{result[c]['mae_by_race'].get(race, float('nan')):.2f}" for c in columns) + " |")
    lines += ["", group_lines(result["fused"]["age_groups"])]
    confusion = result["fused"]["gender"]["confusion"]
    lines += ["", f"Fused gender confusion (rows true, columns predicted; male, female): {confusion}",
              interval_line(result["fused"]),
              "", "Images: " + ", ".join(f"{k} {v}" for k, v in counts.items() if not isinstance(v, list))]
    return "\n".join(lines) + "\n"


def group_lines(report: dict) -> str:
    names = list(report["per_group"])
    lines = [f"Age groups {', '.join(report['groups'])}: exact accuracy {report['exact_accuracy']:.1%}, one-off "
             f"{report['one_off_accuracy']:.1%} (the most probable group; one-off: a neighbouring group "
             "counts too).", "",
             "| group | precision | recall | faces | calibration error (ECE) of P(group) |", "|---|---|---|---|---|"]
    for name in names:
        g = report["per_group"][name]
        lines.append(f"| {name} | {g['precision']:.1%} | {g['recall']:.1%} | {g['support']} | {g['ece']:.3f} |")
    lines += ["", "Group confusion (rows true, columns predicted; " + ", ".join(names) + f"): {report['confusion']}"]
    return "\n".join(lines)


def interval_line(fused: dict) -> str:
    checked = fused["interval_checked_faces"]
    if not checked:
        return "Interval coverage: n/a (every face here was used to fit the interval)."
    return (f"Fused {100 * fused['interval_coverage']:.1f}% of true ages inside the stated "
            f"{100 * fused.get('interval', 0.8):.0f}% interval "
            f"({checked} faces" + (", those the interval was not fitted on)." if checked < fused["n"] else ")."))


def plots(data: dict, fused: dict, result: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    true, predicted = data["age"], fused["age"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, predicted, s=4, alpha=0.4)
    ax.plot([0, 100], [0, 100], "k--", lw=0.8)
    ax.set(xlabel="true age", ylabel="predicted age", title=f"fused: MAE {result['fused']['mae']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_true.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in result:
        decades = result[name]["mae_by_decade"]
        ax.plot(list(decades), list(decades.values()), "o-" if name == "fused" else ".--",
                lw=2 if name == "fused" else 1, label=name)
    ax.set(xlabel="true age decade", ylabel="MAE (years)", title="error by age")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "error_by_age.png", dpi=100)
    plt.close(fig)

    confusion = np.array(result["fused"]["gender"]["confusion"])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], ["male", "female"])
    ax.set_yticks([0, 1], ["male", "female"])
    ax.set(xlabel="predicted", ylabel="true", title="gender (fused)")
    fig.tight_layout()
    fig.savefig(out / "gender_confusion.png", dpi=100)
    plt.close(fig)

    report = result["fused"]["age_groups"]
    names = list(report["per_group"])
    confusion = np.array(report["confusion"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(names), 1.2 + 1.0 * len(names)))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted (most probable)", ylabel="true", title="age groups (fused)")
    fig.tight_layout()
    fig.savefig(out / "group_confusion.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    for name in names:
        bins = report["per_group"][name]["bins"]
        ax.plot([b["stated"] for b in bins], [b["observed"] for b in bins], "o-",
                label=f"P({name}), ECE {report['per_group'][name]['ece']:.3f}")
    ax.set(xlabel="stated probability", ylabel="observed frequency", title="reliability of the group probabilities",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    model, state = load_fused(args.model)  # first: a file that is no model leaves nothing behind
    model_name = args.model or "the installed model"
    if args.cache:
        check_cache_fits(model, args.cache, model_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else prepare_folder(args, model, out)
    split = args.split if args.cache else "all"
    every = manifest.load(cache)
    chosen = [r for r in every if split == "all" or r["split"] == split]
    if chosen and not any(r.get("age") is not None for r in chosen):
        raise SystemExit(f"error: {cache} has no labels to evaluate against (a label-free cache): agefuse-predict "
                         f"estimates its faces; give --labels to evaluate")
    rows, counts = image_counts(chosen, args.fallback)
    if not rows:
        raise SystemExit(f"error: nothing to evaluate in {cache} ({split} split)")
    calibration = state.get("summary", {}).get("calibration", {})
    # the faces the interval was fitted on: the hashed half of the validation split of the
    # cache the model was trained on (another cache's faces were never seen)
    same_cache = args.cache and str(Path(args.cache).resolve()) == calibration.get("cache")
    calibrated = ({r["id"] for r in rows if in_calibration_half(r["id"])}
                  if same_cache and split == "val" and calibration.get("split") == "val" else set())
    result, data, fused = evaluate_rows(model, cache, rows, calibrated, args.groups)
    (out / "evaluation.json").write_text(json_text({"images": counts, "results": result, "model": model_name,
                                                     "source": str(cache), "split": split}, indent=1))
    write_predictions(out / "predictions.csv", model, rows, data, fused, args.groups)
    table = markdown(result, counts)
    (out / "evaluation.md").write_text(table)
    plots(data, fused, result, out)
    print(table)
    for source in counts["whole_image_files"]:
        print(f"no face found: {source} (a chip-like image: scored from the whole image)")
    for source in counts["missed_files"]:
        print(f"no face found: {source} (a miss: not evaluated)")
    for line in counts["unreadable_files"]:
        print(f"not evaluated: {line}")
    readable = counts["faces found"] + counts["no face found"]
    print(f"faces found in {counts['faces found']} of {readable} readable images"
          + (f" ({100 * counts['found_rate']:.1f}%)" if readable else "")
          + f"; {counts['missed (not scored)']} missed, {counts['of which scored from the whole image']} chip-like "
            f"image(s) scored from the whole image")
    cut = manifest.cut_short(cache / manifest.MANIFEST)
    print(f"wrote {out / 'evaluation.json'}, evaluation.md, predictions.csv, predicted_vs_true.png, error_by_age.png, "
          f"gender_confusion.png, group_confusion.png, reliability.png")
    if cut:
        print(f"1 row of {cache / manifest.MANIFEST} was cut short (named above) and not evaluated", file=sys.stderr)
    return 1 if cut else 0


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
