"""agefuse-watch: age and gender of every face in a video or a camera, steadier over time.

    agefuse-watch --source video.mp4 [--model runs/fused/fused.pt] [--out watch] [--every 5]
    agefuse-watch --source 0 --model runs/fused/fused.pt --max-frames 3000     # camera 0

Detects the faces every ``--every`` frames and estimates each with the fused model, follows
them in between with dlib's correlation tracker, and keeps per face (per track) its last
``--buffer`` estimates: their mean (or median) with its spread is the running estimate,
``age ± spread``, narrowing as estimates accumulate. Writes ``OUT/timeline.csv`` (every track
on every frame), ``OUT/tracks.jsonl`` (a track's final estimate, once it has left or the
video ends), ``OUT/annotated.mp4`` and ``OUT/summary.json``. Ctrl-C stops cleanly: the files
are closed whole, the open tracks' final estimates written, and the exit status is 130.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from agefuse.cli import HelpFormatter, existing_file, int_at_least, json_text, output_folder, run_command
from agefuse.regions import DETECTORS, FRAMING_HELP, FRAMINGS

from . import video
from .tracks import AVERAGES


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Age and gender of the faces in a video, averaged over time.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--source", required=True, help="a video file, or a camera's index (0, 1, ...)")
    parser.add_argument("--model", default=None, type=existing_file,
                        help="fused.pt from agefuse-train-fusion (default: the UTKFace model installed with agefuse)")
    parser.add_argument("--threads", type=int_at_least(1), default=os.cpu_count() or 1,
                        help="CPU cores for the model: its branches run side by side")
    parser.add_argument("--out", default="watch", type=output_folder,
                        help="folder for the timeline, the tracks and the video")
    parser.add_argument("--every", type=positive, default=5,
                        help="detect and estimate every N frames; the tracker follows the faces in between")
    parser.add_argument("--buffer", type=positive, default=30, help="estimates kept per track")
    parser.add_argument("--average", choices=AVERAGES, default="mean",
                        help="of a track's buffer. The mean's error is never above the estimates' mean "
                             "error; the median shrugs off a rare bad frame (blur, a profile view)")
    parser.add_argument("--max-misses", type=positive, default=2,
                        help="detection rounds in a row without the face before its track is closed")
    parser.add_argument("--tracker", choices=["correlation", "hold"], default="correlation",
                        help="dlib's correlation tracker between detections, or hold the boxes still")
    parser.add_argument("--detector", default=None, choices=DETECTORS,
                        help="face detector (default: the one the model's training cache used)")
    parser.add_argument("--upsample", type=int_at_least(0), default=None,
                        help="finds faces down to 40 px instead of 80; slower (default: as the model's cache)")
    parser.add_argument("--framing", default=None, choices=FRAMINGS, help=FRAMING_HELP)
    parser.add_argument("--video", default="annotated.mp4", help="annotated video's name in OUT (.mp4 or .avi)")
    parser.add_argument("--no-video", dest="video", action="store_const", const=None,
                        help="write no annotated video (saves the drawing and encoding time)")
    parser.add_argument("--max-frames", type=positive, default=None, help="stop after this many frames")
    return parser


class InterruptFlag:
    """The first Ctrl-C, SIGTERM (what ``timeout`` and ``kill`` send) or SIGHUP (a closed
    terminal) asks the loop to stop after the frame in hand, so no file is cut in the middle
    of a row and the video is closed whole; a second one interrupts at once (a
    KeyboardInterrupt, which the loop catches too)."""
    # Windows has no SIGHUP
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.requested, self.previous = False, {}

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


def main(args: argparse.Namespace) -> int:
    video.quiet_video_logs()
    source = video.open_source(args.source)
    try:
        # torch comes in with the loop: a wrong source is answered at once, without it
        from .loop import FaceEstimator, Settings, watch
        settings = Settings(every=args.every, buffer=args.buffer, average=args.average, max_misses=args.max_misses,
                            tracker=args.tracker, detector=args.detector, upsample=args.upsample, framing=args.framing,
                            max_frames=args.max_frames)
        estimator = FaceEstimator(args.model, args.detector, args.upsample, args.threads, args.framing)
        estimator.model  # noqa: B018 (a property read: loaded now, so a wrong model path fails before any output file exists)
        total = min(filter(None, (source.frame_count, args.max_frames)), default=None)
        with tqdm(total=total, desc="watch", unit="frame", disable=None, dynamic_ncols=True) as bar, \
                video.Outputs(args.out, source.fps, source.size, args.video, say=bar.write) as outputs, \
                InterruptFlag() as stop:
            summary = watch(source, estimator, settings, outputs, stop,
                            say=lambda line: bar.write(line, file=sys.stderr), progress=bar.update)
    except KeyboardInterrupt:  # before the loop began: nothing written yet
        print(f"interrupted: {args.source} not watched", file=sys.stderr)
        return 130
    finally:
        source.release()
    out = Path(args.out)
    (out / "summary.json").write_text(json_text(summary))
    written = ", ".join(str(out / name) for name in ("timeline.csv", "tracks.jsonl", args.video) if name)
    if summary["interrupted"]:
        print(f"interrupted after {summary['frames']} frames of {source.name}: {summary['tracks']} tracks "
              f"written to {written}", file=sys.stderr)
        return 130
    print(f"{summary['frames']} frames in {summary['seconds']:.1f} s ({summary['fps']:.1f} fps), "
          f"{summary['tracks']} tracks: {written}")
    if summary["missing_frames"]:  # a video watched in part is not a video watched
        print(f"{summary['missing_frames']} of the {source.frame_count} frames {source.name} lists were never read "
              f"(named above): its timeline ends at frame {summary['frames'] + summary['skipped_frames'] - 1}",
              file=sys.stderr)
        return 1
    return 0


def run() -> int:
    return run_command(get_args_parser, main, errors=(video.SourceError,))


if __name__ == "__main__":
    sys.exit(run())
