"""Video in and out: open a file or a camera, read its frames (a frame that fails to decode
is skipped and named), and stream what a watch writes (the timeline, the final estimate of
each closed track, the annotated video).

Every way a source can be unusable (a missing or unreadable file, a container or codec
OpenCV cannot decode, a camera that does not open) raises ``SourceError`` with one line
naming the source and the reason, before any output file is created.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .tracks import TIMELINE_FIELDS, Track, Update

CODECS = {".mp4": "mp4v", ".avi": "MJPG"}  # both ship with opencv-python-headless's FFmpeg
CAMERA_RETRIES = 25  # reads in a row a camera may fail (a USB hiccup) before it is given up


class SourceError(Exception):
    """A video source or output that cannot be used; the message is one line."""


def quiet_video_logs() -> None:
    """Silence FFmpeg's and OpenCV's own console lines (a corrupt frame, a missing camera):
    this command says what went wrong in one line of its own. Set OPENCV_FFMPEG_LOGLEVEL
    or OPENCV_LOG_LEVEL yourself to see them; FFmpeg reads it when first used."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@dataclass
class Source:
    capture: cv2.VideoCapture
    name: str
    camera: bool
    fps: float
    frame_count: int     # 0 when unknown (a camera)
    first: np.ndarray    # the first frame, read when opening: a source with none is refused
    skipped: int = 0     # frames that failed to decode, with a decoded frame after them
    missing: int = 0     # frames the file lists that never came: it is cut short or damaged at the end

    @property
    def size(self) -> tuple[int, int]:
        return self.first.shape[1], self.first.shape[0]

    def release(self) -> None:
        self.capture.release()


def open_source(source: str) -> Source:
    """A video file, or a camera by its index (``0``, ``1``...)."""
    if source.isdigit():
        capture = cv2.VideoCapture(int(source))
        if not capture.isOpened():
            raise SourceError(f"camera {source}: cannot be opened (no such device, in use, or no permission)")
        name, camera = f"camera {source}", True
    else:
        path = Path(source)
        if not path.exists():
            raise SourceError(f"{source}: no such file")
        if path.is_dir():
            raise SourceError(f"{source}: is a folder, not a video file")
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as err:
            raise SourceError(f"{source}: cannot be read ({err.strerror or err})") from None
        # FFmpeg alone: the other backends OpenCV would try print their own complaints
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise SourceError(f"{source}: not a video OpenCV can open (unknown container, or not a video)")
        name, camera = source, False
    first = None
    for _ in range(CAMERA_RETRIES if camera else 1):
        ok, first = capture.read()
        if ok:
            break
    if first is None or first.size == 0:
        capture.release()
        raise SourceError(f"{name}: no frame could be decoded (unsupported codec, or an empty or broken file)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 1 <= fps <= 240 else 25.0  # cameras often report 0 or nonsense
    count = 0 if camera else max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    return Source(capture, name, camera, fps, count, first)


def read_frames(source: Source, say: Callable[[str], None]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) in order. Indexes count every frame of the file, so a frame that
    fails to decode leaves a gap; it is named once the next one decodes. Frames the file's
    count lists that never come (a file cut short) are counted in ``source.missing`` and
    named at the end."""
    yield 0, source.first
    index, failed = 1, []
    while True:
        ok, frame = source.capture.read()
        if ok:
            if failed:
                say(f"{source.name}: frame{'s' if len(failed) > 1 else ''} "
                    f"{failed[0]}{f'-{failed[-1]}' if len(failed) > 1 else ''} could not be decoded, skipped")
                source.skipped += len(failed)
                failed = []
            yield index, frame
        elif source.camera:
            failed.append(index)
            if len(failed) >= CAMERA_RETRIES:
                say(f"{source.name}: stopped delivering frames")
                return
        elif index >= source.frame_count:
            if failed:
                source.missing = len(failed)
                say(f"{source.name}: frames {failed[0]}-{failed[-1]} of the {source.frame_count} it lists could "
                    f"not be read ({len(failed)} missing: the file is cut short or damaged)")
            return
        else:
            failed.append(index)
        index += 1


class Outputs:
    """The files of one watch, streamed as the video plays:

    ``timeline.csv``   one row per track and frame (``TIMELINE_FIELDS``)
    ``tracks.jsonl``   one line per track when it is closed: its final estimate
    ``annotated.mp4``  (``video``, optional) the frames with boxes, track ids and estimates

    Use it as a context manager: whatever stops the watch, the files are closed whole.
    """

    def __init__(self, folder: str | Path, fps: float, size: tuple[int, int], video: str | None = "annotated.mp4",
                 say: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.say, self.writer, self.handles = say, None, []
        if video:
            suffix = Path(video).suffix.lower()
            if suffix not in CODECS:
                raise SourceError(f"{video}: the annotated video must end in {' or '.join(CODECS)}")
            self.video_path = self.folder / video
            self.writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*CODECS[suffix]), fps, size)
            if not self.writer.isOpened():
                raise SourceError(f"{self.video_path}: cannot be written with the {CODECS[suffix]} codec")
        # line-buffered: a live camera's timeline can be followed with tail -f
        self.timeline_path, self.tracks_path = self.folder / "timeline.csv", self.folder / "tracks.jsonl"
        self.timeline_file = self.timeline_path.open("w", newline="", buffering=1)
        self.tracks_file = self.tracks_path.open("w", buffering=1)
        self.timeline = csv.DictWriter(self.timeline_file, TIMELINE_FIELDS)
        self.timeline.writeheader()
        self.closed = 0

    def write(self, update: Update) -> None:
        self.timeline.writerows(update.rows)
        for track in update.closed:
            self.closed += 1
            self.tracks_file.write(json.dumps(track.final) + "\n")
            self.say(describe(track))

    def frame(self, image: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.timeline_file.close()
        self.tracks_file.close()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe(track: Track) -> str:
    s = track.final
    return (f"track {s['track']}: frames {s['first_frame']}-{s['last_frame']} ({s['frames']}), "
            f"age {s['age']:.1f} ± {s['spread']:.1f} ({s['average']} of {s['buffered']}), "
            f"{s['gender']} ({max(s['female'], 1 - s['female']):.0%}); {s['closed']}")


def annotate(image: np.ndarray, tracks: list[Track]) -> np.ndarray:
    """Each open track drawn on the frame (in place): its box, id, running age ± spread
    and gender."""
    from agefuse.fusion import (
        draw_labelled_box,  # here, not at the top: it brings torch, which a bad source never needs
    )
    for track in tracks:
        r = track.running
        draw_labelled_box(image, track.box, f"#{track.id} {r.age:.0f} +/-{r.spread:.0f} {r.gender[0].upper()}",
                          r.gender == "female")
    return image
