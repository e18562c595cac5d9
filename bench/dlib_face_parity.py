"""dlib_face_resnet against dlib's own face_recognition_model_v1 on sample faces.

Each face is aligned as dlib does it (frontal detector, 5-point landmarks, get_face_chip at
150 px, padding 0.25); where the detector finds nothing in the tight UTKFace crop the crop is
resized to 150 px instead. Both networks get the same chip; the script prints how far apart
the 128-D descriptors are. Usage: ``python bench/dlib_face_parity.py [--faces 20]``.
"""
import argparse
import sys
import time
from pathlib import Path

import cv2
import dlib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from agefuse.branches.dlib_face import face_recognition_dat, load_dlib_face  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dat = face_recognition_dat()
    reference = dlib.face_recognition_model_v1(str(dat))
    landmarks = dlib.shape_predictor(str(dat.with_name("shape_predictor_5_face_landmarks.dat")))
    detector = dlib.get_frontal_face_detector()
    model = load_dlib_face().eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (model.mean, model.std))
    files = sorted((ROOT / "sample" / "utkface").glob("*.jpg"))
    files = files[::max(1, len(files) // args.faces)][:args.faces]
    diffs, values, aligned, dlib_s, ours_s = [], [], 0, 0.0, 0.0
    for f in files:
        image = np.ascontiguousarray(cv2.imread(str(f))[:, :, ::-1])
        faces = detector(image, 1)
        if faces:
            chip = dlib.get_face_chip(image, landmarks(image, faces[0]), size=150, padding=0.25)
            aligned += 1
        else:
            chip = np.ascontiguousarray(cv2.resize(image, (150, 150), interpolation=cv2.INTER_AREA))
        start = time.perf_counter()
        expected = np.array(reference.compute_face_descriptor(chip))
        dlib_s += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            x = torch.from_numpy(chip).permute(2, 0, 1)[None].float()
            ours = model((x - mean) / std)[0].numpy()
        ours_s += time.perf_counter() - start
        diffs.append(np.abs(ours - expected))
        values.append(np.abs(expected))
    diffs = np.stack(diffs)
    print(f"{len(files)} faces ({aligned} aligned by dlib, {len(files) - aligned} resized), "
          f"128-D descriptors, |native - dlib|: max {diffs.max():.3g}, median {np.median(diffs):.3g} "
          f"(median |descriptor entry| {np.median(values):.3g})")
    print(f"per face: dlib {1000 * dlib_s / len(files):.0f} ms, "
          f"native (torch, 1 thread) {1000 * ours_s / len(files):.0f} ms")


if __name__ == "__main__":
    main()
