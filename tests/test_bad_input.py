"""Bad input never stops a run, never leaks a traceback, never leaves stale data: each case
a careless or hostile user met, on a real file made here, through the real command."""
import csv
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLE, link_images, manifest_rows, run_regions, sample_files

BIN = Path(sys.executable).parent
GOOD = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"


def command(name: str, *args, timeout: int = 180) -> subprocess.CompletedProcess:
    path = shutil.which(name) or str(BIN / name)
    return subprocess.run([path, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]


def bomb_png(path: Path, width: int = 50000, height: int = 50000) -> Path:
    """A valid PNG header claiming ``width`` x ``height`` pixels, in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


class Payload:
    """A pickle that would create a file if anything unpickled it with code allowed."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile_models(tmp_path) -> dict[str, Path]:
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps(Payload(tmp_path / "code-ran")))
    return {"random bytes": tmp_path / "random.pt", "a pickle with code": tmp_path / "pickle.pt"}


# -- images ---------------------------------------------------------------------------------

def test_a_decompression_bomb_among_good_images_is_skipped_and_named_and_the_rerun_finishes(tmp_path):
    folder = link_images(tmp_path / "images", sample_files(3))
    bomb_png(folder / "30_0_0_20170101000000000.jpg.chip.jpg")  # a PNG under a UTKFace name
    for _ in range(2):  # the rerun does not stumble on it again: the rejection is cached
        result = run_regions(folder, "--cache", tmp_path / "cache", "--workers", 2, check=False)
        no_traceback(result)
        assert result.returncode == 1 and "1 image(s) could not be read" in result.stderr
        assert "too large: 50000 x 50000 pixels" in result.stderr
    rows = {r["id"]: r for r in manifest_rows(tmp_path / "cache")}
    assert sum(r["status"] != "rejected" for r in rows.values()) == 3
    assert "too large: 50000 x 50000" in next(r["reason"] for r in rows.values() if r["status"] == "rejected")


def test_an_image_whose_size_pillow_cannot_read_is_refused_not_decoded_without_a_limit(tmp_path):
    """OpenCV decodes a PNG whose text chunk fails its checksum (only warning); a bomb built so
    would pass a limit read from the header by Pillow. It is refused before any decoding."""
    from agefuse.regions import TooLarge, decode
    ok, png = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))
    png = png.tobytes()
    broken = png[:33] + struct.pack(">I", 3) + b"tEXtk\x00v" + b"\x00" * 4 + png[33:]  # after IHDR
    assert cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(ValueError, match="not a readable image"):
        decode(broken)
    assert decode(png).shape == (40, 40, 3)
    with pytest.raises(TooLarge, match="too large: 50000 x 50000 pixels"):
        decode(bomb_png(tmp_path / "bomb.png").read_bytes())


def test_a_complete_jpeg_with_data_appended_is_read_and_a_cut_one_is_refused():
    """Motion photos append a video (any bytes, markers included) after the end marker."""
    from agefuse.regions import decode
    data = GOOD.read_bytes()
    appended = data + b"\xff\xda\x00\x08" + np.random.default_rng(0).bytes(5000)
    assert decode(appended).shape == decode(data).shape
    with pytest.raises(ValueError, match="truncated JPEG"):
        decode(data[:len(data) * 2 // 3])


def test_predict_names_a_bomb_goes_on_with_the_good_photo_and_exits_1_with_a_count(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    result = command("agefuse-predict", bomb, GOOD, "--out", tmp_path / "out", "--no-annotate")
    no_traceback(result)
    assert result.returncode == 1
    assert f"{bomb}: too large: 50000 x 50000 pixels" in result.stderr
    assert "1 of 2 photos could not be read" in result.stderr
    assert json.loads((tmp_path / "out" / f"{GOOD.name}.json").read_text())["faces"]


@pytest.mark.parametrize("make, reason", [
    (lambda folder: cv2.imwrite(str(folder / "tiny.png"), np.zeros((1, 1, 3), np.uint8)) and folder / "tiny.png",
     "too small: 1 x 1 pixels"),
    (lambda folder: Path("/dev/zero"), "not a regular file"),
    (lambda folder: os.mkfifo(folder / "fifo.jpg") or folder / "fifo.jpg", "not a regular file"),
])
def test_a_tiny_image_a_device_or_a_fifo_is_one_line_and_never_hangs(make, reason, tmp_path):
    path = make(tmp_path)
    result = command("agefuse-predict", path, GOOD, "--out", tmp_path / "out", "--whole-image-fallback",
                     "--no-annotate", timeout=120)
    no_traceback(result)
    assert result.returncode == 1 and f"{path}: {reason}" in result.stderr
    assert (tmp_path / "out" / f"{GOOD.name}.json").is_file()


def test_two_photos_with_one_name_get_two_outputs(tmp_path):
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        shutil.copy(GOOD, tmp_path / folder / "photo.jpg")
    result = command("agefuse-predict", tmp_path / "d1" / "photo.jpg", tmp_path / "d2" / "photo.jpg",
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    first, second = (json.loads((tmp_path / "out" / name).read_text())
                     for name in ("photo.jpg.json", "photo-2.jpg.json"))
    assert first["photo"].endswith("d1/photo.jpg") and second["photo"].endswith("d2/photo.jpg")
    assert (tmp_path / "out" / "photo-2.jpg.annotated.jpg").is_file()


# -- models and other files a user hands us ---------------------------------------------------

@pytest.mark.parametrize("kind", ["random bytes", "a pickle with code"])
@pytest.mark.parametrize("name, args", [
    ("agefuse-predict", [GOOD, "--model", "{model}", "--out", "{tmp}/p"]),
    ("agefuse-evaluate", ["--model", "{model}", "--images", SAMPLE, "--out", "{tmp}/e"]),
    ("agefuse-export", ["--model", "{model}", "--out", "{tmp}/x.pt2"]),
    ("agefuse-watch", ["--source", "{tmp}/v.avi", "--model", "{model}", "--out", "{tmp}/w"]),
    ("agefuse-train-branch", ["--cache", "{cache}", "--region", "face", "--out", "{tmp}/b",
                              "--model", "dlib_gender_cnn", "--weights", "{model}", "--max-rounds", "1"]),
])
def test_a_model_that_is_not_one_is_one_line_and_runs_nothing(name, args, kind, hostile_models, hog_cache, tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for _ in range(3):
        writer.write(np.full((240, 320, 3), 128, np.uint8))
    writer.release()
    model = hostile_models[kind]
    result = command(name, *(str(a).format(model=model, tmp=tmp_path, cache=hog_cache) for a in args))
    no_traceback(result)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert str(model) in result.stderr and "weights_only=False" not in result.stderr
    if kind == "a pickle with code":
        assert "other than tensors, which are never loaded" in result.stderr
    assert not (tmp_path / "code-ran").exists()


def test_a_model_file_of_another_kind_is_named_for_what_it_is(tmp_path):
    """torch's own words for these are an error number or a zip reader's internals."""
    import zipfile

    import torch

    from agefuse.branches.checkpoint import CheckpointError, read_torch_file
    (tmp_path / "notes.pt").write_text("not a model\n")
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:
        archive.writestr("model/archive_format", "pt2")
    with pytest.raises(CheckpointError, match=r"notes.pt: not a readable x \(not a file torch.save writes \(its zip"):
        read_torch_file(tmp_path / "notes.pt", "x")
    with pytest.raises(CheckpointError, match=r"archive.pt: not a readable x \(a zip archive, but not one torch.save"):
        read_torch_file(tmp_path / "archive.pt", "x")
    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(2)}, good)
    damaged = good.read_bytes()
    (tmp_path / "damaged.pt").write_bytes(damaged[:len(damaged) // 2])  # its central directory cut off
    with pytest.raises(CheckpointError, match=r"damaged.pt: not a readable x \("):
        read_torch_file(tmp_path / "damaged.pt", "x")
    assert read_torch_file(good, "x")["a"].shape == (2,)


def test_predict_given_an_exported_model_says_how_to_run_it_and_counts_an_empty_pattern_apart(tmp_path):
    shutil.copy(GOOD, tmp_path / "model.onnx")  # any bytes: the name is what predict reads first
    result = command("agefuse-predict", GOOD, "--model", tmp_path / "model.onnx", "--out", tmp_path / "out")
    no_traceback(result)
    assert result.returncode == 1 and (f"{tmp_path / 'model.onnx'}: an ONNX file: run it with --engine onnx"
                                       in result.stderr)
    result = command("agefuse-predict", GOOD, tmp_path / "none_*.jpg", "--out", tmp_path / "out", "--no-annotate")
    no_traceback(result)
    assert result.returncode == 1 and f"{tmp_path / 'none_*.jpg'}: no image files here" in result.stderr
    assert "1 of the paths given held no image file (named above)" in result.stderr
    assert "could not be read" not in result.stderr  # the one photo was read
    assert json.loads((tmp_path / "out" / f"{GOOD.name}.json").read_text())["faces"]


@pytest.mark.parametrize("state", [{"branch_args": [1, 2]}, {"branch_args": {"face": {"model": "small_cnn"}}},
                                   {"branch_args": {}, "interval": "wide"}])
def test_a_tensor_file_with_the_wrong_fields_is_named_not_a_traceback(state, tmp_path):
    import torch

    from agefuse.fusion import load_fused
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd.pt: not an agefuse fused model \(its fields do not fit"):
        load_fused(tmp_path / "odd.pt")


def test_nan_and_inf_ages_are_rows_skipped_by_name(tmp_path):
    files = sample_files(3)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age", "gender"])
        writer.writerows([[files[0], "nan", 0], [files[1], "inf", 1], [files[2], 30, 1]])
    result = run_regions(tmp_path, "--cache", tmp_path / "cache", "--labels", labels, "--workers", 1)
    no_traceback(result)
    assert f"{labels}:2" in result.stderr and f"{labels}:3" in result.stderr
    assert [r["age"] for r in manifest_rows(tmp_path / "cache")] == [30]


def test_a_fixed_label_is_taken_up_and_the_cache_equals_a_fresh_one(tmp_path):
    files = sample_files(12)
    def write_labels(ages):
        with (tmp_path / "labels.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "age", "gender"])
            writer.writerows([[f, age, 0] for f, age in zip(files, ages)])
    ages = [int(f.name.split("_")[0]) for f in files]
    write_labels([*ages[:-1], 5])  # the last face mislabelled as a child
    run_regions(tmp_path, "--cache", tmp_path / "cache", "--labels", tmp_path / "labels.csv", "--workers", 1)
    write_labels(ages)
    result = run_regions(tmp_path, "--cache", tmp_path / "cache", "--labels", tmp_path / "labels.csv", "--workers", 1)
    assert "1 relabelled since the last run" in result.stderr
    run_regions(tmp_path, "--cache", tmp_path / "fresh", "--labels", tmp_path / "labels.csv", "--workers", 1)
    clean = lambda rows: [{k: v for k, v in r.items() if k != "source"} for r in rows]
    assert clean(manifest_rows(tmp_path / "cache")) == clean(manifest_rows(tmp_path / "fresh"))
    listed = {rel for r in manifest_rows(tmp_path / "cache") for rel in r["crops"].values()}
    on_disk = {str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").glob("*/*/*")}
    assert on_disk == listed, "the old age group's crops are gone"


# -- arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, args, message", [
    ("agefuse-predict", [GOOD, "--upsample", "-1"], "--upsample: -1 is below 0"),
    ("agefuse-regions", [SAMPLE, "--cache", "{tmp}/c", "--upsample", "-1"], "--upsample: -1 is below 0"),
    ("agefuse-watch", ["--source", "0", "--upsample", "-1", "--out", "{tmp}/w"], "--upsample: -1 is below 0"),
    ("agefuse-regions", [SAMPLE, "--cache", "{file}"], "is a file, not a folder"),
    ("agefuse-predict", [GOOD, "--out", "{file}"], "is a file, not a folder"),
    ("agefuse-regions", [SAMPLE, "--cache", "{tmp}/c", "--split", "50/60/10"], "adds up to 120"),
    ("agefuse-predict", [GOOD, "--threads", "0"], "--threads: 0 is below 1"),
    ("agefuse-train-branch", ["--cache", "{tmp}", "--region", "face", "--out", "{tmp}/b", "--image-size", "0"],
     "--image-size: 0 is below 16"),
    ("agefuse-train-branch", ["--cache", "{tmp}", "--region", "face", "--out", "{tmp}/b", "--image-size", "2"],
     "--image-size: 2 is below 16"),
    ("agefuse-train-branch", ["--cache", "{tmp}", "--region", "face", "--out", "{tmp}/b", "--device", "bogus"],
     "'bogus' is not a device"),
    ("agefuse-train-branch", ["--cache", "{tmp}", "--region", "face", "--out", "{tmp}/b", "--epsilon", "nan"],
     "--epsilon: nan is outside"),
])
def test_bad_arguments_are_one_usage_line_before_any_work(name, args, message, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = command(name, *(str(a).format(tmp=tmp_path, file=tmp_path / "a-file") for a in args))
    no_traceback(result)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not any((tmp_path / out).exists() for out in ("c", "w", "b"))


@pytest.mark.parametrize("config, message", [
    ('{"face": [{"load": {}}]}', "unknown augmentation 'load'"),
    ('{"face": [{"HorizontalFlip": {"p": 0.5}}', "not valid JSON"),
])
def test_a_bad_augmentation_file_names_the_file_and_leaves_no_run_folder(config, message, sample_cache, tmp_path):
    aug = tmp_path / "aug.json"
    aug.write_text(config)
    result = command("agefuse-train-branch", "--cache", sample_cache, "--region", "face", "--out", tmp_path / "run",
                     "--aug", aug, "--max-rounds", "1", "--workers", "0")
    no_traceback(result)
    assert result.returncode == 1 and str(aug) in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_switches_help_does_not_claim_a_default_of_true():
    result = command("agefuse-evaluate", "--help")
    block = result.stdout.split("--no-fallback", 1)[1].split("--out", 1)[0]
    assert "default: True" not in block


def test_evaluation_json_is_valid_json_even_where_a_figure_is_undefined(sample_fused, tmp_path):
    """One face: R² is undefined (no spread of true ages); the file says null, not NaN."""
    folder = link_images(tmp_path / "one", [GOOD])
    result = command("agefuse-evaluate", "--model", sample_fused, "--images", folder, "--out", tmp_path / "eval",
                     "--workers", "1")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "eval" / "evaluation.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in evaluation.json"))
    assert report["results"]["fused"]["r2"] is None
