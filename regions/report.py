"""agefuse-report: look at a cache before training on it.

    agefuse-report CACHE --out REPORT_DIR

Writes PNG plots (age histogram, gender and race counts, train vs validation age
distributions, near-duplicate pairs) and ``report.json`` with the same numbers and the
near-duplicate file names. Needs no image decoding but for the duplicate pairs shown:
the perceptual hashes are in the manifest.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from agefuse.cli import HelpFormatter, int_at_least, json_text, output_folder, run_command

from . import manifest
from .labels import GENDERS, RACES


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Exploratory report of a regions cache: PNG plots and report.json.",
        add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("cache", help="a cache written by agefuse-regions")
    parser.add_argument("--out", required=True, type=output_folder, help="folder for the PNGs and report.json")
    parser.add_argument("--max-distance", type=int_at_least(0, 64), default=4,
                        help="near duplicates: perceptual hashes at most this many bits apart (of 64)")
    parser.add_argument("--show-pairs", type=int_at_least(0), default=8,
                        help="near-duplicate pairs drawn in near_duplicates.png")
    return parser


def near_duplicates(rows: list[dict], max_distance: int, block: int = 2048) -> list[tuple[int, int, int]]:
    """``(i, j, bits)`` for every pair of rows whose hashes differ in at most ``max_distance``
    bits; all pairs compared, in blocks to bound memory."""
    hashes = np.array([int(r["phash"], 16) for r in rows], dtype=np.uint64)
    pairs = []
    for start in range(0, len(hashes), block):
        distance = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(distance <= max_distance)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(distance[i, j])))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def statistics(rows: list[dict], groups: list[manifest.AgeGroup]) -> dict:
    """The numbers behind the plots."""
    ages = Counter(r["age"] for r in rows)
    by_split = {s: Counter(r["age"] for r in rows if r["split"] == s) for s in manifest.SPLITS}
    group_split = {g.label: {s: sum(1 for r in rows if r["age_group"] == g.label and r["split"] == s)
                             for s in manifest.SPLITS} for g in groups}
    return {
        "images": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "age_histogram": {str(a): ages[a] for a in sorted(ages)},
        "age_groups": {g.label: sum(v.values()) for g, v in zip(groups, group_split.values())},
        "gender": {GENDERS.get(k, "unknown"): v for k, v in
                   sorted(Counter(r["gender"] for r in rows).items(), key=lambda kv: str(kv[0]))},
        "race": {RACES.get(k, "unknown"): v for k, v in
                 sorted(Counter(r["race"] for r in rows).items(), key=lambda kv: str(kv[0]))},
        "split_age_histograms": {s: {str(a): c[a] for a in sorted(c)} for s, c in by_split.items()},
        "split_by_age_group": group_split,
        "mean_age": {s: round(float(np.mean([r["age"] for r in rows if r["split"] == s])), 2)
                     for s in manifest.SPLITS if by_split[s]},
    }


def plot_ages(stats: dict, groups: list[manifest.AgeGroup], out: Path) -> None:
    import matplotlib.pyplot as plt
    ages = {int(k): v for k, v in stats["age_histogram"].items()}
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(list(ages), list(ages.values()), width=1.0, color="#4878a8")
    for group in groups[1:]:
        ax.axvline(group.low - 0.5, color="grey", lw=0.6, ls="--")
    top = max(ages.values())
    for group in groups:
        middle = (group.low + (group.high if group.high is not None else max(ages))) / 2
        ax.text(middle, top * 1.02, f"{group.label}\n{stats['age_groups'][group.label]}",
                ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="age (years)", ylabel="images", ylim=(0, top * 1.18),
           title=f"Age histogram ({stats['images']} images; dashed lines: age groups)")
    fig.tight_layout()
    fig.savefig(out / "age_histogram.png", dpi=110)
    plt.close(fig)


def plot_gender_race(stats: dict, out: Path) -> None:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=[1, 2])
    for ax, key, color in zip(axes, ("gender", "race"), ("#d08050", "#60a060")):
        names, counts = list(stats[key]), list(stats[key].values())
        bars = ax.bar(names, counts, color=color)
        ax.bar_label(bars, labels=[f"{c}\n{100 * c / sum(counts):.0f}%" for c in counts], fontsize=8)
        ax.set(title=key, ylabel="images", ylim=(0, max(counts) * 1.25))
    fig.tight_layout()
    fig.savefig(out / "gender_race.png", dpi=110)
    plt.close(fig)


def plot_splits(stats: dict, groups: list[manifest.AgeGroup], out: Path) -> None:
    """Train vs validation: the same shape means the validation MAE speaks for training ages."""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for split, color in zip(("train", "val", "test"), ("#4878a8", "#d04040", "#909090")):
        hist = {int(k): v for k, v in stats["split_age_histograms"][split].items()}
        total = sum(hist.values())
        if not total:
            continue
        edges = np.arange(0, max(hist) + 6, 5)  # 5-year bins: single years are too noisy
        counts, _ = np.histogram(list(hist), bins=edges, weights=list(hist.values()))
        left.stairs(counts / total, edges, color=color, label=f"{split} ({total})",
                    lw=1.6 if split != "test" else 0.8)
    left.set(xlabel="age (years, 5-year bins)", ylabel="share of the split",
             title="Age distribution by split")
    left.legend()
    labels = [g.label for g in groups]
    x = np.arange(len(labels))
    for offset, split, color in ((-0.2, "train", "#4878a8"), (0.2, "val", "#d04040")):
        counts = np.array([stats["split_by_age_group"][g][split] for g in labels], float)
        right.bar(x + offset, counts / max(counts.sum(), 1), width=0.4, color=color, label=split)
    right.set_xticks(x, labels)
    right.set(xlabel="age group", ylabel="share of the split",
              title="Train vs validation per age group (stratified)")
    right.set_ylim(0, right.get_ylim()[1] * 1.2)
    right.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "split_ages.png", dpi=110)
    plt.close(fig)


def plot_duplicates(rows: list[dict], pairs: list, cache: Path, out: Path, count: int) -> None:
    import cv2
    import matplotlib.pyplot as plt
    shown = pairs[:count]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 2, figsize=(6, 3 * len(shown)), squeeze=False)
    for (i, j, bits), pair_axes in zip(shown, axes):
        for index, ax in zip((i, j), pair_axes):
            image = cv2.imread(str(cache / rows[index]["crops"]["original"]))
            if image is not None:
                ax.imshow(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            ax.set_title(f"{Path(rows[index]['source']).name}\nage {rows[index]['age']}, "
                         f"{bits} bits apart", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "near_duplicates.png", dpi=90)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    cache, out = Path(args.cache), Path(args.out)
    settings = json.loads((cache / manifest.SETTINGS).read_text())
    groups = manifest.parse_age_groups(settings["age_groups"])
    rows = [r for r in manifest.load(cache) if r["status"] != "rejected"]
    if not rows:
        raise SystemExit(f"error: {cache} has no cached images to report on")
    if all(r.get("age") is None for r in rows):
        raise SystemExit(f"error: {cache} is a label-free cache: no ages, genders or splits to report on "
                         f"(agefuse-audit lists its near duplicates; agefuse-predict estimates its faces)")
    rows = [r for r in rows if r.get("age") is not None]
    out.mkdir(parents=True, exist_ok=True)
    stats = statistics(rows, groups)
    pairs = near_duplicates(rows, args.max_distance)
    stats["near_duplicates"] = {
        "max_distance_bits": args.max_distance, "pairs": len(pairs),
        "list": [{"a": rows[i]["source"], "b": rows[j]["source"], "bits": bits,
                  "ages": [rows[i]["age"], rows[j]["age"]], "splits": [rows[i]["split"], rows[j]["split"]]}
                 for i, j, bits in pairs]}
    stats["near_duplicates"]["across_train_and_val_or_test"] = sum(
        1 for i, j, _ in pairs if rows[i]["split"] != rows[j]["split"])
    plot_ages(stats, groups, out)
    plot_gender_race(stats, out)
    plot_splits(stats, groups, out)
    plot_duplicates(rows, pairs, cache, out, args.show_pairs)
    (out / "report.json").write_text(json_text(stats, indent=2))
    print(f"{out}: report of {len(rows)} images from {cache}")
    print("  age groups : " + ", ".join(f"{k} {v}" for k, v in stats["age_groups"].items()))
    print("  gender     : " + ", ".join(f"{k} {v}" for k, v in stats["gender"].items()))
    print("  race       : " + ", ".join(f"{k} {v}" for k, v in stats["race"].items()))
    print("  mean age   : " + ", ".join(f"{k} {v}" for k, v in stats["mean_age"].items()))
    print(f"  near duplicates (<= {args.max_distance} bits): {len(pairs)} pairs, "
          f"{stats['near_duplicates']['across_train_and_val_or_test']} of them across splits")
    print("  wrote " + ", ".join(sorted(p.name for p in out.glob("*.png"))) + ", report.json")
    return 0


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
