"""The same faces as 200-px chips and inside photos: does a model score them alike, and do
agefuse-evaluate and agefuse-predict agree on the photos?

    python bench/photos_vs_chips.py --cache bench/out/cpu-budget/cache --model fusion/default/fused-utkface.pt \
        --out bench/out/photos-vs-chips [--faces 400]

Takes ``--faces`` faces of the cache's validation split (seeded), and pastes each chip at a
random place and scale (0.8-1.6x) into a 640x480 photo of smooth colour with noise, the way
users' own photos hold faces. Then: ``agefuse-evaluate --images`` on the chips, the same on the
photos, and ``agefuse-predict`` on the photos (the largest face of each). Every figure is on
the faces all three scored (a face no detector found in a photo is counted, not scored).
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from common import run_logged

from agefuse.fusion import DEFAULT_MODEL
from agefuse.regions import manifest

PHOTO = (640, 480)


def paste(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``chip`` at a random scale (0.8-1.6x) and place in a 640x480 photo."""
    width, height = PHOTO
    colours = rng.integers(30, 225, (5, 7, 3), dtype=np.uint8)
    photo = cv2.resize(colours, PHOTO, interpolation=cv2.INTER_CUBIC).astype(np.int16)
    photo = np.clip(photo + rng.integers(-10, 11, photo.shape), 0, 255).astype(np.uint8)
    face = cv2.resize(chip, None, fx=(scale := rng.uniform(0.8, 1.6)), fy=scale,
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    side = face.shape[0]
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    photo[top:top + side, left:left + side] = face
    return photo


def read_evaluation(folder: Path) -> dict[str, dict]:
    with (folder / "predictions.csv").open() as handle:
        return {Path(r["source"]).name: r for r in csv.DictReader(handle)}


def figures(true_age, true_gender, age, female) -> tuple[float, float]:
    known = true_gender >= 0
    return float(np.abs(age - true_age).mean()), float(((female >= 0.5) == (true_gender == 1))[known].mean())


def main(args) -> int:
    out = Path(args.out)
    rows = [r for r in manifest.load(args.cache) if r["split"] == "val" and r["status"] != "rejected"]
    rng = np.random.default_rng(args.seed)
    chosen = [rows[i] for i in sorted(rng.choice(len(rows), min(args.faces, len(rows)), replace=False))]
    for folder in ("chips", "photos"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for row in chosen:
        name = Path(row["source"]).name  # UTKFace names: the labels come with them
        chip = cv2.imread(row["source"])
        cv2.imwrite(str(out / "chips" / name), chip, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(out / "photos" / name), paste(chip, rng), [cv2.IMWRITE_JPEG_QUALITY, 95])

    model = ["--model", args.model]  # agefuse-evaluate takes no default model
    for folder in ("chips", "photos"):
        run_logged([sys.executable, "-m", "agefuse.fusion.evaluate", *model, "--images", str(out / folder),
             "--out", str(out / f"eval-{folder}"), "--workers", "2"], out / f"eval-{folder}.log")
    photos = sorted((out / "photos").iterdir())
    run_logged([sys.executable, "-m", "agefuse.fusion.predict", *map(str, photos), *model,
         "--out", str(out / "predict"), "--no-annotate"], out / "predict.log")

    chips, in_photos = read_evaluation(out / "eval-chips"), read_evaluation(out / "eval-photos")
    predicted = {}
    for photo in photos:
        faces = json.loads((out / "predict" / f"{photo.name}.json").read_text())["faces"]
        if faces:
            predicted[photo.name] = max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
    fallback = {Path(line.split("no face found: ", 1)[1].split(" (")[0]).name
                for line in (out / "eval-photos.log").read_text().splitlines() if line.startswith("no face found: ")}
    common = sorted(set(chips) & set(in_photos) & set(predicted) - fallback)
    true_age = np.array([float(chips[n]["age"]) for n in common])
    true_gender = np.array([int(chips[n]["gender"] or -1) for n in common])

    def column(table, key):
        return np.array([float(table[n][key]) for n in common])
    lines = [f"{len(chosen)} validation faces of {args.cache}; scored by all three: {len(common)} "
             f"(no face found in the photo by evaluate: {len(fallback)}, by predict: {len(chosen) - len(predicted)})",
             "", "| same faces | fused MAE | `original` branch MAE | fused gender |", "|---|---|---|---|"]
    results = {}
    for label, table in (("as 200-px chips, `agefuse-evaluate --images`", chips),
                         ("inside photos, `agefuse-evaluate --images`", in_photos)):
        mae, gender = figures(true_age, true_gender, column(table, "predicted_age"), column(table, "p_female"))
        original = float(np.abs(column(table, "age_original") - true_age).mean())
        results[label] = {"mae": mae, "original_mae": original, "gender": gender}
        lines.append(f"| {label} | {mae:.2f} | {original:.2f} | {100 * gender:.1f} % |")
    ages = np.array([predicted[n]["age"] for n in common])
    female = np.array([predicted[n]["gender_probability"] if predicted[n]["gender"] == "female"
                       else 1 - predicted[n]["gender_probability"] for n in common])
    mae, gender = figures(true_age, true_gender, ages, female)
    results["inside photos, `agefuse-predict`"] = {"mae": mae, "gender": gender}
    lines.append(f"| inside photos, `agefuse-predict` | {mae:.2f} | | {100 * gender:.1f} % |")
    photo_eval = column(in_photos, "predicted_age")
    photos_mae = results["inside photos, `agefuse-evaluate --images`"]["mae"]
    chips_mae = results["as 200-px chips, `agefuse-evaluate --images`"]["mae"]
    lines += ["", f"photos vs chips (evaluate): {photos_mae - chips_mae:+.2f} years; "
              f"evaluate vs predict on the photos: MAE {photos_mae - mae:+.2f}, "
              f"per face |difference| median {np.median(np.abs(photo_eval - ages)):.3f}, "
              f"max {np.abs(photo_eval - ages).max():.2f} years"]
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"faces": len(chosen), "common": len(common), "seed": args.seed,
                                                  "model": args.model, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a regions cache of UTKFace (its validation split is used)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="fused.pt (default: the installed model)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--faces", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    sys.exit(main(parser.parse_args()))
