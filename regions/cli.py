"""agefuse-regions: face photos in, a cache of region crops grouped by age group out.

    agefuse-regions SOURCE --cache CACHE [--labels labels.csv] [--workers 2] [--shard K/N]

Reads the images under SOURCE (labels from UTKFace names, or from ``--labels``), finds each
face and its 68 landmarks with dlib, and writes ``CACHE/<age_group>/<region>/<id>.<ext>``
for the regions original, face (aligned), left_eye, right_eye and mouth, plus
``CACHE/manifest.jsonl``. Run again, it does only what is missing.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from agefuse.cli import (
    HelpFormatter,
    checked,
    existing_file,
    float_in,
    int_at_least,
    json_text,
    output_folder,
    run_command,
)
from agefuse.files import atomic_write, write_error

from . import crop, labels, manifest
from .landmarks import DETECTORS, FRAMINGS
from .pipeline import (
    ENCODINGS,
    Settings,
    crop_path,
    frame_count,
    is_complete,
    process_image,
    remove_stale_temporaries,
)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Detect faces and landmarks, crop the regions, cache them by age group.",
        add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("source", help="folder of face images (UTKFace names give the labels)")
    parser.add_argument("--cache", required=True, type=output_folder, help="output folder of crops and manifest")
    parser.add_argument("--labels", default=None,
                        help="labels file instead of UTKFace names: a CSV path,age[,gender] (an age is 34 or a "
                             "range 25-32), or with --labels-format adience a fold_*_data.txt (or their folder)")
    parser.add_argument("--labels-format", choices=labels.LABEL_FORMATS, default="auto",
                        help="auto: the CSV when --labels is given, else UTKFace names, else label-free (a "
                             "cache for prediction and audit: no age groups, no split); none: label-free")
    parser.add_argument("--detector", choices=DETECTORS, default=Settings.detector,
                        help="hog: dlib's HOG (fast, frontal faces); cnn: dlib's MMOD CNN (pose and light); haar: "
                             "OpenCV's Haar cascade; mtcnn: MTCNN (small and turned faces). README: which when")
    parser.add_argument("--framing", choices=FRAMINGS, default=Settings.framing,
                        help="hog: every crop framed on HOG's own box (another detector's mapped to it), as "
                             "caches were made before this option; landmarks: on a box framed from the 68 "
                             "landmarks whatever the detector, so every detector gives the same crops")
    parser.add_argument("--upsample", type=int_at_least(0), default=Settings.upsample,
                        help="times to enlarge the image before detection (finds smaller faces)")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="reject images with no detected face instead of using the whole "
                             "image (the fallback suits already-cropped faces)")
    parser.add_argument("--fallback-inset", type=float_in(0, 0.45), default=Settings.fallback_inset,
                        help="margin of the whole-image fallback box, as a fraction of the side")
    for name in crop.CROP_NAMES:
        width, height = crop.DEFAULT_SIZES[name]
        parser.add_argument(f"--{name.replace('_', '-')}-size", type=checked(crop.parse_size),
                            default=f"{width}x{height}", help=f"{name} crop size, N or WxH")
    parser.add_argument("--ext", choices=sorted(ENCODINGS), default=Settings.ext, help="crop file format")
    parser.add_argument("--age-groups", default=manifest.DEFAULT_AGE_GROUPS,
                        help="contiguous age groups, the cache's top-level folders")
    parser.add_argument("--split", type=checked(manifest.parse_split),
                        default="/".join(f"{100 * share:g}" for share in Settings.split),
                        help="train/val/test proportions, stratified by age group")
    parser.add_argument("--seed", type=int, default=Settings.seed, help="seed of the split")
    parser.add_argument("--workers", type=int_at_least(1), default=2, help="processes (1 = no pool)")
    parser.add_argument("--shard", type=checked(manifest.parse_shard), default="0/1",
                        help="process only share K of N (0-based); merge with agefuse-regions-merge")
    parser.add_argument("--limit", type=int_at_least(1), default=None,
                        help="process at most this many images of the share (for a quick look)")
    parser.add_argument("--exclude", default=None, type=existing_file,
                        help="a file of image ids (or paths) to leave out, one per line: what agefuse-audit "
                             "found wrong (a CSV with an 'id' column works too)")
    parser.add_argument("--retry-rejected", action="store_true",
                        help="try again the images an earlier run rejected")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    manifest.parse_age_groups(args.age_groups)  # fail early on a bad definition
    sizes = {name: getattr(args, f"{name}_size") for name in crop.CROP_NAMES}
    return Settings(detector=args.detector, upsample=args.upsample, framing=args.framing, fallback=args.fallback,
                    fallback_inset=args.fallback_inset, sizes=sizes, ext=args.ext,
                    age_groups=args.age_groups, split=tuple(args.split), seed=args.seed)


def check_settings(cache: Path, settings: Settings) -> None:
    """A cache holds crops of one set of settings: mixing two would be silent corruption."""
    path = cache / manifest.SETTINGS
    if path.is_file():
        # a cache.json from before --framing was made in the hog framing
        recorded = {"framing": "hog", **json.loads(path.read_text())}
        differ = {k: (recorded.get(k), v) for k, v in settings.to_json().items()
                  if recorded.get(k) != v}
        if differ:
            lines = ", ".join(f"{k}: cache has {old!r}, asked {new!r}" for k, (old, new) in differ.items())
            raise SystemExit(f"error: {cache} was made with other settings ({lines}); "
                             f"use another --cache or the same options")
    else:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_bytes(json.dumps(settings.to_json(), indent=2).encode())


def same_labels(row: dict, item, group: str) -> bool:
    """Whether a cached row was made from the labels (and age group) the source now gives.
    Where the image lies is not a label: a moved folder keeps its crops."""
    recorded = row.get("age_range")
    return (row.get("age"), row.get("gender"), row.get("race"), row.get("age_group"),
            tuple(recorded) if recorded else None) == (item.age, item.gender, item.race, group, item.age_range)


def remove_crops(row: dict, cache: Path) -> None:
    for rel in row.get("crops", {}).values():
        (cache / rel).unlink(missing_ok=True)


def _work(task):
    item, group, cache, settings = task
    return process_image(item, group, cache, settings)


def _ignore_sigint():
    # Ctrl-C reaches every process of the group; the parent alone decides what to do
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    cache = Path(args.cache)
    if cache.resolve() == Path(args.source).resolve():
        raise SystemExit(f"error: --cache {cache} is the source folder itself: name a folder of its own "
                         f"(inside it is fine)")
    settings = settings_from(args)
    check_settings(cache, settings)
    remove_stale_temporaries(cache)

    # labels, age groups and the split come from the whole data set, whatever the shard
    items, problems = labels.collect(args.source, args.labels, args.labels_format)
    found = len(items)
    if args.exclude:
        items, excluded = labels.exclude(items, args.exclude)
        problems += excluded
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    for item in items:  # said, so nobody thinks the animation was watched
        if item.path.lower().endswith(".gif") and (frames := frame_count(item.path)) > 1:
            print(f"{item.path}: an animated GIF of {frames} frames: its first frame is read", file=sys.stderr)
    with atomic_write(cache / manifest.LABEL_PROBLEMS) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows([p.path, p.reason] for p in problems)
    if not items:
        reason = (f"all {found} image(s) are excluded by {args.exclude}" if found
                  else f"every image or row was skipped ({len(problems)}, named above)" if problems
                  else f"{args.labels} has no rows" if args.labels else f"no images under {args.source}")
        raise SystemExit(f"error: {reason}; nothing was cached")
    if all(item.age is None for item in items):
        print(f"{args.source}: no labels (no UTKFace names, no --labels): a label-free cache, for prediction "
              f"and audit; its images are in {manifest.UNLABELLED}/, with no split", file=sys.stderr)
    groups = manifest.parse_age_groups(settings.age_groups)
    group_of = {item.id: manifest.UNLABELLED if item.age is None else manifest.age_group(item.age, groups)
                for item in items}
    by_group: dict[str, list[str]] = {}
    for image_id, group in group_of.items():
        if group != manifest.UNLABELLED:
            by_group.setdefault(group, []).append(image_id)
    subject_of = {item.id: item.subject for item in items if item.subject is not None}
    split = manifest.assign_split(by_group, settings.seed, settings.split,
                                  subject_of if len(subject_of) == len(items) else None)

    share = [item for item in items if manifest.in_shard(item.id, args.shard)]
    path = cache / manifest.manifest_name(args.shard)
    wanted = {item.id: item for item in share}
    previous = manifest.read_rows(path)
    for row in previous:  # an image no longer asked for (excluded, or gone from the labels): its crops go
        if row["id"] not in wanted:
            remove_crops(row, cache)
    previous = [row for row in previous if row["id"] in wanted]
    # a label fixed since the last run: the row is made again, its crops under the new age group
    relabelled = {row["id"] for row in previous if not same_labels(row, wanted[row["id"]], group_of[row["id"]])}
    for row in previous:
        if row["id"] in relabelled:
            remove_crops(row, cache)
    def unread_then_moved(row: dict) -> bool:  # read again from where the image is now
        return row["status"] == "rejected" and "width" not in row and str(row["source"]) != str(wanted[row["id"]].path)
    kept = [row for row in previous if row["id"] not in relabelled and is_complete(row, cache)
            and not (args.retry_rejected and row["status"] == "rejected") and not unread_then_moved(row)]
    for row in kept:  # the split is the whole set's: a moved label can move others' split
        row["split"] = split.get(row["id"])
        row["source"] = wanted[row["id"]].path
    done = {row["id"] for row in kept}
    manifest.write_rows(path, kept)  # drops rows cut short, stale, relabelled or to be redone
    todo = [item for item in share if item.id not in done][: args.limit]
    print(f"{len(share)} images in share {args.shard[0]}/{args.shard[1]}: "
          f"{len(done)} already cached, {len(todo)} to process"
          + (f" ({len(relabelled)} relabelled since the last run: made again)" if relabelled else ""), file=sys.stderr)

    rows = list(kept)
    tasks = [(item, group_of[item.id], str(cache), settings) for item in todo]
    interrupted, failed = False, None
    pool = None
    with path.open("ab", buffering=0) as out:
        try:
            if args.workers > 1 and len(tasks) > 1:
                pool = multiprocessing.get_context("fork").Pool(args.workers, _ignore_sigint)
                results = pool.imap_unordered(_work, tasks, chunksize=8)
            else:
                results = map(_work, tasks)
            for row in tqdm(results, total=len(tasks), desc="regions", unit="img",
                            disable=None, dynamic_ncols=True):
                row["split"] = split.get(row["id"])
                if row["status"] == "rejected":
                    tqdm.write(f"skipped {row['source']}: {row['reason']}", file=sys.stderr)
                append_row(out, path, row)
                rows.append(row)
        except KeyboardInterrupt:
            interrupted = True
        except OSError as err:  # a full disk, a file size limit: a crop's or the manifest's write
            failed = write_error(path, err)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    if failed:
        listed = {row["id"] for row in rows}
        unlisted = [item for item in todo if item.id not in listed]
        return stop_on_write_error(failed, cache, settings, unlisted, group_of, len(rows) - len(kept))
    elapsed = time.perf_counter() - start
    processed = len(rows) - len(kept)
    if interrupted:
        print(f"\ninterrupted after {processed} images; the cache is consistent: run the same "
              f"command again to finish the remaining {len(todo) - processed}", file=sys.stderr)
        return 130
    manifest.write_rows(path, rows)
    summary = summarize(rows, problems, processed, elapsed)
    shard = "" if args.shard[1] == 1 else f".shard-{args.shard[0]}-of-{args.shard[1]}"
    with atomic_write(cache / f"summary{shard}.json") as tmp:
        tmp.write_bytes(json_text(summary, indent=2).encode())
    print_summary(summary, path)
    conflicts = sum(problem.conflict for problem in problems)
    if conflicts:  # the labels contradict themselves: the user must choose, so the run says it failed
        print(f"{conflicts} image(s) listed again with another label (named above) were left out; every other image "
              f"is cached", file=sys.stderr)
    # an image that could not be read at all (not one without a face) is an input failure
    unreadable = [r for r in rows if r["status"] == "rejected" and "width" not in r]
    if unreadable:
        for row in [r for r in unreadable if r["id"] in done][:10]:  # this run named the others as it met them
            print(f"  unreadable (since an earlier run): {row['source']}: {row['reason']}", file=sys.stderr)
        print(f"{len(unreadable)} image(s) could not be read; every other image is cached"
              f"{'' if args.retry_rejected else ' (once they are fixed, --retry-rejected reads them again)'}",
              file=sys.stderr)
        return 1
    return 1 if conflicts else 0


def append_row(out, path: Path, row: dict) -> None:
    """One manifest line appended whole or not at all: a write that fails part way (a full
    disk) is cut back off, so the manifest ends on a whole row."""
    data = memoryview((json.dumps(row, separators=(",", ":")) + "\n").encode())
    start = out.tell()
    try:
        while data:
            data = data[out.write(data):]
    except OSError as err:
        out.truncate(start)
        raise write_error(path, err) from None


def stop_on_write_error(err: OSError, cache: Path, settings: Settings, unlisted: list, group_of: dict,
                        cached: int) -> int:
    """After a failed write, the cache keeps only whole, listed files: the crops of images no
    row lists (workers stopped part way) and every temporary file go."""
    for item in unlisted:
        for name in settings.sizes:
            (cache / crop_path(group_of[item.id], name, item.id, settings.ext)).unlink(missing_ok=True)
    remove_stale_temporaries(cache)
    print(f"error: {err}; stopped with {cached} image(s) cached this run and {len(unlisted)} not done; no file is "
          f"left half-written: make room, then run the same command again", file=sys.stderr)
    return 1


def summarize(rows: list[dict], problems: list, processed: int, elapsed: float) -> dict:
    cached = [r for r in rows if r["status"] != "rejected"]
    per_group = Counter(r["age_group"] for r in cached)
    per_region = Counter(region for r in cached for region in r["crops"])
    return {
        "images": len(rows), "cached": len(cached),
        "detected": sum(r["status"] == "ok" for r in rows),
        "fallback": sum(r["status"] == "fallback" for r in rows),
        "rejected": sum(r["status"] == "rejected" for r in rows),
        "label_problems": len(problems),
        "per_age_group": dict(sorted(per_group.items(), key=lambda kv: _group_key(kv[0]))),
        "per_region": dict(per_region),
        "per_split": dict(Counter(str(r["split"]) for r in cached)),
        "processed_this_run": processed, "seconds": round(elapsed, 2),
        "images_per_second": round(processed / elapsed, 1) if elapsed > 0 else None,
    }


def _group_key(label: str) -> int:
    return int(label.rstrip("+").split("-")[0]) if label[:1].isdigit() else 10**6


def print_summary(summary: dict, path: Path) -> None:
    print(f"\n{path}: {summary['images']} images, {summary['cached']} cached "
          f"({summary['detected']} detected, {summary['fallback']} whole-image fallback), "
          f"{summary['rejected']} rejected, {summary['label_problems']} skipped for their labels")
    print("images per age group (each with every region: "
          + ", ".join(f"{k} {v}" for k, v in summary["per_region"].items()) + ")")
    for group, count in summary["per_age_group"].items():
        print(f"  {group:>6}  {count:6d}")
    print("split: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["per_split"].items())))
    print(f"{summary['processed_this_run']} images processed in {summary['seconds']} s "
          f"= {summary['images_per_second']} images/s")


def merge_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Join the shard manifests of a cache (agefuse-regions --shard K/N) into "
                    "manifest.jsonl. Copy the shards' cache folders into one first: their "
                    "files are disjoint.")
    parser.add_argument("cache", help="cache folder holding manifest.shard-K-of-N.jsonl files")
    args = parser.parse_args(argv)
    try:
        path = manifest.merge_shards(args.cache)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{path}: {len(manifest.read_rows(path))} rows")
    return 0


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
