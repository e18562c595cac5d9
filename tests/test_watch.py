"""agefuse-watch: the track and buffer logic alone, then the command on synthetic videos of
bundled sample faces moving over a background."""
import contextlib
import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from collections import deque

import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLE

from agefuse.watch import cli
from agefuse.watch.tracks import ENDED, LEFT, LOST, Measurement, TrackSet, running_estimate

STAYING = SAMPLE / "4_1_4_20170103212605868.jpg.chip.jpg"    # aged 4: stays to the end
LEAVING = SAMPLE / "65_1_0_20170110160643923.jpg.chip.jpg"   # aged 65: leaves through the right edge
FRAMES, EVERY, CORRUPT = 40, 3, 7  # frame 7 is not a detection frame, so the cadence holds


def measured(age: float, female: float = 0.2, width: float = 20.0) -> Measurement:
    return Measurement(age, age - width / 2, age + width / 2, female)


def write_video(path, faces, frames, size=(640, 480), fps=10, seed=0):
    """MJPG frames: a gradient with fresh sensor noise on each frame (so no two estimates are
    the same) and 200-px faces, each ``(image, x0, y, dx)`` at x = x0 + dx * frame, cut at
    the frame's edge."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.dstack([90 + xx / 8, 110 + yy / 8, 120 + (xx + yy) / 16])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for t in range(frames):
        frame = np.clip(background + rng.normal(0, 6, background.shape), 0, 255).astype(np.uint8)
        for image, x0, y, dx in faces:
            x = x0 + dx * t
            left, right = max(0, x), min(width, x + 200)
            if right > left:
                frame[y:y + 200, left:right] = image[:, left - x:right - x]
        writer.write(frame)
    writer.release()
    return path


def corrupt_frame(path, index):
    """Blanks the JPEG data of one frame of an MJPG AVI: FFmpeg then fails to decode it."""
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", data)]
    data[starts[index]:starts[index + 1] - 8] = bytes(starts[index + 1] - 8 - starts[index])
    path.write_bytes(bytes(data))


def read_outputs(out):
    rows = list(csv.DictReader((out / "timeline.csv").open()))
    tracks = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    return rows, tracks


# -- the track and buffer logic, no video --------------------------------------------------

def test_the_buffer_keeps_the_last_measurements_and_the_median_shrugs_off_a_bad_frame():
    tracks = TrackSet(640, 480, buffer=5, average="median")
    for frame in range(0, 100, 5):
        update = tracks.detect(frame, frame / 10, [((100, 100, 200, 200), measured(30 + frame / 5))])
    track = tracks.open[1]
    assert track.measurements == 20 and len(track.buffer) == 5  # bounded
    assert track.running.age == pytest.approx(47)  # median of 45..49, the last five
    assert update.rows[-1]["running_age"] == 47 and update.rows[-1]["measurements"] == 5
    steady = [measured(a) for a in (40, 41, 39, 40, 90)]
    assert running_estimate(steady, "median").age == 40
    assert running_estimate(steady, "mean").age == 50


def test_the_spread_narrows_as_measurements_accumulate():
    rng = np.random.default_rng(1)
    ages = 35 + rng.normal(0, 2, 30)
    spreads = [running_estimate(deque(measured(a) for a in ages[:n]), average).spread
               for average in ("mean", "median") for n in (1, 3, 10, 30)]
    for series in (spreads[:4], spreads[4:]):
        assert series == sorted(series, reverse=True) and series[-1] < series[0] / 4
    # one measurement: the model's own uncertainty (an 80% interval 20 wide, sd 7.8)
    assert spreads[0] == pytest.approx(10 / 1.2816, rel=1e-3)


def test_detections_continue_the_overlapping_tracks_and_start_new_ones():
    tracks = TrackSet(640, 480)
    tracks.detect(0, 0.0, [((10, 10, 110, 110), measured(20)), ((300, 10, 400, 110), measured(60))])
    # listed in the other order and moved a little: each continues its own track
    update = tracks.detect(5, 0.5, [((305, 12, 405, 112), measured(62)), ((14, 10, 114, 110), measured(22)),
                                    ((300, 300, 400, 400), measured(40))])
    assert sorted(tracks.open) == [1, 2, 3] and update.closed == []
    assert tracks.open[1].running.age == 21 and tracks.open[2].running.age == 61
    assert [(r["frame"], r["track"]) for r in update.rows] == [(5, 1), (5, 2), (5, 3)]


def test_a_lost_track_keeps_only_the_frames_up_to_its_last_detection():
    tracks = TrackSet(640, 480, max_misses=2)
    rows = tracks.detect(0, 0.0, [((10, 10, 110, 110), measured(20))]).rows
    for frame in range(1, 11):
        if frame % 5:
            update = tracks.follow(frame, frame / 10, {1: (10 + frame, 10, 110 + frame, 110)})
        else:
            update = tracks.detect(frame, frame / 10, [])
        rows += update.rows
    assert [r["frame"] for r in rows] == [0]  # the tracker-only frames were never confirmed
    (track,) = update.closed
    assert track.closed == LOST and track.final["frames"] == 1 and track.final["last_frame"] == 0
    assert track.final["age"] == 20 and not tracks.open


def test_a_track_whose_box_leaves_the_frame_is_closed_and_held_rows_are_written_at_the_end():
    tracks = TrackSet(640, 480)
    tracks.detect(0, 0.0, [((500, 10, 600, 110), measured(20)), ((10, 10, 110, 110), measured(50))])
    update = tracks.follow(1, 0.1, {1: (580, 10, 680, 110), 2: (12, 10, 112, 110)})
    assert update.closed == [] and update.rows == []  # 60% inside: still there; rows held
    update = tracks.follow(2, 0.2, {1: (600, 10, 700, 110), 2: (14, 10, 114, 110)})
    assert [t.closed for t in update.closed] == [LEFT] and update.closed[0].final["last_frame"] == 0
    final = tracks.close_all(ENDED)
    assert [(r["frame"], r["track"], r["source"]) for r in final.rows] == [(1, 2, "tracker"), (2, 2, "tracker")]
    assert final.closed[0].final["frames"] == 3 and final.closed[0].final["closed"] == ENDED


def test_memory_stays_bounded_over_a_long_stream_of_passers_by():
    tracks, every, closed = TrackSet(640, 480, buffer=10, max_misses=2), 5, 0
    for frame in range(20_000):  # a face every 100 frames crossing at 6 px a frame: two at most at once
        if frame % every:  # a tracker that follows each face exactly
            update = tracks.follow(frame, frame / 25, {t.id: (t.box[0] + 6, t.box[1], t.box[2] + 6, t.box[3])
                                                       for t in tracks.open.values()})
        else:
            xs = [-50 + 6 * (frame - start) for start in range(frame // 100 * 100 - 100, frame + 1, 100)]
            update = tracks.detect(frame, frame / 25, [((x, 100, x + 100, 200), measured(30))
                                                       for x in xs if 0 <= x and x + 100 < 640])
        closed += len(update.closed)
        assert len(tracks.open) <= 2
        assert all(len(t.buffer) <= 10 and len(t.held) < 2 * every for t in tracks.open.values())
    assert closed >= 199  # every passer-by was closed and handed back; none is kept


# -- the command on synthetic videos --------------------------------------------------------

@pytest.fixture(scope="module")
def two_faces(sample_fused, tmp_path_factory):
    """40 frames at 10 fps: a 4-year-old staying top left, drifting right; a 65-year-old
    bottom right, moving 12 px a frame out through the right edge (whole until frame 11, half
    gone from frame 29); frame 7 corrupt. Detection every 3rd frame."""
    root = tmp_path_factory.mktemp("watch")
    path = write_video(root / "two.avi", [(cv2.imread(str(STAYING)), 20, 20, 2),
                                          (cv2.imread(str(LEAVING)), 300, 260, 12)], FRAMES)
    corrupt_frame(path, CORRUPT)
    args = cli.get_args_parser().parse_args(["--source", str(path), "--model", str(sample_fused),
                                             "--out", str(root / "out"), "--every", str(EVERY)])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    return {"code": code, "out": root / "out", "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_two_faces_make_two_tracks_and_the_departed_one_is_closed_with_its_estimate(two_faces):
    assert two_faces["code"] == 0
    rows, tracks = read_outputs(two_faces["out"])
    assert len(tracks) == 2
    leaving, staying = tracks  # written as each was closed: the one that left first
    frames = {t["track"]: [int(r["frame"]) for r in rows if int(r["track"]) == t["track"]] for t in tracks}
    # the staying face: every frame but the corrupt one
    assert frames[staying["track"]] == [f for f in range(FRAMES) if f != CORRUPT]
    assert staying["closed"] == ENDED and staying["frames"] == FRAMES - 1
    # the leaving face: every frame up to its last detection, a detection frame between the
    # last on which it was whole (11) and the first on which it was half gone (29)
    last = leaving["last_frame"]
    assert last % EVERY == 0 and 11 - EVERY < last < 29
    assert frames[leaving["track"]] == [f for f in range(last + 1) if f != CORRUPT]
    assert leaving["closed"] == LEFT and leaving["frames"] == last
    assert leaving["measurements"] == last // EVERY + 1
    last_row = [r for r in rows if int(r["track"]) == leaving["track"]][-1]
    assert float(last_row["running_age"]) == pytest.approx(leaving["age"], abs=0.01)
    assert f"track {leaving['track']}: frames 0-{last}" in two_faces["stdout"]
    assert f"frame {CORRUPT} could not be decoded, skipped" in two_faces["stderr"]
    video = cv2.VideoCapture(str(two_faces["out"] / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES - 1
    summary = json.loads((two_faces["out"] / "summary.json").read_text())
    assert summary["frames"] == FRAMES - 1 and summary["skipped_frames"] == 1 and summary["tracks"] == 2


def test_the_running_estimate_is_no_worse_than_a_single_frame(two_faces):
    rows, tracks = read_outputs(two_faces["out"])
    for track, truth in zip(tracks, (65, 4)):
        estimates = [float(r["age"]) for r in rows if int(r["track"]) == track["track"] and r["source"] == "detector"]
        assert len(estimates) == track["measurements"] > 1
        assert len(set(estimates)) > 1, "noisy frames give differing estimates"
        per_frame_error = np.mean(np.abs(np.array(estimates) - truth))
        assert abs(track["age"] - truth) <= per_frame_error + 0.01, (track, estimates)  # rounding to 0.01
        spreads = [float(r["running_spread"]) for r in rows
                   if int(r["track"]) == track["track"] and r["source"] == "detector"]
        assert spreads[-1] < spreads[0], "age ± spread narrows as evidence grows"


def run_watch(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "agefuse.watch.cli", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.parametrize("source, reason", [("missing.mp4", "no such file"),
                                            ("text.mp4", "not a video OpenCV can open"),
                                            ("truncated.avi", "no frame could be decoded"),
                                            ("7", "camera 7: cannot be opened")])
def test_a_source_that_cannot_be_watched_is_one_line_and_no_output(source, reason, sample_fused, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video")
    video = write_video(tmp_path / "video.avi", [], 3)
    (tmp_path / "truncated.avi").write_bytes(video.read_bytes()[:6000])  # headers, no frame
    source = source if source.isdigit() else tmp_path / source
    process = run_watch("--source", source, "--model", sample_fused, "--out", tmp_path / "out")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and reason in stderr, stderr
    assert str(source) in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_or_a_kill_closes_the_files_whole_and_writes_the_open_track(signum, sample_fused, tmp_path):
    """Ctrl-C, and what ``timeout``/``kill`` (SIGTERM) or a closed terminal (SIGHUP) send."""
    video = write_video(tmp_path / "long.avi", [(cv2.imread(str(STAYING)), 60, 20, 0)], 400, size=(320, 240))
    out = tmp_path / "out"
    process = run_watch("--source", video, "--model", sample_fused, "--out", out, "--every", 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        timeline = out / "timeline.csv"
        if timeline.is_file() and timeline.read_text().count("\n") > 5:
            break
        time.sleep(0.1)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and 5 <= summary["frames"] < 400
    rows, tracks = read_outputs(out)
    assert len(rows) == summary["frames"] and all(None not in r.values() and "" != r["running_age"] for r in rows)
    assert [t["closed"] for t in tracks] == ["interrupted"] and tracks[0]["frames"] == summary["frames"]
    annotated = cv2.VideoCapture(str(out / "annotated.mp4"))  # readable: its index was written on release
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]
