"""agefuse-audit: which labels of a data set look wrong to a model, for a person to review.

    agefuse-audit --cache runs/utk [--model runs/fused/fused.pt] --out runs/audit [--top 30]

Scores every labelled face of the cache (``--split``, default all) with the fused model (the
installed one without ``--model``): how many years its age label lies outside the model's
age interval, and how sure the model is of the other gender. Both become one suspicion in
0..1 (``age_outside / 15`` years, capped at 1; ``2 P(other gender) - 1``), the larger of the two.
Writes ``suspects.csv`` (every face, most suspect first), ``suspects.png`` (a contact sheet of
the ``--top`` suspects: crop, label, prediction) and ``leaks.csv`` (near-duplicate pictures
that sit in different splits: the same person in train and validation inflates a score).

It never changes a label. Review the suspects; put the ids you find wrong, one per line (or
the CSV with its ``id`` column, trimmed), in a file and rebuild the cache without them with
``agefuse-regions ... --exclude FILE``, or fix their labels and rerun agefuse-regions.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from agefuse.cli import HelpFormatter, existing_file, int_at_least, output_folder, run_command
from agefuse.regions import manifest, near_duplicates

from .features import extract, read_crops
from .inference import check_cache_fits
from .model import load_fused

AGE_SCALE = 15.0  # years outside the interval that make a label fully suspect


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Rank a data set's labels by how wrong they look to a model.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--cache", required=True,
                        help="a regions cache (a label-free one gets its near duplicates listed only)")
    parser.add_argument("--model", default=None, type=existing_file,
                        help="fused.pt (default: the UTKFace model installed with agefuse)")
    parser.add_argument("--out", required=True, type=output_folder, help="folder for suspects.csv/png, leaks.csv")
    parser.add_argument("--split", default="all", choices=[*manifest.SPLITS, "all"])
    parser.add_argument("--top", type=int_at_least(1), default=30, help="suspects on the contact sheet")
    parser.add_argument("--duplicate-bits", type=int_at_least(0), default=4,
                        help="near duplicates: perceptual hashes at most this many bits apart (of 64)")
    return parser


def suspicion(label_low, label_high, gender, low, high, female) -> dict[str, np.ndarray]:
    """Per face: years the label lies outside the interval, P(the other gender) (0 where the
    gender is unknown) and the suspicion, the larger of the two scaled to 0..1."""
    outside = np.maximum(np.maximum(label_low - high, low - label_high), 0.0)
    other = np.where(gender == 1, 1 - female, np.where(gender == 0, female, 0.0))
    score = np.maximum(np.minimum(outside / AGE_SCALE, 1.0), np.maximum(2 * other - 1, 0.0))
    return {"age_outside": outside, "p_other_gender": other, "suspicion": score}


def contact_sheet(cache: Path, rows: list[dict], table: list[dict], path: Path, columns: int = 6) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_id = {r["id"]: r for r in rows}
    count = len(table)
    lines = max(1, -(-count // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(2.3 * columns, 2.9 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, entry in zip(axes.flat, table):
        crops = read_crops(cache, by_id[entry["id"]])
        image = crops.get("original") if crops.get("original") is not None else crops.get("face")
        if image is not None:
            ax.imshow(image)
        ax.set_title(f"#{entry['rank']} {entry['id'][:18]}\nlabel {entry['label_age']} {entry['label_gender']}\n"
                     f"model {entry['age']:.0f} ({entry['age_low']:.0f}-{entry['age_high']:.0f}) "
                     f"{'F' if entry['p_female'] >= 0.5 else 'M'} {max(entry['p_female'], 1 - entry['p_female']):.0%}",
                     fontsize=7, color="darkred" if entry["suspicion"] >= 0.5 else "black")
    fig.suptitle(f"the {count} most suspect labels (review them; nothing was changed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_leaks(rows: list[dict], bits: int, path: Path) -> list[tuple]:
    """Near-duplicate pairs in different splits (a leak), or, in a label-free cache with no
    splits, all of them (the same picture twice); written to ``path``."""
    rows = [r for r in rows if r.get("phash")]
    leaks = [(rows[i], rows[j], apart) for i, j, apart in near_duplicates(rows, bits)
             if rows[i]["split"] != rows[j]["split"] or rows[i]["split"] is None]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id_a", "split_a", "id_b", "split_b", "bits_apart"])
        writer.writerows([a["id"], a["split"], b["id"], b["split"], apart] for a, b, apart in leaks)
    return leaks


def main(args: argparse.Namespace) -> int:
    model, _ = load_fused(args.model)
    cache, out = Path(args.cache), Path(args.out)
    check_cache_fits(model, cache, args.model or "the installed model")  # other pixels: every label would look wrong
    every = [r for r in manifest.load(cache) if r["status"] != "rejected"]
    rows = [r for r in every if r.get("age") is not None and (args.split == "all" or r["split"] == args.split)]
    if not every:
        raise ValueError(f"{cache}: no cached faces to audit")
    out.mkdir(parents=True, exist_ok=True)
    leaks = write_leaks(every, args.duplicate_bits, out / "leaks.csv")
    if not rows:
        if any(r.get("age") is not None for r in every):
            raise ValueError(f"{cache}: no labelled faces in the {args.split} split to audit")
        print(f"{cache} is label-free: no labels to check; {len(leaks)} near-duplicate pairs "
              f"(the same picture twice) -> {out / 'leaks.csv'}")
        return 0
    data = extract(model, cache, rows, desc="auditing")
    with torch.no_grad():
        predicted = model.predict(torch.from_numpy(data["features"]), torch.from_numpy(data["present"]))
    low, high = predicted["age_low"].numpy(), predicted["age_high"].numpy()
    label_low = np.array([(r.get("age_range") or [r["age"]] * 2)[0] for r in rows], float)
    label_high = np.array([(r.get("age_range") or [r["age"]] * 2)[1] for r in rows], float)
    # the model says no age over its last year (100): an older label is judged as that year
    top = float(model.ages.max())
    label_low, label_high = np.minimum(label_low, top), np.minimum(label_high, top)
    female = predicted["gender_female"].numpy()
    scores = suspicion(label_low, label_high, data["gender"], low, high, female)
    # fully suspect faces (score 1) are many: the furthest off, in years and in gender, first
    order = np.lexsort((-(scores["age_outside"] / AGE_SCALE + scores["p_other_gender"]), -scores["suspicion"]))
    table = []
    for rank, i in enumerate(order, start=1):
        row = rows[i]
        table.append({"rank": rank, "id": row["id"], "source": row["source"], "split": row["split"],
                      "label_age": (f"{label_low[i]:g}" if label_low[i] == label_high[i]
                                    else f"{label_low[i]:g}-{label_high[i]:g}"),
                      "label_gender": {0: "M", 1: "F"}.get(row["gender"], "?"),
                      "age": float(predicted["age"][i]), "age_low": float(low[i]), "age_high": float(high[i]),
                      "p_female": float(female[i]), "age_outside": float(scores["age_outside"][i]),
                      "p_other_gender": float(scores["p_other_gender"][i]), "suspicion": float(scores["suspicion"][i])})
    with (out / "suspects.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in entry.items()} for entry in table)
    contact_sheet(cache, rows, table[:args.top], out / "suspects.png")


    flagged = int((scores["suspicion"] >= 0.5).sum())
    print(f"{len(rows)} labelled faces audited; {flagged} with a suspicion of 0.5 or more "
          f"(age label over {AGE_SCALE / 2:g} years outside the interval, or the model 75% sure of the other gender)")
    for entry in table[:min(args.top, 10)]:
        print(f"  #{entry['rank']:<3} {entry['id']}: label {entry['label_age']} {entry['label_gender']}, model "
              f"{entry['age']:.0f} ({entry['age_low']:.0f}-{entry['age_high']:.0f}) "
              f"{'F' if entry['p_female'] >= 0.5 else 'M'} {max(entry['p_female'], 1 - entry['p_female']):.0%}")
    print(f"{len(leaks)} near-duplicate pairs across splits (a leak: fix by moving or excluding one of each) -> "
          f"{out / 'leaks.csv'}")
    print(f"wrote {out / 'suspects.csv'}, {out / 'suspects.png'}; no label was changed: review them, then "
          f"agefuse-regions ... --exclude FILE (ids one per line)")
    if manifest.cut_short(cache / manifest.MANIFEST):
        print(f"1 row of {cache / manifest.MANIFEST} was cut short (named above) and not audited", file=sys.stderr)
        return 1
    return 0


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
