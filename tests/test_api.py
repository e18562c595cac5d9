"""``import agefuse``: the installed model from Python, in one call."""
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from conftest import SAMPLE

import agefuse
from agefuse.fusion import DEFAULT_MODEL, load_fused

PHOTO = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"


def test_import_agefuse_in_a_fresh_process_estimates_a_photo(tmp_path):
    code = (f"import agefuse, json; faces = agefuse.estimate({str(PHOTO)!r}); "
            "print(json.dumps(faces))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    faces = __import__("json").loads(result.stdout)
    assert len(faces) == 1 and 20 <= faces[0]["age"] <= 50 and faces[0]["gender"] == "male"
    assert set(faces[0]) >= {"box", "age", "age_interval", "gender", "gender_probability"}


def test_a_path_bytes_and_arrays_in_either_channel_order_give_the_same_faces():
    model = agefuse.Estimator()
    bgr = cv2.imread(str(PHOTO))
    by_path = model.estimate(PHOTO)
    assert model.estimate(PHOTO.read_bytes()) == by_path
    assert model.estimate(bgr, channels="bgr") == by_path
    assert model.estimate(bgr[:, :, ::-1].copy(), channels="rgb") == by_path
    assert list(model.estimate_many([PHOTO, PHOTO.read_bytes()])) == [by_path, by_path]


def test_the_estimator_runs_traced_branches_as_predict_does_with_the_same_estimates():
    # untraced, the API took 1.33 of the peer's time on a 1-face photo where predict took 0.82
    from agefuse.fusion import crop_settings, predict_faces
    estimator = agefuse.Estimator(threads=2)
    assert all(isinstance(part, torch.jit.ScriptModule) for branch in estimator.model.branches
               for part in estimator.model.parts(branch))
    plain, _ = load_fused(None)
    bgr = cv2.imread(str(PHOTO))
    expected = predict_faces(plain, bgr, crop_settings(plain), None, 1)
    got = estimator.estimate(bgr, channels="bgr")
    assert len(got) == len(expected) == 1
    assert got[0]["age"] == pytest.approx(expected[0]["age"], abs=0.05)
    assert got[0]["gender"] == expected[0]["gender"]


def test_an_array_without_its_channel_order_or_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="channels='rgb'"):
        agefuse.estimate(cv2.imread(str(PHOTO)))
    with pytest.raises(ValueError, match="uint8"):
        agefuse.estimate(cv2.imread(str(PHOTO)).astype(float), channels="bgr")
    with pytest.raises(TypeError, match="a path, bytes or a NumPy array"):
        agefuse.estimate(42)


def test_a_path_that_is_no_image_is_named_in_the_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    with pytest.raises(ValueError, match=r"notes.jpg: not a readable image"):
        agefuse.estimate(tmp_path / "notes.jpg")


def test_predict_takes_a_nested_folder_and_a_glob_and_writes_one_csv(tmp_path):
    """Sub-folders are searched, a text file is not an image, a corrupt JPEG is one line."""
    import csv
    import shutil

    from agefuse.fusion import predict
    folder = tmp_path / "photos"
    (folder / "a" / "b").mkdir(parents=True)
    faces = sorted(SAMPLE.glob("*.jpg"))[100:103]
    shutil.copy(faces[0], folder / "top.jpg")
    shutil.copy(faces[1], folder / "a" / "middle.jpg")
    shutil.copy(faces[2], folder / "a" / "b" / "deep.png")
    (folder / "a" / "notes.txt").write_text("not an image")
    (folder / "a" / "b" / "broken.jpg").write_bytes(faces[0].read_bytes()[:3000])
    (tmp_path / "more").mkdir()
    shutil.copy(faces[1], tmp_path / "more" / "extra.jpg")
    args = predict.get_args_parser().parse_args([str(folder), str(tmp_path / "more" / "*.jpg"), "--out",
                                                 str(tmp_path / "out"), "--no-annotate", "--quiet"])
    assert predict.main(args) == 1  # the corrupt JPEG
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["photo"]).name for r in rows) == ["deep.png", "extra.jpg", "middle.jpg", "top.jpg"]
    assert all(r["face"] == "0" and float(r["age_low"]) <= float(r["age"]) <= float(r["age_high"]) for r in rows)
    assert set(rows[0]) == {*predict.CSV_FIELDS, "p_minor", "p_adult"}
    assert all(abs(float(r["p_minor"]) + float(r["p_adult"]) - 1) < 0.002 for r in rows)
    assert not list((tmp_path / "out").glob("*.annotated.jpg"))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """The installed model exported to ONNX by the command a user runs."""
    path = tmp_path_factory.mktemp("onnx") / "fused.onnx"
    result = subprocess.run([str(Path(sys.executable).parent / "agefuse-export"), "--format", "onnx",
                             "--model", str(DEFAULT_MODEL), "--out", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max difference from the original on 5 random faces" in result.stdout
    return path


def test_onnx_runtime_gives_pytorch_s_outputs_on_20_real_faces(onnx_model):
    from agefuse.fusion.features import batch_inputs
    from agefuse.fusion.onnx import OnnxModel
    from agefuse.regions import faces_in
    model, _ = load_fused()
    exported = OnnxModel(onnx_model)
    assert exported.regions == model.regions and exported.image_sizes == model.image_sizes
    assert exported.interval == model.interval and exported.crop_settings == model.crop_settings
    faces = []
    for path in sorted(SAMPLE.glob("*.jpg"))[::12][:24]:
        faces += faces_in(cv2.imread(str(path)), model.crop_settings)
    faces = faces[:20]
    assert len(faces) == 20
    views, present = batch_inputs(model, [face["crops"] for face in faces])
    expected = model.outputs(views, present)
    got = exported.outputs(views, present)
    for name in ("age", "gender_female", "branch_ages"):
        assert (got[name] - expected[name]).abs().max() <= 1e-4, name
    # the interval's ends are whole years: equal, but for a quantile sitting on a year's edge
    for name in ("age_low", "age_high"):
        assert (got[name] != expected[name]).sum() <= 1, name


def test_predict_with_the_onnx_engine_gives_the_pytorch_records(onnx_model, tmp_path):
    from agefuse.fusion import predict
    for engine, model in (("torch", None), ("onnx", onnx_model)):
        argv = [str(PHOTO), "--out", str(tmp_path / engine), "--engine", engine, "--no-annotate"]
        args = predict.get_args_parser().parse_args(argv + (["--model", str(model)] if model else []))
        assert predict.main(args) == 0
    import json
    torch_faces, onnx_faces = (json.loads((tmp_path / e / f"{PHOTO.name}.json").read_text())["faces"]
                               for e in ("torch", "onnx"))
    assert [f["box"] for f in onnx_faces] == [f["box"] for f in torch_faces]
    assert onnx_faces[0]["age"] == pytest.approx(torch_faces[0]["age"], abs=0.05)
    assert onnx_faces[0]["gender"] == torch_faces[0]["gender"]
