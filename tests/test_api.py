"""``import agefuse``: the installed model from Python, in one call."""
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

import agefuse
from conftest import SAMPLE

PHOTO = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"


def test_import_agefuse_in_a_fresh_process_estimates_a_photo(tmp_path):
    code = ("import agefuse, json; faces = agefuse.estimate(%r); "
            "print(json.dumps(faces))" % str(PHOTO))
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


def test_an_array_without_its_channel_order_or_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="channels='rgb'"):
        agefuse.estimate(cv2.imread(str(PHOTO)))
    with pytest.raises(ValueError, match="uint8"):
        agefuse.estimate(cv2.imread(str(PHOTO)).astype(float), channels="bgr")
    with pytest.raises(TypeError, match="a path, bytes or a NumPy array"):
        agefuse.estimate(42)


def test_predict_takes_a_nested_folder_and_a_glob_and_writes_one_csv(tmp_path):
    """Sub-folders are searched, a text file is not an image, a corrupt JPEG is one line."""
    import csv
    import shutil
    from fusion import predict
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
    assert set(rows[0]) == set(predict.CSV_FIELDS)
    assert not list((tmp_path / "out").glob("*.annotated.jpg"))
