"""Face detection per detector: recall, false detections and time per photo, on photos made
from the sample faces, and the installed model's age MAE through each detector.

    python bench/detection.py [--faces 6] [--detectors hog,cnn,haar,mtcnn] [--model fused.pt] [--framing landmarks]
        [--group group.jpg --group-faces 6]

Each condition pastes ``--faces`` sample chips (seeded), one per 480x360 photo, at a random
place: at face sizes down to 24 px, turned in the image plane, turned away (a perspective warp
of the flat chip, as a card turns: an approximation of a head turning), blurred, and the whole
photo JPEG-compressed; "5 faces" photos hold five faces each of 36-88 px. No scene photos are
on disk, so the backgrounds are real photo texture: mosaics of 60-px tiles cut from the sample
photos' 32-px corners (hair, clothes, walls), and the multi-face photos are composites of sample faces
on them, not real group photos. A face is found when a detection's box (in HOG's framing, as
every command gets it) overlaps its true box by IoU 0.3 or more; every other detection is false.
Time: the median ms per photo of ``find_faces`` (detection, framing, landmarks, crops), one
thread, upsample 0. MAE: the installed model on each detector's found faces of the one-face
photos, and on the faces every detector found; the sample's faces may be in the model's
training set, so compare detectors by it, not the model.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from common import SAMPLE

from agefuse.fusion import DEFAULT_MODEL, crop_settings, estimate, find_faces, load_fused
from agefuse.regions import DETECTORS, FRAMINGS

PHOTO = (480, 360)
CORNER = 32   # px of a 200-px chip's corner: beyond the face in most chips
INSET = 0.08  # the face's true box in a UTKFace chip: where HOG puts it (the whole-image fallback's)
CONDITIONS = {  # name: (face side in px, in-plane degrees, turn degrees, blur sigma, JPEG quality)
    "face 160 px": (160, 0, 0, 0, 95), "face 100 px": (100, 0, 0, 0, 95), "face 70 px": (70, 0, 0, 0, 95),
    "face 48 px": (48, 0, 0, 0, 95), "face 32 px": (32, 0, 0, 0, 95), "face 24 px": (24, 0, 0, 0, 95),
    "rotated 20 deg": (100, 20, 0, 0, 95), "rotated 40 deg": (100, 40, 0, 0, 95),
    "turned 30 deg": (100, 0, 30, 0, 95), "turned 50 deg": (100, 0, 50, 0, 95),
    "blur sigma 2": (100, 0, 0, 2, 95), "blur sigma 4": (100, 0, 0, 4, 95),
    "JPEG quality 15": (100, 0, 0, 0, 15), "JPEG quality 5": (100, 0, 0, 0, 5),
}
GROUP = "5 faces, 36-88 px"


def background(chips: list[np.ndarray], rng: np.random.Generator, tile: int = 60) -> np.ndarray:
    """A photo-sized mosaic of tiles cut from the chips' top corners (hair, clothes, walls)."""
    width, height = PHOTO
    rows, cols = -(-height // tile), -(-width // tile)
    canvas = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            chip = chips[rng.integers(len(chips))]
            x = 0 if rng.random() < 0.5 else chip.shape[1] - CORNER
            patch = chip[:CORNER, x:x + CORNER]
            canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = cv2.resize(patch, (tile, tile))
    return canvas[:height, :width]


def paste(photo: np.ndarray, chip: np.ndarray, face: int, centre, angle: float, turn: float) -> tuple:
    """``chip`` into ``photo`` (in place) with its face ``face`` px, centred at ``centre``,
    rotated ``angle`` degrees in the plane and turned ``turn`` degrees about the vertical axis;
    returns the face's true box (a square, as HOG's boxes are)."""
    side = chip.shape[0]
    scale = face / (side * (1 - 2 * INSET))
    corners = np.float32([[0, 0], [side, 0], [side, side], [0, side]]) - side / 2
    # a turn foreshortens the chip's width and brings its near edge closer (taller)
    cos, sin = np.cos(np.radians(turn)), np.sin(np.radians(turn))
    depth = 2.5 * side
    turned = np.float32([[x * cos * depth / (depth + x * sin), y * depth / (depth + x * sin)] for x, y in corners])
    rotate = cv2.getRotationMatrix2D((0, 0), angle, scale)[:, :2]
    target = turned @ rotate.T + np.float32(centre)
    warp = cv2.getPerspectiveTransform(corners + side / 2, target.astype(np.float32))
    size = (photo.shape[1], photo.shape[0])
    pixels = cv2.warpPerspective(chip, warp, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full(chip.shape[:2], 255, np.uint8), warp, size) > 127
    photo[mask] = pixels[mask]
    half = face * max(cos, 0.5) / 2 if turn else face / 2
    return (centre[0] - half, centre[1] - face / 2, centre[0] + half, centre[1] + face / 2)


def degrade(photo: np.ndarray, blur: float, quality: int) -> np.ndarray:
    if blur:
        photo = cv2.GaussianBlur(photo, (0, 0), blur)
    ok, data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def photos(chips: list[np.ndarray], ages: list[float], count: int, seed: int) -> dict[str, list]:
    """Per condition, ``(photo, [(true box, age), ...])`` for each photo."""
    rng = np.random.default_rng(seed)
    made = {}
    for name, (face, angle, turn, blur, quality) in CONDITIONS.items():
        made[name] = []
        for i in rng.choice(len(chips), count, replace=False):
            photo = background(chips, rng)
            margin = face * 0.8
            centre = (rng.uniform(margin, PHOTO[0] - margin), rng.uniform(margin, PHOTO[1] - margin))
            box = paste(photo, chips[i], face, centre, angle * rng.choice([-1, 1]), turn * rng.choice([-1, 1]))
            made[name].append((degrade(photo, blur, quality), [(box, ages[i])]))
    made[GROUP] = []
    for _ in range(max(2, count // 3)):
        photo, truth = background(chips, rng), []
        for column, i in enumerate(rng.choice(len(chips), 5, replace=False)):
            face = int(rng.uniform(36, 88))
            centre = (PHOTO[0] * (column + 0.5) / 5, rng.uniform(face * 0.7, PHOTO[1] - face * 0.7))
            truth.append((paste(photo, chips[i], face, centre, 0, 0), ages[i]))
        made[GROUP].append((degrade(photo, 0, 90), truth))
    return made


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(boxes: list, truth: list) -> tuple[dict[int, int], int]:
    """Detections to true faces, best overlap first, each at most once: {face: detection} and
    the number of detections left (false)."""
    pairs = sorted(((iou(b, t), d, f) for d, b in enumerate(boxes) for f, (t, _) in enumerate(truth)), reverse=True)
    found = {}
    for overlap, d, f in pairs:
        if overlap >= 0.3 and f not in found and d not in found.values():
            found[f] = d
    return found, len(boxes) - len(found)


def main(args) -> None:
    files = sorted(Path(args.source).glob("*.jpg"))
    chips = [cv2.imread(str(f)) for f in files]
    ages = [float(f.name.split("_")[0]) for f in files]
    made = photos(chips, ages, args.faces, args.seed)
    model, _ = load_fused(args.model)
    detectors = args.detectors.split(",")
    results = {d: {} for d in detectors}   # detector -> condition -> (found, faces, false, ms)
    errors = {d: {} for d in detectors}    # detector -> (condition, photo) -> |age error|
    for detector in detectors:
        settings = crop_settings(model, detector, upsample=0, framing=args.framing)
        for name, shots in made.items():
            found_n, faces_n, false_n, times = 0, 0, 0, []
            for p, (photo, truth) in enumerate(shots):
                start = time.perf_counter()
                faces = find_faces(model, photo, settings)
                times.append(1000 * (time.perf_counter() - start))
                found, false = match([f["box"] for f in faces], truth)
                found_n, faces_n, false_n = found_n + len(found), faces_n + len(truth), false_n + false
                if found and name != GROUP:
                    (f, d), = found.items()
                    errors[detector][name, p] = abs(float(estimate(model, [faces[d]])["age"][0]) - truth[f][1])
            results[detector][name] = (found_n, faces_n, false_n, float(np.median(times)))
    print(f"{len(files)} sample faces; {args.faces} one-face {PHOTO[0]}x{PHOTO[1]} photos per condition, "
          f"{len(made[GROUP])} five-face photos; model {args.model}")
    print("recall (found/faces), false detections, median ms per photo")
    print("| condition | " + " | ".join(detectors) + " |")
    print("|---|" + "---|" * len(detectors))
    for name in made:
        cells = []
        for d in detectors:
            found_n, faces_n, false_n, ms = results[d][name]
            cells.append(f"{found_n}/{faces_n}, {false_n} false, {ms:.0f} ms")
        print(f"| {name} | " + " | ".join(cells) + " |")
    totals = {d: [sum(v[i] for v in results[d].values()) for i in range(3)] for d in detectors}
    print("| all | " + " | ".join(f"{100 * t[0] / t[1]:.1f} %, {t[2]} false" for t in totals.values()) + " |")
    common = set.intersection(*(set(errors[d]) for d in detectors))
    print(f"\nage MAE of the model on the one-face photos; on the {len(common)} faces every detector found:")
    print("| detector | faces found | MAE on its faces | MAE on the common faces |")
    print("|---|---|---|---|")
    for d in detectors:
        own = list(errors[d].values())
        print(f"| {d} | {len(own)} | {np.mean(own):.2f} | {np.mean([errors[d][k] for k in common]):.2f} |")
    if args.group:
        group_photo(model, detectors, args.group, args.group_faces, args.framing)


def group_photo(model, detectors: list[str], path: str, people: int, framing: str | None) -> None:
    """A real photo of ``people`` faces (no boxes are known: faces found against the count of
    people, more than that is at least that many false detections), median ms of 3 calls."""
    photo = cv2.imread(path)
    if photo is None:
        raise SystemExit(f"{path}: not a readable image")
    print(f"\nreal group photo {path} ({photo.shape[1]}x{photo.shape[0]}, {people} people):")
    print("| detector | faces found | median ms |")
    print("|---|---|---|")
    for detector in detectors:
        settings = crop_settings(model, detector, upsample=0, framing=framing)
        times, found = [], 0
        for _ in range(3):
            start = time.perf_counter()
            found = len(find_faces(model, photo, settings))
            times.append(time.perf_counter() - start)
        print(f"| {detector} | {found} of {people} | {1000 * np.median(times):.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(SAMPLE), help="a folder of UTKFace chips")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="fused.pt (default: the installed model)")
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--faces", type=int, default=6, help="one-face photos per condition")
    parser.add_argument("--group", default=None, help="also a real photo of several people (e.g. insightface's t1.jpg)")
    parser.add_argument("--group-faces", type=int, default=6, help="how many people the --group photo shows")
    parser.add_argument("--framing", choices=FRAMINGS, default=None,
                        help="how each face's box is made (landmarks: every detector's from the 68 landmarks; "
                             "default: as the model's training cache)")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
