"""Faces followed across video frames, each with a bounded buffer of age and gender
measurements and their robust running average. Pure logic: no video, no model, no files.

How a track lives (one ``TrackSet`` keeps them all):

- On a detection frame every face found comes with a measurement (age, its interval,
  P(female)). Detections are matched to open tracks by box overlap (IoU, greedy, best pair
  first: with a handful of faces that is what an optimal assignment gives). A matched track
  takes the measurement into its buffer; a detection left over starts a track; a track left
  over counts a miss and is closed after ``max_misses`` detection rounds in a row (as one
  that left the frame if its box then reaches past the frame's edge).
- Between detection frames the caller moves each box (a correlation tracker, or nothing)
  with ``follow``. A box mostly outside the frame has left it: its track is closed.
- Timeline rows of the frames after a track's last detection are held until a detection
  confirms that the face was still there. A track that is lost or leaves keeps only the
  frames up to its last detection, so the timeline never shows a box that the tracker
  dragged over the background. At the end of the video (or on Ctrl-C) the held rows are
  written: nothing contradicts them.

Memory is bounded whatever the video's length: a buffer keeps the last ``buffer``
measurements, held rows are at most ``max_misses`` detection intervals, and a closed track
is handed back to be written out and dropped.
"""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

Box = tuple[int, int, int, int]  # left, top, right, bottom, in pixels
# The mean: by the triangle inequality its error is never above the mean error of the
# estimates it averages. The median: one bad frame (blur, a profile view) cannot move it.
AVERAGES = ("mean", "median")

# Why a track was closed (the ``closed`` field of tracks.jsonl).
LEFT, LOST, ENDED, INTERRUPTED = "left the frame", "lost", "end of video", "interrupted"


@dataclass(frozen=True)
class Measurement:
    """One frame's estimate of one face, from the fused model."""
    age: float
    age_low: float
    age_high: float
    female: float  # P(female)


@dataclass(frozen=True)
class Running:
    """The average over a track's buffer: ``age ± spread``, and P(female)."""
    age: float
    spread: float
    female: float
    count: int

    @property
    def gender(self) -> str:
        return "female" if self.female >= 0.5 else "male"


def running_estimate(buffer: list[Measurement] | deque, average: str = "mean",
                     interval: float = 0.8) -> Running:
    """The buffer's age (median or mean) with its standard error, and mean P(female).

    The spread says how steady the average is, not how right: it shrinks as 1/sqrt(n)
    with n measurements, but a model that misjudges a face does so on every frame. With few
    measurements their scatter says little (one has none), so the model's own per-frame
    uncertainty (the width of its interval) counts as one more squared deviation; with
    many, the observed scatter dominates. The median's scatter is measured by the median
    absolute deviation, which one bad frame (a poor landmark fit) does not inflate.
    """
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; choose one of {AVERAGES}")
    ages = [m.age for m in buffer]
    n = len(ages)
    if n == 0:
        raise ValueError("no measurement to average")
    z = statistics.NormalDist().inv_cdf(0.5 + interval / 2)
    model_sigma = statistics.fmean((m.age_high - m.age_low) / (2 * z) for m in buffer)
    if average == "median":
        centre = statistics.median(ages)
        scatter = 1.4826 * statistics.median(abs(a - centre) for a in ages) if n > 1 else 0.0
        efficiency = 1.2533  # the median of n normal draws varies sqrt(pi/2) times more than their mean
    else:
        centre = statistics.fmean(ages)
        scatter = statistics.stdev(ages) if n > 1 else 0.0
        efficiency = 1.0
    per_frame = ((model_sigma ** 2 + (n - 1) * scatter ** 2) / n) ** 0.5
    return Running(age=centre, spread=efficiency * per_frame / n ** 0.5,
                   female=statistics.fmean(m.female for m in buffer), count=n)


def iou(a: Box, b: Box) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(tracks: dict[int, Box], detections: list[Box], min_iou: float = 0.3) -> dict[int, int]:
    """Track id -> detection index, greedily by IoU, best pair first, pairs below ``min_iou``
    left unmatched."""
    pairs = sorted(((iou(box, det), tid, d) for tid, box in tracks.items() for d, det in enumerate(detections)),
                   key=lambda p: -p[0])
    matched, taken = {}, set()
    for overlap, tid, d in pairs:
        if overlap < min_iou:
            break
        if tid not in matched and d not in taken:
            matched[tid] = d
            taken.add(d)
    return matched


def visible_fraction(box: Box, width: int, height: int) -> float:
    left, top, right, bottom = box
    area = max(1, (right - left) * (bottom - top))
    inside = max(0, min(right, width) - max(left, 0)) * max(0, min(bottom, height) - max(top, 0))
    return inside / area


@dataclass
class Track:
    id: int
    box: Box
    buffer: deque                   # the last measurements, deque(maxlen=buffer)
    running: Running | None = None
    measurements: int = 0           # all taken, including those the buffer has let go
    misses: int = 0                 # detection rounds in a row without this face
    held: list = field(default_factory=list)  # rows since the last detection, unconfirmed
    first_frame: int | None = None  # of the rows written
    last_frame: int | None = None
    first_time: float | None = None
    last_time: float | None = None
    frames: int = 0                 # rows written
    closed: str | None = None       # why, once closed
    final: dict | None = None       # the final estimate, once closed

    def summary(self, average: str) -> dict:
        """The final estimate, as tracks.jsonl holds it."""
        r = self.running
        return {"track": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "frames": self.frames, "first_time_s": self.first_time, "last_time_s": self.last_time,
                "measurements": self.measurements, "buffered": r.count, "average": average,
                "age": round(r.age, 2), "spread": round(r.spread, 2), "gender": r.gender,
                "female": round(r.female, 3), "closed": self.closed}


@dataclass
class Update:
    """What one frame changed: timeline rows now confirmed (frame order), tracks closed."""
    rows: list[dict] = field(default_factory=list)
    closed: list[Track] = field(default_factory=list)


class TrackSet:
    def __init__(self, width: int, height: int, buffer: int = 30, average: str = "mean",
                 max_misses: int = 2, min_iou: float = 0.3, min_visible: float = 0.5, interval: float = 0.8):
        if average not in AVERAGES:
            raise ValueError(f"unknown average {average!r}; choose one of {AVERAGES}")
        if buffer < 1 or max_misses < 1:
            raise ValueError("the buffer and max_misses must be at least 1")
        self.width, self.height = width, height
        self.buffer, self.average, self.max_misses = buffer, average, max_misses
        self.min_iou, self.min_visible, self.interval = min_iou, min_visible, interval
        self.open: dict[int, Track] = {}
        self.next_id = 1

    def detect(self, frame: int, time: float, detections: list[tuple[Box, Measurement]]) -> Update:
        """A detection frame: every face found with its measurement."""
        update = Update()
        matched = match({t.id: t.box for t in self.open.values()}, [box for box, _ in detections], self.min_iou)
        for track in list(self.open.values()):
            if track.id in matched:
                box, measurement = detections[matched[track.id]]
                self._measure(track, box, measurement, frame, time, update)
            else:
                track.misses += 1
                track.held.append(self._row(track, frame, time))
                visible = visible_fraction(track.box, self.width, self.height)
                if visible < self.min_visible:
                    self._close(track, LEFT, update)
                elif track.misses >= self.max_misses:
                    # the tracker lags a face going out (it sees only the part still inside):
                    # a box past the edge when the detector lost it was a face leaving
                    self._close(track, LEFT if visible < 1 else LOST, update)
        for d in sorted(set(range(len(detections))) - set(matched.values())):
            track = Track(self.next_id, detections[d][0], deque(maxlen=self.buffer))
            self.open[track.id] = track
            self.next_id += 1
            self._measure(track, *detections[d], frame, time, update)
        update.rows.sort(key=lambda row: (row["frame"], row["track"]))
        return update

    def follow(self, frame: int, time: float, moved: dict[int, Box]) -> Update:
        """A frame between detections: boxes moved by the tracker (a track not in ``moved``
        keeps its box)."""
        update = Update()
        for track in list(self.open.values()):
            track.box = tuple(moved.get(track.id, track.box))
            if visible_fraction(track.box, self.width, self.height) < self.min_visible:
                self._close(track, LEFT, update)
            else:
                track.held.append(self._row(track, frame, time))
        return update

    def close_all(self, reason: str) -> Update:
        """The end (or an interruption): held rows written, every open track closed."""
        update = Update()
        for track in list(self.open.values()):
            self._emit(track, update)
            self._close(track, reason, update)
        update.rows.sort(key=lambda row: (row["frame"], row["track"]))
        return update

    def _measure(self, track: Track, box: Box, measurement: Measurement, frame: int, time: float,
                 update: Update) -> None:
        track.box, track.misses = tuple(box), 0
        track.buffer.append(measurement)
        track.measurements += 1
        track.running = running_estimate(track.buffer, self.average, self.interval)
        track.held.append(self._row(track, frame, time, measurement))
        self._emit(track, update)

    def _emit(self, track: Track, update: Update) -> None:
        """The held rows are confirmed: they go to the timeline."""
        for row in track.held:
            if track.first_frame is None:
                track.first_frame, track.first_time = row["frame"], row["time_s"]
            track.last_frame, track.last_time = row["frame"], row["time_s"]
            track.frames += 1
        update.rows.extend(track.held)
        track.held = []

    def _close(self, track: Track, reason: str, update: Update) -> None:
        track.closed, track.held = reason, []  # unconfirmed rows go with it
        track.final = track.summary(self.average)
        del self.open[track.id]
        update.closed.append(track)

    def _row(self, track: Track, frame: int, time: float, measurement: Measurement | None = None) -> dict:
        left, top, right, bottom = track.box
        r = track.running
        row = {"frame": frame, "time_s": round(time, 3), "track": track.id,
               "left": max(0, left), "top": max(0, top),
               "right": min(self.width - 1, right), "bottom": min(self.height - 1, bottom),
               "source": "detector" if measurement else "tracker",
               "age": "", "age_low": "", "age_high": "", "female": "",
               "running_age": round(r.age, 2), "running_spread": round(r.spread, 2),
               "running_gender": r.gender, "running_female": round(r.female, 3), "measurements": r.count}
        if measurement:
            row.update(age=round(measurement.age, 2), age_low=measurement.age_low,
                       age_high=measurement.age_high, female=round(measurement.female, 3))
        return row


TIMELINE_FIELDS = ("frame", "time_s", "track", "left", "top", "right", "bottom", "source", "age", "age_low",
                   "age_high", "female", "running_age", "running_spread", "running_gender", "running_female",
                   "measurements")
