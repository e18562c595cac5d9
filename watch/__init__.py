"""watch: age and gender of the faces in a video or a camera, averaged over time per face.

Command: ``agefuse-watch --source VIDEO_OR_CAMERA_INDEX --model FUSED/fused.pt --out OUT``
(``agefuse.watch.cli``). Reads: a video file or a camera (OpenCV), the fused model of
agefuse-train-fusion. Writes: ``OUT/timeline.csv``, ``OUT/tracks.jsonl``,
``OUT/annotated.mp4``, ``OUT/summary.json`` (see docs/formats.md).
``agefuse.watch.tracks`` is the track and buffer logic alone (no video, no model);
``watch(source, ...)`` runs a source through detection, estimation and tracking.
"""
from .loop import FaceEstimator, Settings, Stopwatch, watch
from .video import Outputs, open_source

__all__ = ["FaceEstimator", "Outputs", "Settings", "Stopwatch", "open_source", "watch"]
