"""agefuse-predict: age, age interval and gender of every face in a photo.

    agefuse-predict photo.jpg [more.jpg ...] --model runs/fused/fused.pt [--out predictions/]

Takes files, folders (recursively) and glob patterns. Prints one JSON object per photo
(every face: box, age, interval, gender and its probability) and writes, per photo,
``OUT/<name>.json`` and an annotated copy ``OUT/<name>.annotated.jpg``, and one
``OUT/predictions.csv`` with a row per face. A photo with no face says so; an unreadable one is named with
the reason and the others go on.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agefuse.cli import HelpFormatter, checked, existing_file, int_at_least, json_text, output_folder, run_command
from agefuse.regions import DETECTORS, FRAMING_HELP, FRAMINGS, IMAGE_SUFFIXES, decode, read_image_file

from .groups import DEFAULT_GROUPS, parse_groups
from .inference import branch_pool, crop_settings, draw_labelled_box, predict_faces
from .model import load_fused

TRACE_FROM = 300  # photos: where ~1.4 s of tracing is won back at a few ms a face
PROGRESS_FROM = 5  # photos: a progress bar from here on (on a terminal)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Age and gender of every face in photos.", add_help=add_help,
                                     formatter_class=HelpFormatter)
    parser.add_argument("photos", nargs="+",
                        help="image files, folders (searched recursively for image files) or glob patterns "
                             "(quoted, e.g. 'photos/**/*.jpg')")
    parser.add_argument("--model", default=None, type=existing_file,
                        help="fused.pt from agefuse-train-fusion (default: the UTKFace model installed "
                             "with agefuse; see the README for its figures and licence)")
    parser.add_argument("--out", default="predictions", type=output_folder,
                        help="folder for the JSON and annotated copies")
    parser.add_argument("--detector", default=None, choices=DETECTORS,
                        help="face detector (default: the one the model's training cache used)")
    parser.add_argument("--upsample", type=int_at_least(0), default=None,
                        help="enlarge the photo this many times before detection: 1 finds faces down "
                             "to about 40 px instead of 80, at about twice the detection time "
                             "(default: as the model's training cache)")
    parser.add_argument("--framing", default=None, choices=FRAMINGS, help=FRAMING_HELP)
    parser.add_argument("--whole-image-fallback", action="store_true",
                        help="a photo with no detected face is taken as one already-cropped face")
    parser.add_argument("--no-annotate", dest="annotate", action="store_false",
                        help="write no annotated copies (JSON and predictions.csv only)")
    parser.add_argument("--quiet", action="store_true", help="do not print each photo's JSON")
    parser.add_argument("--threads", type=int_at_least(1), default=os.cpu_count() or 1,
                        help="CPU cores to use: the detection shares its image pyramid between two, the "
                             "branches run side by side, one core each")
    parser.add_argument("--groups", type=checked(parse_groups), default=DEFAULT_GROUPS,
                        help="age groups whose probabilities each face gets (summed from its age distribution), "
                             "NAME:LOW-HIGH,...,NAME:LOW-, e.g. child:0-12,teen:13-17,adult:18-")
    parser.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                        help="torch: a fused.pt; onnx: a .onnx file of agefuse-export --format onnx, run by "
                             "ONNX Runtime")
    parser.add_argument("--trace", choices=["auto", "yes", "no"], default="auto",
                        help="trace the branches with TorchScript first: about 1.4 s once, then a few ms "
                             f"less per face; auto: for {TRACE_FROM} photos or more")
    return parser


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    canvas = image.copy()
    for face in faces:
        label = f"{face['age']:.0f} ({face['age_interval'][0]:.0f}-{face['age_interval'][1]:.0f}) " \
                f"{face['gender'][0].upper()} {100 * face['gender_probability']:.0f}%"
        if face.get("groups"):
            group, probability = max(face["groups"].items(), key=lambda item: item[1])
            label += f" {group} {100 * probability:.0f}%"
        draw_labelled_box(canvas, face["box"], label, face["gender"] == "female")
    return canvas


def find_photos(items: list[str]) -> tuple[list[str], list[str]]:
    """Photo paths from files, folders (searched recursively, image extensions only) and
    glob patterns, in the order given; and the items that named nothing."""
    photos, unmatched = [], []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        elif not path.exists() and not path.is_symlink() and any(c in item for c in "*?["):
            found = sorted(p for p in glob.glob(item, recursive=True)
                           if Path(p).suffix.lower() in IMAGE_SUFFIXES and not Path(p).is_dir())
        else:
            found = [item]  # a file, or a missing one: named when it is read
        photos += found
        if not found:
            unmatched.append(item)
    return photos, unmatched


CSV_FIELDS = ("photo", "face", "left", "top", "right", "bottom", "age", "age_low", "age_high", "gender",
              "gender_probability")


def load_engine(path: str | None, engine: str, threads: int):
    """The model to predict with, and the thread pool its branches run on (torch only)."""
    if engine == "onnx":
        if path is None or Path(path).suffix != ".onnx":
            raise ValueError("--engine onnx runs an exported file: give --model FILE.onnx "
                             "(agefuse-export --format onnx writes one)")
        from .onnx import OnnxModel
        return OnnxModel(path, threads), None
    exported = {".onnx": "an ONNX file: run it with --engine onnx",
                ".pt2": "a torch.export archive, for other programs: give the fused.pt it was exported from"}
    suffix = Path(path).suffix if path is not None else None
    if suffix in exported:
        raise ValueError(f"{path}: {exported[suffix]}")
    model, _ = load_fused(path)
    return model, branch_pool(model, threads)


def main(args: argparse.Namespace) -> int:
    photos, unmatched = find_photos(args.photos)
    for item in unmatched:
        print(f"{item}: no image files here", file=sys.stderr)
    model, pool = load_engine(args.model, args.engine, args.threads)
    if args.engine == "torch" and (args.trace == "yes" or args.trace == "auto" and len(photos) >= TRACE_FROM):
        model.trace()
    settings = crop_settings(model, args.detector, args.upsample, args.whole_image_fallback, args.framing)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures, faceless = len(unmatched), 0
    # one row per face, streamed: memory stays flat however many photos there are
    with (out / "predictions.csv").open("w", newline="") as handle, \
            tqdm(total=len(photos), desc="predict", unit="photo", disable=None if len(photos) > PROGRESS_FROM else True,
                 dynamic_ncols=True, file=sys.stderr) as bar:
        table = csv.writer(handle)
        table.writerow([*CSV_FIELDS, *(f"p_{group.name}" for group in args.groups)])
        for photo, stem in zip(photos, output_names(photos)):
            bar.update()
            try:
                image = decode(read_image_file(photo))
            except (OSError, ValueError) as err:
                bar.write(f"{photo}: {getattr(err, 'strerror', None) or err}", file=sys.stderr)
                failures += 1
                continue
            start = time.perf_counter()
            faces = predict_faces(model, image, settings, pool, args.threads, args.groups)
            record = {"photo": photo, "faces": faces, "seconds": round(time.perf_counter() - start, 4)}
            if not faces:
                record["message"] = "no face found"
                faceless += 1
            (out / f"{stem}.json").write_text(json_text(record))
            if args.annotate:
                cv2.imwrite(str(out / f"{stem}.annotated.jpg"), annotate(image, faces))
            for index, face in enumerate(faces):
                table.writerow([photo, index, *face["box"], face["age"], *face["age_interval"], face["gender"],
                                face["gender_probability"],
                                *(face.get("groups", {}).get(group.name, "") for group in args.groups)])
            if not args.quiet:
                bar.write(json_text(record, indent=None))
    if faceless:
        hint = ("" if args.whole_image_fallback
                else " (small faces: --upsample 1; a photo that is one face: --whole-image-fallback)")
        print(f"{faceless} of {len(photos)} photos with no face found{hint}", file=sys.stderr)
    if failures:
        unread = failures - len(unmatched)
        parts = [f"{unread} of {len(photos)} photos could not be read"] if unread else []
        if unmatched:
            parts.append(f"{len(unmatched)} of the paths given held no image file")
        print("; ".join(parts) + " (named above)", file=sys.stderr)
    return 1 if failures else 0


def output_names(photos: list[str]) -> list[str]:
    """A distinct output name per photo: its file name, and where two photos share one
    (d1/photo.jpg, d2/photo.jpg) the later ones get -2, -3, ... before the extension."""
    names, seen = [], set()
    for photo in photos:
        name = Path(photo).name
        stem, suffix = name.split(".", 1) if "." in name else (name, "")
        count, candidate = 1, name
        while candidate in seen:
            count += 1
            candidate = f"{stem}-{count}" + (f".{suffix}" if suffix else "")
        seen.add(candidate)
        names.append(candidate)
    return names


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
