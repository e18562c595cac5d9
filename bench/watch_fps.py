"""agefuse-watch frames per second on this CPU: a 640x480 video with 1 and with 3 faces,
detection every frame and every 5th frame, and where the time goes.

    python bench/watch_fps.py --model runs/fused/fused.pt [--frames 150] [--no-video]

The videos (MJPG, 25 fps) are built in a temporary folder from bundled UTKFace faces,
180 px, swaying sideways over a noisy gradient. Each configuration runs agefuse-watch's loop
(``agefuse.watch.watch``, default settings otherwise) with its outputs written (the timeline,
the tracks and, unless ``--no-video``, the annotated mp4): detection every frame; every 5th
frame with dlib's correlation tracker between (the default); every 5th frame with
``--tracker hold``. fps = frames / wall time of the loop; loading the model and a warm-up
call come before. The breakdown is milliseconds per frame by stage: decode; detect (dlib
HOG) and landmarks+crops, which the loop times together and this script splits by the
detector's share timed apart on the same frames; model (branches + fusion head); track
(correlation trackers + IoU matching); annotate; encode; write (timeline and tracks files).
"""
import argparse
import math
import tempfile
from pathlib import Path
from time import perf_counter

import cv2
import numpy as np
import torch
from common import branch_sizes, photo_options, sample_faces

from agefuse.fusion import crop_settings, find_faces
from agefuse.regions import face_locations
from agefuse.watch import FaceEstimator, Outputs, Settings, Stopwatch, open_source, watch

LAYOUTS = {1: [(230, 150)], 3: [(30, 40), (430, 40), (230, 280)]}  # top-left corners of 180-px faces
STAGES = ("decode", "detect", "landmarks+crops", "model", "track", "annotate", "encode", "write")


def make_video(path: Path, faces: list[np.ndarray], frames: int, fps: float = 25) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    background = np.dstack([90 + xx / 8, 110 + yy / 8, 120 + (xx + yy) / 16])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for t in range(frames):
        frame = np.clip(background + rng.normal(0, 6, background.shape), 0, 255).astype(np.uint8)
        for i, (face, (x, y)) in enumerate(zip(faces, LAYOUTS[len(faces)])):
            x += int(round(25 * math.sin(2 * math.pi * t / 50 + i)))  # a 2-s sway, 25 px each side
            frame[y:y + 180, x:x + 180] = face
        writer.write(frame)
    writer.release()
    return path


def detect_share(estimator: FaceEstimator, path: Path, threads: int, step: int = 10) -> tuple[float, float]:
    """dlib's HOG detector alone, in ms, and its share of ``find_faces`` (detection, and the
    landmarks and crops the estimator's model reads), both timed on every ``step``-th frame, one
    after the other on each, with the detector the loop uses (its pyramid shared between ``threads``)."""
    capture, detect, faces, index = cv2.VideoCapture(str(path)), [], [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % step == 0:
            start = perf_counter()
            face_locations(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), threads=threads)
            middle = perf_counter()
            find_faces(estimator.model, frame, crop_settings(estimator.model), threads)
            detect.append(middle - start)
            faces.append(perf_counter() - middle)
        index += 1
    return 1000 * float(np.median(detect)), float(np.sum(detect) / np.sum(faces))


def run(estimator: FaceEstimator, path: Path, every: int, tracker: str, out: Path, video: bool) -> dict:
    source = open_source(str(path))
    try:
        with Outputs(out, source.fps, source.size, "annotated.mp4" if video else None,
                     say=lambda line: None) as outputs:
            return watch(source, estimator, Settings(every=every, tracker=tracker), outputs)
    finally:
        source.release()


def main(args):
    torch.set_num_threads(args.threads)
    estimator = FaceEstimator(args.model, threads=args.threads if args.side_by_side else None)
    model = estimator.model
    faces = [cv2.resize(face, (180, 180), interpolation=cv2.INTER_AREA) for face in sample_faces(args.source, 3)]
    print(f"model {args.model}: branches {branch_sizes(model)}; "
          f"{torch.get_num_threads()} torch threads, branches "
          f"{'side by side' if estimator.pool else 'one after another'}, {cv2.getNumThreads()} OpenCV threads; "
          f"{args.frames} frames of 640x480 per run; annotated video {'written (mp4v)' if args.video else 'off'}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, 3):
            path = make_video(Path(tmp) / f"faces{count}.avi", faces[:count], args.frames)
            first = open_source(str(path))
            estimator(first.first, Stopwatch())  # warm-up: first calls allocate
            first.release()
            detect = detect_share(estimator, path, estimator.threads or 1)
            for every, tracker in ((1, "correlation"), (5, "correlation"), (5, "hold")):
                summary = run(estimator, path, every, tracker, Path(tmp) / f"out{count}-{every}-{tracker}", args.video)
                results.append((count, every, tracker, summary, detect))
    print()
    header = "| faces | detect every | tracker | tracks | fps | ms/frame | " + " | ".join(STAGES) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for count, every, tracker, summary, (_, share) in results:
        frames, stages = summary["frames"], dict(summary["stage_seconds"])
        faces_s = stages.pop("faces", 0.0)
        stages["detect"], stages["landmarks+crops"] = share * faces_s, (1 - share) * faces_s
        per_frame = {stage: 1000 * stages.get(stage, 0.0) / frames for stage in STAGES}
        print(f"| {count} | {every} | {tracker} | {summary['tracks']} | {summary['fps']:.1f} | "
              f"{1000 * summary['seconds'] / frames:.1f} | " + " | ".join(f"{per_frame[s]:.1f}" for s in STAGES) + " |")
    (one_ms, one_share), (three_ms, three_share) = results[0][4], results[3][4]
    print(f"\nStages in ms per frame, averaged over all frames; the rest of ms/frame is the loop's own work "
          f"(colour conversion, bookkeeping). The loop times detection, landmarks and crops together; the split "
          f"is by the detector's share of them timed apart on the same frames: HOG alone {one_ms:.1f} ms a frame, "
          f"{100 * one_share:.0f}% (1 face), {three_ms:.1f} ms, {100 * three_share:.0f}% (3 faces).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fused.pt")
    photo_options(parser)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--one-after-another", dest="side_by_side", action="store_false",
                        help="run the branches in turn, each on all threads")
    parser.add_argument("--no-video", dest="video", action="store_false")
    main(parser.parse_args())
