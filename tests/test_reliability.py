"""Reliability II: nothing silently wrong, nothing half-written. Each case a careless or hostile
user met (issue 37), on a real file or process made here, through the real command: the
message it prints, its exit status and what it leaves on disk."""
import csv
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLE, link_images, manifest_rows, run_regions, sample_files

BIN = Path(sys.executable).parent
GOOD = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"


def command(name: str, *args, timeout: int = 240, **kwargs) -> subprocess.CompletedProcess:
    path = shutil.which(name) or str(BIN / name)
    return subprocess.run([path, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          **kwargs)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp-*"))


# -- labels and inputs ------------------------------------------------------------------------

def test_one_image_listed_twice_with_two_ages_is_named_with_both_rows_and_ages_and_kept_by_neither(tmp_path):
    first, second, third = sample_files(3)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,age\n{first},27\n{second},40\n{first},70\n{third},33\n{third},33\n")
    result = run_regions(tmp_path, "--cache", tmp_path / "cache", "--labels", labels, "--workers", 1, check=False)
    no_traceback(result)
    assert result.returncode == 1
    assert (f"skipped {labels}:4 ({first}): the same image as {labels}:2, with another label (age 70 here, "
            f"age 27 there): both rows left out") in result.stderr
    assert f"skipped {labels}:6 ({third}): the same image and label as {labels}:5: kept once" in result.stderr
    assert "1 image(s) listed again with another label (named above) were left out" in result.stderr
    assert sorted(r["age"] for r in manifest_rows(tmp_path / "cache")) == [33, 40]  # the rest goes on


def test_an_animated_gif_in_a_folder_without_labels_is_read_from_its_first_frame_and_named(tmp_path):
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(GOOD, folder / "person.jpg")  # no UTKFace name: a label-free folder
    chip = Image.open(sample_files(1, offset=60)[0]).convert("RGB")
    chip.save(folder / "moving.gif", save_all=True, append_images=[chip.rotate(90), chip.rotate(180)])
    result = run_regions(folder, "--cache", tmp_path / "cache", "--workers", 1)
    no_traceback(result)
    assert f"{folder / 'moving.gif'}: an animated GIF of 3 frames: its first frame is read" in result.stderr
    rows = {Path(r["source"]).name: r for r in manifest_rows(tmp_path / "cache")}
    assert set(rows) == {"person.jpg", "moving.gif"} and rows["moving.gif"]["status"] == "ok"


@pytest.mark.parametrize("limit, original, failing", [
    (14_000, 100, "manifest.jsonl"),  # small crops: the manifest outgrows the limit after a few rows
    (12_000, 400, ".jpg"),            # a 400-px original crop is over the limit: its write fails
])
def test_a_full_disk_names_the_file_and_leaves_only_whole_listed_files_then_the_rerun_finishes(
        limit, original, failing, tmp_path):
    """``ulimit -f``: a write past the limit fails with EFBIG, as one on a full disk with ENOSPC."""
    folder = link_images(tmp_path / "images", sample_files(10))
    cache = tmp_path / "cache"
    sizes = ["--original-size", original, "--face-size", 96, "--face-chip-size", 96]
    limited = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    result = subprocess.run([sys.executable, "-m", "agefuse.regions.cli", *map(str, [folder, "--cache", cache,
                             "--workers", 2, *sizes])], capture_output=True, text=True, cwd=ROOT, preexec_fn=limited)
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    line, = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{cache}" in line and failing in line and ": cannot be written (File too large)" in line, line
    assert "no file is left half-written: make room, then run the same command again" in line
    rows = manifest_rows(cache)  # every line whole
    listed = {rel for row in rows for rel in row.get("crops", {}).values()}
    on_disk = {str(p.relative_to(cache)) for p in cache.glob("*/*/*")}
    assert on_disk == listed and not leftovers(cache)
    result = run_regions(folder, "--cache", cache, "--workers", 2, *sizes)
    assert len(manifest_rows(cache)) == 10


def test_a_manifest_whose_last_row_is_cut_is_named_by_the_audit_which_goes_on_and_exits_1(tmp_path):
    cache = tmp_path / "cache"
    run_regions(link_images(tmp_path / "images", sample_files(8)), "--cache", cache, "--workers", 2)
    path = cache / "manifest.jsonl"
    text = path.read_text()
    path.write_text(text[:-len(text.splitlines()[-1]) // 2 - 1])  # the last row cut half-way
    result = command("agefuse-audit", "--cache", cache, "--out", tmp_path / "audit")
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    assert (f"{path}:8: the last row is cut short (a run was killed while writing it); left out until "
            f"agefuse-regions makes it again") in result.stderr
    assert f"1 row of {path} was cut short (named above) and not audited" in result.stderr
    with (tmp_path / "audit" / "suspects.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 7


# -- a model on a cache cut otherwise ---------------------------------------------------------

@pytest.fixture(scope="module")
def upsampled_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upsampled")
    run_regions(link_images(root / "images", sample_files(6)), "--cache", root / "cache", "--workers", 2,
                "--upsample", 1, "--original-size", 180)
    return root / "cache"


@pytest.mark.parametrize("name, args", [
    ("agefuse-evaluate", ["--cache", "{cache}", "--split", "all", "--out", "{tmp}/eval"]),
    ("agefuse-audit", ["--cache", "{cache}", "--out", "{tmp}/audit"]),
])
def test_a_model_on_a_cache_cut_with_other_crop_settings_is_refused_by_name(name, args, upsampled_cache, tmp_path):
    result = command(name, *(a.format(cache=upsampled_cache, tmp=tmp_path) for a in args))
    no_traceback(result)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert (f"error: {upsampled_cache} was cut with other crop settings than the installed model learned from "
            f"(upsample: 1 in the cache, 0 in the model; original size: 180x180 in the cache, 200x200 in the model)"
            in result.stderr)
    assert not (tmp_path / "eval" / "evaluation.json").exists() and not (tmp_path / "audit").exists()


# -- agefuse-evaluate as easy as agefuse-predict ----------------------------------------------

def test_evaluate_defaults_to_the_installed_model_and_a_photo_the_detector_missed_is_a_miss(tmp_path):
    """A chip in a photo is found; a photo without a face is a miss, not scored from the whole
    photo; a chip-like image without a detectable face is scored whole, and said so."""
    folder = tmp_path / "photos"
    folder.mkdir()
    canvas = np.full((480, 640, 3), 200, np.uint8)
    canvas[140:340, 220:420] = cv2.imread(str(GOOD))
    cv2.imwrite(str(folder / "35_0_3_20990101000000001.jpg"), canvas)                      # found
    cv2.imwrite(str(folder / "40_1_0_20990101000000002.jpg"), np.full((480, 640, 3), 90, np.uint8))  # a miss
    blurred = cv2.GaussianBlur(cv2.imread(str(GOOD)), (0, 0), 12)
    cv2.imwrite(str(folder / "36_0_3_20990101000000003.jpg.chip.jpg"), blurred)             # chip-like, missed
    result = command("agefuse-evaluate", "--images", folder, "--out", tmp_path / "eval", "--upsample", 0,
                     "--workers", 1)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert f"no face found: {folder / '40_1_0_20990101000000002.jpg'} (a miss: not evaluated)" in result.stdout
    assert (f"no face found: {folder / '36_0_3_20990101000000003.jpg.chip.jpg'} (a chip-like image: scored from "
            f"the whole image)") in result.stdout
    assert ("faces found in 1 of 3 readable images (33.3%); 1 missed, 1 chip-like image(s) scored from the whole "
            "image") in result.stdout
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    images = report["images"]
    assert (images["evaluated"], images["faces found"], images["missed (not scored)"], images["found_rate"]) == \
        (2, 1, 1, 0.3333)
    assert report["model"] == "the installed model"
    with (tmp_path / "eval" / "predictions.csv").open() as handle:
        scored = sorted(Path(r["source"]).name for r in csv.DictReader(handle))
    assert scored == ["35_0_3_20990101000000001.jpg", "36_0_3_20990101000000003.jpg.chip.jpg"]


# -- the Python API ---------------------------------------------------------------------------

@pytest.mark.parametrize("image, channels, error, message", [
    (np.zeros((0, 0), np.uint8), None, ValueError, r"too small: 0 x 0 pixels \(at least 16 a side\)"),
    (np.zeros((40, 40), np.uint8), "xyz", ValueError, r"channels='xyz': an array's channel order is 'rgb'"),
])
def test_an_empty_array_or_an_unknown_channel_order_is_one_clear_error(image, channels, error, message):
    import agefuse
    with pytest.raises(error, match=message):
        agefuse.estimate(image, channels=channels)


def test_an_array_over_the_pixel_limit_is_refused_as_its_file_would_be_before_any_copy():
    import time

    import agefuse
    from agefuse.regions import TooLarge
    huge = np.broadcast_to(np.zeros(3, np.uint8), (20000, 20000, 3))  # 1.2 GB as an array, no memory here
    start = time.perf_counter()
    with pytest.raises(TooLarge, match=r"too large: 20000 x 20000 pixels \(the limit is 100 M pixels\)"):
        agefuse.estimate(huge, channels="bgr")
    assert time.perf_counter() - start < 5


# -- a branch run killed while it writes its checkpoints --------------------------------------

KILL_AT_BEST = """
import os, signal, sys, torch
from agefuse.branches import train
real_save = torch.save
def save(state, path, *args, **kwargs):  # the best.pt temporary half written, then a real SIGKILL
    real_save(state, path, *args, **kwargs)
    if os.path.basename(str(path)).startswith(".best.pt.tmp-"):
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sys.argv[0] = "agefuse-train-branch"
sys.exit(train.run())
"""


def test_a_kill_while_best_pt_is_written_is_repaired_by_resume_and_its_temporary_removed(hog_cache, tmp_path):
    import signal

    import torch
    out = tmp_path / "run"
    args = ["--cache", hog_cache, "--region", "face", "--out", out, "--model", "small_cnn", "--image-size", 32,
            "--batch-size", 32, "--workers", 0, "--threads", 2, "--max-rounds", 1]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_BEST, *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    tmp, = out.glob(".best.pt.tmp-*")
    assert (out / "last.pt").is_file() and not (out / "best.pt").exists() and not (out / "history.json").exists()
    resumed = command("agefuse-train-branch", *args, "--resume")
    no_traceback(resumed)
    assert resumed.returncode == 0, resumed.stderr
    said = resumed.stdout + resumed.stderr
    assert f"{tmp}: removed (a write that was killed before it finished)" in said
    assert (f"{out / 'best.pt'}: held no round, but round 0 was the best (a kill before it was written): "
            f"rewritten from {out / 'last.pt'}") in said
    assert f"{out / 'history.json'}: rewritten from {out / 'last.pt'} (rounds 0-0)" in said
    assert "nothing to do" in said and not leftovers(out)
    best, last = (torch.load(out / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert best["round"] == last["round"] == last["stop"]["best_round"] == 0
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert [row["round"] for row in json.loads((out / "history.json").read_text())] == [0]


# -- a video cut short ------------------------------------------------------------------------

def faststart(data: bytes) -> bytes:
    """An MP4 with its index (``moov``) moved in front of the frames (``mdat``), as a camera or
    ``ffmpeg -movflags faststart`` writes it; OpenCV writes it last. Every chunk offset moves
    by the index's length."""
    def boxes(blob: bytes):
        at = 0
        while at + 8 <= len(blob):
            size = int.from_bytes(blob[at:at + 4], "big")
            yield blob[at + 4:at + 8], blob[at:at + size]
            at += size

    def shifted(box: bytes, by: int) -> bytes:
        kind = box[4:8]
        if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
            return box[:8] + b"".join(shifted(child, by) for _, child in boxes(box[8:]))
        if kind == b"stco":
            count = int.from_bytes(box[12:16], "big")
            offsets = [int.from_bytes(box[16 + 4 * i:20 + 4 * i], "big") + by for i in range(count)]
            return box[:16] + b"".join(o.to_bytes(4, "big") for o in offsets)
        return box

    parts = dict(boxes(data))
    assert set(parts) >= {b"ftyp", b"mdat", b"moov"} and b"co64" not in parts[b"moov"]
    head = b"".join(box for kind, box in boxes(data) if kind not in (b"mdat", b"moov"))
    return head + shifted(parts[b"moov"], len(parts[b"moov"])) + parts[b"mdat"]


def test_an_mp4_cut_at_60_percent_counts_and_names_its_missing_frames_and_exits_1(tmp_path):
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(tmp_path / "whole.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(30):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    data = faststart((tmp_path / "whole.mp4").read_bytes())
    assert cv2.VideoCapture(str(tmp_path / "whole.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 30
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 6 // 10])
    result = command("agefuse-watch", "--source", cut, "--out", tmp_path / "out", "--video", "")
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    read, missing = summary["frames"], summary["missing_frames"]
    assert 0 < read < 30 and read + summary["skipped_frames"] + missing == 30
    assert (f"{cut}: frames {30 - missing}-29 of the 30 it lists could not be read ({missing} missing: the file is "
            f"cut short or damaged)") in result.stderr
    assert f"{missing} of the 30 frames {cut} lists were never read (named above)" in result.stderr


# -- the service and clients that go away ------------------------------------------------------

def test_a_client_gone_mid_upload_is_one_line_and_stalled_uploads_are_dropped_after_the_timeout(tmp_path):
    import http.client
    import socket
    import time
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([shutil.which("agefuse-serve") or str(BIN / "agefuse-serve"), "--port", str(port),
                               "--upload-timeout", "2", "--threads", "1"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: 50000\r\n\r\n").encode()

    def post(body: bytes) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/predict", body, {"content-type": "application/octet-stream"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())

    try:
        for _ in range(120):  # the model loads and its branches are traced first
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
                break
            except OSError:
                time.sleep(0.5)
        gone = socket.create_connection(("127.0.0.1", port))
        gone.sendall(head + GOOD.read_bytes()[:1000])
        gone.close()  # the rest of the body never comes
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        for client in stalled:
            client.sendall(head + b"\xff" * 1000)
        start = time.perf_counter()
        status, answer = post(GOOD.read_bytes())  # others are answered meanwhile
        assert status == 200 and len(answer["faces"]) == 1
        for client in stalled:
            client.settimeout(20)
            reply = b""
            while chunk := client.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in reply, reply[:200]
            client.close()
        assert time.perf_counter() - start < 15
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert "Traceback" not in stderr and "ClientDisconnect" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    assert sum(line.startswith("agefuse-serve: 127.0.0.1:") and line.endswith("disconnected mid-upload; dropped")
               for line in lines) == 1, stderr
    assert sum(line.endswith("sent no whole upload within 2 s (--upload-timeout); dropped") for line in lines) == 8
