"""Does a model learned from HOG-framed crops keep its accuracy when its faces are framed from
the 68 landmarks (``--framing landmarks``)? The model on the validation photos of a cache,
through ``faces_in`` as agefuse-predict finds them, in each framing; the MAE difference with a
95% paired bootstrap interval over faces. First, how far HOG's own box moves when the same face is
detected again in a crop around it (HOG's framing jitter, which no other detector's box can follow).

    python bench/framing_validity.py --cache runs/cpu-budget/cache [--model fused.pt]
"""
import argparse

import cv2
import numpy as np

from agefuse.fusion import crop_settings, estimate, load_fused
from agefuse.regions import FRAMINGS, faces_in, manifest


def hog_jitter(rows: list[dict], count: int) -> None:
    """Each face padded and rescaled into a photo, detected by HOG, then detected again in two
    crops around its box: how far the box's corners move (px)."""
    import dlib
    detector, rng, moved = dlib.get_frontal_face_detector(), np.random.default_rng(2), []
    for row in [rows[i] for i in rng.choice(len(rows), count, replace=False)]:
        image = cv2.resize(cv2.imread(row["source"]), None, fx=rng.uniform(0.6, 2.0), fy=rng.uniform(0.6, 2.0))
        pad = int(rng.integers(20, 200))
        rgb = np.ascontiguousarray(cv2.cvtColor(cv2.copyMakeBorder(image, pad, pad + 40, pad + 70, pad,
                                                                    cv2.BORDER_REFLECT), cv2.COLOR_BGR2RGB))
        found = detector(rgb, 0)
        if len(found) != 1:
            continue
        r = found[0]
        box = np.array([r.left(), r.top(), r.right(), r.bottom()])
        side = box[2] - box[0]
        for margin in (0.5, 0.8):
            x0 = max(0, int(box[0] - margin * side + rng.integers(-5, 6)))
            y0 = max(0, int(box[1] - margin * side + rng.integers(-5, 6)))
            x1, y1 = min(rgb.shape[1], int(box[2] + margin * side)), min(rgb.shape[0], int(box[3] + margin * side))
            again = detector(np.ascontiguousarray(rgb[y0:y1, x0:x1]), 0)
            if again:
                q = min(again, key=lambda t: abs(t.left() + x0 - box[0]) + abs(t.top() + y0 - box[1]))
                corners = np.array([q.left() + x0, q.top() + y0, q.right() + x0, q.bottom() + y0])
                moved.append(np.abs(corners - box).max())
    moved = np.array(moved)
    print(f"HOG's box detected again in {len(moved)} crops around it: the same box (within 1 px) in "
          f"{(moved <= 1).mean():.0%}, corners moved median {np.median(moved):.0f} px, 90th percentile "
          f"{np.percentile(moved, 90):.0f}, max {moved.max():.0f}")


def main(args) -> None:
    model, _ = load_fused(args.model)
    rows = [r for r in manifest.load(args.cache) if r.get("split") == "val" and r["status"] == "ok"]
    hog_jitter(rows, args.jitter_faces)
    errors = {framing: [] for framing in FRAMINGS}
    for row in rows:
        image = cv2.imread(row["source"])
        found = {framing: faces_in(image, crop_settings(model, "hog", framing=framing)) for framing in FRAMINGS}
        if all(found.values()):  # the faces HOG finds in both (the cache's fallback faces left out)
            for framing, faces in found.items():
                errors[framing].append(abs(float(estimate(model, [faces[0]])["age"][0]) - row["age"]))
    e = {framing: np.array(v) for framing, v in errors.items()}
    d = e["landmarks"] - e["hog"]
    rng = np.random.default_rng(0)
    boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
    print(f"{len(d)} validation faces: MAE hog framing {e['hog'].mean():.3f}, landmarks framing "
          f"{e['landmarks'].mean():.3f}, difference {d.mean():+.3f} "
          f"[{np.percentile(boot, 2.5):+.3f}, {np.percentile(boot, 97.5):+.3f}]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a regions cache with a validation split")
    parser.add_argument("--model", default=None, help="fused.pt (default: the installed model)")
    parser.add_argument("--jitter-faces", type=int, default=150, help="faces for HOG's own jitter")
    main(parser.parse_args())
