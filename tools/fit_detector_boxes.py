"""Fits the constants that put every detector's faces in HOG's framing (regions/landmarks.py):
``LANDMARK_FRAMING`` (the HOG box from the 68 landmarks) and each detector's ``start`` (its box
to the box the 68-point predictor starts from), on UTKFace chips that are not in the sample
(the parity test, tests/test_detectors.py, checks them on the sample), then says how far each
detector's faces are from HOG's, as the committed constants frame them.

    python tools/fit_detector_boxes.py [--source ../shared/utkface] [--faces 300]

Medians, not means: a face the predictor misplaces (a few in a hundred) would pull a mean.
(LANDMARK_FRAMING was fitted this way on 200 faces; the start boxes, which only seed the
predictor, on 300 chips as they come.)
"""
import argparse
from pathlib import Path

import cv2
import numpy as np

from agefuse.regions import landmarks

ROOT = Path(__file__).resolve().parents[1]


def centre_side(box) -> tuple[np.ndarray, float]:
    left, top, right, bottom = box
    return np.array([(left + right) / 2, (top + bottom) / 2]), (right - left + bottom - top) / 2


def faces(source: Path, count: int) -> list[Path]:
    sample = {p.name for p in (ROOT / "sample" / "utkface").glob("*.jpg")}
    files = sorted(p for p in source.glob("*.jpg") if p.name not in sample)
    return [files[i] for i in np.random.default_rng(1).choice(len(files), count, replace=False)]


def framing_of(points: np.ndarray, box) -> tuple[float, float, float]:
    """(dx, dy, side) of ``box`` from the landmarks, as ``landmarks.landmark_box`` reads them."""
    centroid = points.mean(0)
    scale = float(np.sqrt(((points - centroid) ** 2).sum(1).mean()))
    left, right = points[36:42].mean(0), points[42:48].mean(0)
    angle = np.arctan2(right[1] - left[1], right[0] - left[0])
    centre, side = centre_side(box)
    offset = (centre - centroid) / scale
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * offset[0] + sin * offset[1], -sin * offset[0] + cos * offset[1], side / scale


def nearest(found, centre) -> tuple | None:
    if not found:
        return None
    return min(found, key=lambda f: np.linalg.norm(centre_side(f[0])[0] - centre))[0]


def main(args):
    rows, rng = [], np.random.default_rng(2)
    for path in faces(Path(args.source), args.faces):
        # at random scales, so that HOG's size steps fall anywhere on the faces, and padded, so
        # that no box is cut by the chip's edge
        chip = cv2.resize(cv2.imread(str(path)), None, fx=(zoom := rng.uniform(0.7, 1.5)), fy=zoom)
        rgb = cv2.cvtColor(cv2.copyMakeBorder(chip, 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=(128,) * 3),
                           cv2.COLOR_BGR2RGB)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        hog = landmarks.face_locations(gray, "hog")
        if not hog:
            continue
        box = hog[0][0]
        centre, side = centre_side(box)
        row = {"hog": box, "points": landmarks.face_landmarks(gray, box)}
        for name, spec in landmarks.DETECTORS.items():
            if spec.start is not None:
                read = {"rgb": rgb, "gray": gray, "any": gray}[spec.reads]
                row[name] = nearest(spec.find(read, 0, 1), centre)
        rows.append((row, gray, centre, side))
    print(f"{len(rows)} of {args.faces} chips of {args.source} found by HOG (the sample's excluded)")
    framings = np.array([framing_of(r["points"], r["hog"]) for r, *_ in rows])
    # the side by its geometric mean: HOG's sides are steps of 1.2, which the framing rounds to
    fit = [*np.median(framings[:, :2], axis=0), float(np.exp(np.log(framings[:, 2]).mean()))]
    print(f"LANDMARK_FRAMING = {{\"dx\": {fit[0]:.4f}, \"dy\": {fit[1]:.4f}, \"side\": {fit[2]:.4f}}}")
    for name, spec in landmarks.DETECTORS.items():
        if spec.start is None:
            continue
        pairs = [(r[name], centre, side) for r, _, centre, side in rows if r[name] is not None]
        starts = []
        for raw, centre, side in pairs:
            raw_centre, raw_side = centre_side(raw)
            starts.append([*((centre - raw_centre) / raw_side), side / raw_side])
        start = np.median(starts, axis=0)
        # how far the committed framing puts this detector's face from HOG's, in the pixels of
        # a 200-px original crop (whose side the box fills 0.9 of)
        errors = []
        for r, gray, centre, side in rows:
            if r[name] is not None:
                mapped, _ = landmarks.hog_framing(gray, r[name], spec.start)
                mapped_centre, mapped_side = centre_side(mapped)
                errors.append(180 / side * max(np.abs(mapped_centre - centre).max(), abs(mapped_side - side) / 2))
        print(f"{name}: found {len(pairs)}; start = ({start[0]:.4f}, {start[1]:.4f}, {start[2]:.4f}); "
              f"committed framing vs HOG, px of a 200-px crop: median {np.median(errors):.2f}, "
              f"90th percentile {np.percentile(errors, 90):.2f}, max {np.max(errors):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "utkface"))
    parser.add_argument("--faces", type=int, default=300)
    main(parser.parse_args())
