"""The watch loop: frames in, tracks with running estimates out.

Every ``every``-th frame is a detection frame: dlib finds the faces (and their landmarks, for
a model that reads landmark crops), the region crops are cut and the fused model estimates
each face (``fusion.find_faces``, ``fusion.estimate``: the same path as agefuse-predict).
That is most of the cost (50-150 ms a frame on a 2-core CPU), so on the frames between,
the faces are only followed, by dlib's correlation tracker: about 5 ms a face, it
follows a face that moves or turns a little, where holding the last box (``--tracker hold``)
would lag behind a moving face until the next detection and could then fail the overlap
match. Detections are matched to tracks by IoU (``agefuse.watch.tracks``), which is enough when the
tracker has kept each box on its face.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from agefuse.fusion import branch_pool, crop_settings, estimate, find_faces, load_fused

from .tracks import ENDED, INTERRUPTED, Box, Measurement, TrackSet
from .video import Outputs, Source, annotate, read_frames

TRACKERS = ("correlation", "hold")


@dataclass(frozen=True)
class Settings:
    every: int = 5               # a detection (and estimate) every N frames; tracking between
    buffer: int = 30             # measurements kept per track
    average: str = "mean"        # of the buffer: mean, or median (shrugs off a bad frame)
    max_misses: int = 2          # detection rounds in a row without the face before its track closes
    min_iou: float = 0.3         # overlap for a detection to continue a track
    tracker: str = "correlation"
    detector: str | None = None  # None: as the model's training cache
    upsample: int | None = None
    framing: str | None = None   # None: as the model's training cache
    max_frames: int | None = None


class Stopwatch:
    """Seconds spent per stage, summed over the frames."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


class FaceEstimator:
    """Faces of a frame with their estimates. The model loads on first use."""

    def __init__(self, model_path: str | None, detector: str | None = None, upsample: int | None = None,
                 threads: int | None = None, framing: str | None = None):
        self.model_path, self.detector, self.upsample, self.threads = model_path, detector, upsample, threads
        self.framing = framing
        self._model, self.pool = None, None

    @property
    def model(self):
        if self._model is None:
            self._model, _ = load_fused(self.model_path)
            self._model.trace()
            if self.threads:  # the branches side by side, one core each (FusedModel.features)
                self.pool = branch_pool(self._model, self.threads)
        return self._model

    def __call__(self, frame: np.ndarray, clock: Stopwatch) -> list[tuple[Box, Measurement]]:
        settings = crop_settings(self.model, self.detector, self.upsample, framing=self.framing)
        with clock("faces"):  # detection, the landmarks and crops the model reads
            faces = find_faces(self.model, frame, settings, threads=self.threads or 1)
        if not faces:
            return []
        with clock("model"):
            out = estimate(self.model, faces, self.pool)
        return [(face["box"], Measurement(float(out["age"][i]), float(out["age_low"][i]),
                                          float(out["age_high"][i]), float(out["gender_female"][i])))
                for i, face in enumerate(faces)]


class Followers:
    """Moves each track's box over the frames between detections.

    ``correlation``: one dlib.correlation_tracker per track, anchored on the box of the
    track's last detection. A tracker starts only when a frame between detections needs it,
    so with a detection on every frame none ever runs. ``hold``: boxes stay put.
    """

    def __init__(self, kind: str = "correlation"):
        if kind not in TRACKERS:
            raise ValueError(f"unknown tracker {kind!r}; choose one of {TRACKERS}")
        self.kind = kind
        self.trackers: dict = {}
        self.anchors: dict[int, tuple[np.ndarray, Box]] = {}

    def anchor(self, track_id: int, gray: np.ndarray, box: Box) -> None:
        self.anchors[track_id] = (gray, box)
        self.trackers.pop(track_id, None)

    def move(self, gray: np.ndarray, track_ids) -> dict[int, Box]:
        if self.kind == "hold":
            return {}
        import dlib
        moved = {}
        for track_id in track_ids:
            if track_id in self.anchors:
                start, box = self.anchors.pop(track_id)
                self.trackers[track_id] = dlib.correlation_tracker()
                self.trackers[track_id].start_track(start, dlib.rectangle(*map(int, box)))
            tracker = self.trackers.get(track_id)
            if tracker is not None:
                tracker.update(gray)
                p = tracker.get_position()
                moved[track_id] = (round(p.left()), round(p.top()), round(p.right()), round(p.bottom()))
        return moved

    def drop(self, track_ids) -> None:
        for track_id in track_ids:
            self.trackers.pop(track_id, None)
            self.anchors.pop(track_id, None)


def watch(source: Source, estimator: FaceEstimator, settings: Settings, outputs: Outputs,
          stop: Callable[[], bool] = lambda: False, say: Callable[[str], None] = print,
          progress: Callable[[int], object] = lambda n: None) -> dict:
    """Runs the video through; returns counts and per-stage seconds. Stops early when
    ``stop()`` turns true or on KeyboardInterrupt, still closing every open track."""
    width, height = source.size
    tracks = TrackSet(width, height, settings.buffer, settings.average, settings.max_misses, settings.min_iou,
                      interval=estimator.model.interval)
    followers = Followers(settings.tracker)
    clock = Stopwatch()
    frames, last_detection, interrupted = 0, None, False
    start = time.perf_counter()
    try:
        stream = read_frames(source, say)
        while not (settings.max_frames and frames >= settings.max_frames):
            if stop():
                interrupted = True
                break
            with clock("decode"):
                index, frame = next(stream, (None, None))
            if frame is None:
                break
            now = (time.perf_counter() - start) if source.camera else index / source.fps
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            # counted from the last detection, not index % every: a skipped frame must not cost a round
            if last_detection is None or index - last_detection >= settings.every:
                last_detection = index
                found = estimator(frame, clock)
                with clock("track"):
                    update = tracks.detect(index, now, found)
                    for track in tracks.open.values():
                        if track.misses == 0:  # detected on this frame: re-anchor its tracker
                            followers.anchor(track.id, gray, track.box)
            else:
                with clock("track"):
                    update = tracks.follow(index, now, followers.move(gray, list(tracks.open)))
            followers.drop(track.id for track in update.closed)
            with clock("write"):
                outputs.write(update)
            if outputs.writer is not None:
                with clock("annotate"):
                    annotate(frame, list(tracks.open.values()))
                with clock("encode"):
                    outputs.frame(frame)
            frames += 1
            progress(1)
    except KeyboardInterrupt:
        interrupted = True
    with clock("write"):
        outputs.write(tracks.close_all(INTERRUPTED if interrupted else ENDED))
    seconds = time.perf_counter() - start
    return {"source": source.name, "frames": frames, "skipped_frames": source.skipped,
            "missing_frames": source.missing, "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 2) if seconds else None, "tracks": outputs.closed,
            "interrupted": interrupted, "stage_seconds": {k: round(v, 4) for k, v in clock.seconds.items()},
            "settings": asdict(settings)}
