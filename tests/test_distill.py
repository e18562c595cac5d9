"""Distillation on the real sample: a teacher's soft targets (agefuse-distill), a student branch that
moves toward them, and a student recipe whose fused.pt every command takes."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE, link_images, sample_files
from test_train_recipe import TINY, train
from test_watch import write_video

import agefuse
from agefuse.branches import RegionDataset, load_branch
from agefuse.branches.teacher import TeacherError, read_targets, targets_for, teacher_distance
from agefuse.fusion import load_fused

PHOTO = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"


def command(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def targets(sample_fused, sample_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distill")
    result = command("agefuse.fusion.distill", "--teacher", sample_fused, "--cache", sample_cache, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training faces" in result.stdout and "teacher-targets.npz" in result.stdout
    return out / "teacher-targets.npz"


def distance_to_teacher(branch, cache: Path, targets: Path) -> float:
    """The mean KL divergence from the teacher's age distribution to the branch's on the training faces."""
    faces = RegionDataset(cache, "original", "train", 32)
    images = torch.stack([faces[i][0] for i in range(len(faces))])
    with torch.inference_mode():
        logits = branch.eval()(images)["age_logits"]
    teacher, _, known = targets_for(targets, [row["id"] for row in faces.rows], logits.shape[1])
    assert known.all()
    return float(teacher_distance(logits, teacher))


def test_the_teacher_targets_are_the_teachers_own_outputs(targets, sample_fused, sample_cache):
    data = read_targets(targets)
    model, _ = load_fused(sample_fused)
    report = json.loads((targets.parent / "teacher.json").read_text())
    assert set(data["split"]) == {"train", "val"} and report["branches"] == model.regions
    # no fold branches in this teacher: its training-face outputs are in fold, and said so
    assert not data["out_of_fold"][data["split"] == "train"].any() and report["out_of_fold_regions"] == []
    np.testing.assert_allclose(data["age_probabilities"].sum(1), 1, atol=1e-4)
    assert ((data["female"] > 0) & (data["female"] < 1)).all()
    # the expectation of its distribution is the age the teacher's evaluation reports for a face
    val = data["split"] == "val"
    mae = np.abs(data["age_probabilities"][val] @ np.arange(data["age_probabilities"].shape[1])
                 - np.array([r["age"] for r in _rows(sample_cache, data["id"][val])])).mean()
    assert mae == pytest.approx(report["val"]["teacher_mae"], abs=1e-3)


def _rows(cache: Path, ids) -> list[dict]:
    rows = {r["id"]: r for r in map(json.loads, (cache / "manifest.jsonl").read_text().splitlines())}
    return [rows[str(i)] for i in ids]


def test_a_student_trained_on_the_teachers_targets_moves_toward_the_teacher(targets, sample_cache, tmp_path):
    common = ["--cache", sample_cache, "--region", "original", "--model", "small_cnn", "--image-size", 32,
              "--batch-size", 32, "--max-rounds", 3, "--round-size", 256, "--lr", 3e-3, "--workers", 0, "--seed", 3,
              "--k", 5]
    for name, extra in (("labels", []), ("student", ["--teacher", targets, "--distill-weight", 1.0])):
        result = command("agefuse.branches.train", *common, "--out", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "teacher " in result.stdout  # the student's log names its teacher
    torch.manual_seed(3)
    start = agefuse.branches.create_model("small_cnn")  # the weights both runs started from
    before = distance_to_teacher(start, sample_cache, targets)
    student = distance_to_teacher(load_branch(tmp_path / "student" / "last.pt")[0], sample_cache, targets)
    labels_only = distance_to_teacher(load_branch(tmp_path / "labels" / "last.pt")[0], sample_cache, targets)
    assert student < 0.8 * before
    assert student < labels_only


def test_a_teacher_file_that_does_not_fit_is_one_line(targets, sample_cache, tmp_path):
    broken = tmp_path / "teacher-targets.npz"
    broken.write_bytes(b"not a numpy file")
    with pytest.raises(TeacherError, match="not a teacher-targets file"):
        read_targets(broken)
    result = command("agefuse.branches.train", "--cache", sample_cache, "--region", "original", "--model",
                     "small_cnn", "--max-rounds", 1, "--out", tmp_path / "run", "--teacher", broken)
    assert result.returncode != 0 and "not a teacher-targets file" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
    with pytest.raises(TeacherError, match="this branch.s over 11"):
        targets_for(targets, ["x"], 11)


STUDENT = """name = "tiny-student"
seed = 5
device = "cpu"
[distill]
teacher = "tiny.toml"
distill-weight = 0.7
[branch]
model = "small_cnn"
image-size = 32
batch-size = 32
workers = 0
max-rounds = 2
round-size = 64
[branches.face]
init = "teacher:face"
[fusion]
epochs = 3
"""


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    source = link_images(root / "photos", sample_files(72))
    (root / "tiny.toml").write_text(TINY)
    (root / "student.toml").write_text(STUDENT)
    result = train(root / "student.toml", "--source", source, "--out", root / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result.stdout


def test_a_student_recipe_runs_its_teacher_then_learns_from_it_out_of_fold(student_run):
    root, stdout = student_run
    titles = [line.split("] ", 1)[1].split(":")[0] for line in stdout.splitlines()
              if line.startswith("[") and ": agefuse-" in line]
    assert titles == ["teacher regions", "teacher branch face", "teacher branch mouth_small_cnn-fold1of2",
                      "teacher branch mouth_small_cnn-fold2of2", "teacher fusion", "teacher evaluation",
                      "teacher targets", "branch face", "fusion", "evaluation"]
    run = root / "run"
    assert f"--init {run / 'teacher' / 'branches' / 'face' / 'best.pt'}" in stdout
    assert f"--teacher {run / 'distill' / 'teacher-targets.npz'} --distill-weight 0.7" in stdout
    # the teacher's cross-fitted region came from the fold branch that left each training face out
    report = json.loads((run / "distill" / "teacher.json").read_text())
    assert report["out_of_fold_regions"] == ["mouth_small_cnn"]
    # the student reads the teacher's cache and is a fused model of its own branch alone
    model, state = load_fused(run / "fused" / "fused.pt")
    assert model.regions == ["face"] and state["config"]["teacher"].endswith("teacher-targets.npz")
    assert 0 < json.loads((run / "train.json").read_text())["fused"]["mae"] < 60
    assert not (run / "cache").exists()
    again = train(root / "student.toml", "--source", root / "photos", "--out", run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("up to date, skipped") == 5  # the teacher's head and evaluation, the targets, ours


def test_the_student_predicts_through_every_command(student_run, tmp_path):
    fused = student_run[0] / "run" / "fused" / "fused.pt"
    predicted = command("agefuse.fusion.predict", PHOTO, "--model", fused, "--out", tmp_path / "predict")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    (face,) = json.loads((tmp_path / "predict" / f"{PHOTO.name}.json").read_text())["faces"]
    assert face["age_interval"][0] <= face["age"] <= face["age_interval"][1]
    # the API, the service, the exports and watch take it unchanged
    (same,) = agefuse.Estimator(fused).estimate(str(PHOTO))
    assert same["age"] == pytest.approx(face["age"], abs=0.05)
    from fastapi.testclient import TestClient

    from agefuse.fusion.serve import create_app
    with TestClient(create_app(str(fused))) as client:
        answer = client.post("/predict", files={"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
    assert answer.status_code == 200 and answer.json()["faces"][0]["age"] == pytest.approx(face["age"], abs=0.05)
    for form, name in (("pt2", "student.pt2"), ("onnx", "student.onnx")):
        exported = command("agefuse.fusion.export", "--model", fused, "--format", form, "--out", tmp_path / name)
        assert exported.returncode == 0 and "max difference from the original" in exported.stdout, exported.stderr
    onnx = command("agefuse.fusion.predict", PHOTO, "--model", tmp_path / "student.onnx", "--engine", "onnx",
                   "--out", tmp_path / "onnx")
    assert onnx.returncode == 0, onnx.stderr[-2000:]
    video = write_video(tmp_path / "clip.avi", [(cv2.imread(str(PHOTO)), 200, 100, 0)], 4)
    watched = command("agefuse.watch.cli", "--source", video, "--model", fused, "--out", tmp_path / "watch")
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert json.loads((tmp_path / "watch" / "summary.json").read_text())["frames"] == 4
