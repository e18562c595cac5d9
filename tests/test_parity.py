"""One face, one crop: the cache, agefuse-predict and agefuse-evaluate cut the same pixels
from a photo and so give the same estimate; the stages meet through named contracts; a
recipe and a seed give one model."""
import csv
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomllib
import torch
from conftest import ROOT, manifest_rows, run_regions, sample_files

from agefuse import recipe as recipes
from agefuse.branches import create_model, load_branch
from agefuse.fusion import FusedModel, evaluate, load_fused, predict
from agefuse.regions import faces_in, read_settings

# (scale of the 200-px chip, left, top) in a 640x480 photo: middle, corners, small, large
PLACEMENTS = [(1.0, 220, 140), (0.8, 10, 12), (1.3, 370, 200), (1.6, 300, 20), (0.9, 60, 290), (1.2, 40, 150)]


def paste(chip: np.ndarray, scale: float, left: int, top: int, seed: int) -> np.ndarray:
    """A 640x480 'photo': a smooth, noisy background with the chip pasted at ``scale``."""
    rng = np.random.default_rng(seed)
    background = cv2.resize(rng.integers(40, 220, (6, 8, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(background.astype(int) + rng.integers(-12, 12, background.shape), 0, 255).astype(np.uint8)
    face = cv2.resize(chip, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    height, width = face.shape[:2]
    photo[top:top + height, left:left + width] = face[:480 - top, :640 - left]
    return photo


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Sample faces inside photos, named as their chips (so UTKFace names give the labels)."""
    folder = tmp_path_factory.mktemp("photos")
    for i, (chip, placement) in enumerate(zip(sample_files(len(PLACEMENTS), offset=40), PLACEMENTS)):
        cv2.imwrite(str(folder / chip.name), paste(cv2.imread(str(chip)), *placement, seed=i),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def test_the_cache_and_predict_cut_the_same_pixels(photos, tmp_path):
    run_regions(photos, "--cache", tmp_path / "cache", "--workers", 1, "--ext", "png", "--no-fallback")
    settings = read_settings(tmp_path / "cache")
    rows = [r for r in manifest_rows(tmp_path / "cache") if r["status"] == "ok"]
    assert len(rows) >= len(PLACEMENTS) - 1, "HOG finds the pasted faces"
    for row in rows:
        face, = faces_in(cv2.imread(row["source"]), settings)
        assert list(face["box"]) == row["box"]
        assert set(face["crops"]) == set(row["crops"]) >= {"original", "face", "mouth"}
        for region, rel in row["crops"].items():
            cached = cv2.cvtColor(cv2.imread(str(tmp_path / "cache" / rel)), cv2.COLOR_BGR2RGB)
            assert np.array_equal(cached, face["crops"][region]), f"{row['id']}: {region} differs"


def test_a_chip_and_the_same_face_in_a_photo_get_the_same_original_framing(photos, tmp_path):
    """The `original` crop follows the face, not the file: a chip and a photo holding it at
    scale 1 give nearly the same picture."""
    chip_path = sample_files(len(PLACEMENTS), offset=40)[0]
    run_regions(photos, "--cache", tmp_path / "c", "--workers", 1)
    settings = read_settings(tmp_path / "c")
    from_chip, = faces_in(cv2.imread(str(chip_path)), settings)
    from_photo, = faces_in(cv2.imread(str(photos / chip_path.name)), settings)
    difference = np.abs(from_chip["crops"]["original"].astype(int) - from_photo["crops"]["original"].astype(int))
    assert np.median(difference) <= 3


def test_evaluate_and_predict_give_each_face_the_same_age(photos, sample_fused, tmp_path):
    args = evaluate.get_args_parser().parse_args(["--model", str(sample_fused), "--images", str(photos),
                                                  "--out", str(tmp_path / "eval"), "--no-fallback", "--workers", "1"])
    assert evaluate.main(args) == 0
    with (tmp_path / "eval" / "predictions.csv").open() as handle:
        evaluated = {Path(r["source"]).name: float(r["predicted_age"]) for r in csv.DictReader(handle)}
    assert len(evaluated) >= len(PLACEMENTS) - 1
    args = predict.get_args_parser().parse_args([*map(str, sorted(photos.iterdir())), "--model", str(sample_fused),
                                                 "--out", str(tmp_path / "pred"), "--threads", "1", "--no-annotate"])
    assert predict.main(args) == 0
    for name, age in evaluated.items():
        faces = json.loads((tmp_path / "pred" / f"{name}.json").read_text())["faces"]
        assert len(faces) == 1
        # the cache's crops went through JPEG, predict's did not: a few hundredths at most
        assert faces[0]["age"] == pytest.approx(age, abs=0.1), name


def test_a_branch_whose_head_changed_fails_by_name(sample_fused, tmp_path):
    model, state = load_fused(sample_fused, fold=False)
    branches = {r: create_model(a["model"], max_age=a["max_age"], embedding_dim=a["embedding_dim"], pretrained=False)
                for r, a in state["branch_args"].items()}
    branches["mouth"] = create_model(state["branch_args"]["mouth"]["model"], embedding_dim=64, pretrained=False)
    with pytest.raises(ValueError, match="mouth 64"):
        FusedModel(branches, {r: a["image_size"] for r, a in state["branch_args"].items()})
    # the file says the mouth branch's age head ends at 80, its weights at 100: named, not a raw torch error
    state["branch_args"]["mouth"]["max_age"] = 80
    torch.save(state, tmp_path / "changed.pt")
    with pytest.raises(ValueError, match="the mouth branch does not fit"):
        load_fused(tmp_path / "changed.pt")
    # a branch swapped after loading (its head now gives another width) is named at run time
    model.branches[model.regions.index("eyes")] = create_model("small_cnn", embedding_dim=32, pretrained=False).eval()
    views = [torch.zeros(1, v, 3, s, s, dtype=torch.uint8) for v, s in zip((1, 2, 1, 1), model.image_sizes)]
    with pytest.raises(ValueError, match="the eyes branch gives 32"):
        model.features(views)


def test_a_recipe_and_a_seed_give_identical_weights(sample_cache, tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\nseed = 3\n[branch]\nmodel = "small_cnn"\nimage-size = 32\nbatch-size = 32\n'
                    'workers = 0\nmax-rounds = 2\nround-size = 120\n[branches.face]\n[fusion]\n')
    recipe = recipes.load(path)
    weights = []
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-m", "agefuse.branches.train", "--cache", str(sample_cache),
                        "--region", "face", "--out", str(tmp_path / run), "--seed", str(recipe.seed),
                        *recipes.stage_argv("branch", recipe.branches["face"])],
                       cwd=ROOT, check=True, capture_output=True)
        weights.append(load_branch(tmp_path / run / "best.pt")[0].state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_recipe_with_an_unknown_key_or_a_bad_value_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[branch]\nimage-sise = 64\n[branches.face]\n')
    with pytest.raises(ValueError, match=r"bad.toml \[branches.face\]: 'image-sise' is not an option"):
        recipes.load(bad)
    bad.write_text('[branches.face]\nmax-rounds = 0\n')
    with pytest.raises(ValueError, match=r"bad.toml \[branches.face\].*max-rounds"):
        recipes.load(bad)
    for text, message in (('seed = [1]\n[branches.face]\n', "seed must be a whole number"),
                          ('regions = 3\n[branches.face]\n', r"\[regions\] must be a table"),
                          ('[branches]\nface = 2\n', r"\[branches.face\] must be a table"),
                          # the joint table is checked against agefuse-train-joint's parser
                          ('[branches.face]\n[joint]\nhead-lr = 0\n', r"bad.toml \[joint\].*head-lr"),
                          ('[branches.face]\n[joint]\nepochs = 3\n', r"bad.toml \[joint\]: 'epochs' is not an option"),
                          ('[branches.face]\n[out-of-fold]\nfolds = 1\nregions = ["face"]\n',
                           "folds must be a whole number of 2"),
                          ('[branches.face]\n[out-of-fold]\nfolds = 2\nregions = ["eyes"]\n', "regions must list some"),
                          ('[branches.face]\n[out-of-fold]\nfolds = 2\n', "holds folds .* and regions")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            recipes.load(bad)


def test_a_recipe_switch_becomes_its_flag_and_a_non_boolean_is_refused():
    parse = recipes._parsers()["fusion"].parse_args
    base = ["--cache", "c", "--out", "o"]
    assert parse(base + recipes.stage_argv("fusion", {"mirror": True})).mirror is True
    assert parse(base + recipes.stage_argv("fusion", {"mirror": False})).mirror is False
    with pytest.raises(ValueError, match="mirror is a switch"):
        recipes.stage_argv("fusion", {"mirror": "yes"})
    with pytest.raises(ValueError, match="write mirror = true or false, not no-mirror"):
        recipes.stage_argv("fusion", {"no-mirror": True})
    with pytest.raises(ValueError, match="write fallback = true or false, not no-fallback"):
        recipes.stage_argv("regions", {"no-fallback": True})
    assert recipes.stage_argv("regions", {"fallback": False}) == ["--no-fallback"]


def test_a_fold_branch_keeps_its_branchs_options_and_draws_each_face_as_often():
    options = {"model": "small_cnn", "max-rounds": 22, "round-size": 6000}
    assert recipes.fold_options(options, 2, 2) == {"model": "small_cnn", "round-size": 6000, "max-rounds": 11,
                                                   "fold": "2/2"}
    assert recipes.fold_options(options, 1, 3)["max-rounds"] == 15  # 22 * 2/3, rounded up
    parsed = recipes._parsers()["branch"].parse_args(
        ["--cache", "c", "--out", "o", "--region", "face",
         *recipes.stage_argv("branch", recipes.fold_options(options, 1, 3))])
    assert parsed.fold == (1, 3) and parsed.max_rounds == 15


@pytest.mark.parametrize("name", ["cpu-budget", "cpu-long", "gpu", "ranges-check"])
def test_the_shipped_recipes_load(name):
    recipe = recipes.load(ROOT / "recipes" / f"{name}.toml")
    assert recipe.branches and all("max-rounds" in options for options in recipe.branches.values())
    assert set(recipe.out_of_fold.get("regions", [])) <= set(recipe.branches)


def test_the_installed_models_recipe_sits_beside_its_card():
    card = (ROOT / "fusion" / "default" / "MODEL.md").read_text()
    recipe = recipes.load(ROOT / "fusion" / "default" / "recipe.toml")
    assert set(recipe.branches) == set(load_fused()[1]["branch_args"])
    assert "recipe.toml" in card and all(f"`{region}`" in card for region in recipe.branches)


SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_has_help(script, monkeypatch, capsys):
    """Each installed command prints its usage. The entry point the script runs is called in this
    process: a process per command would spend some 4 s each importing torch."""
    assert shutil.which(script) or (Path(sys.executable).parent / script).exists(), f"{script} is not installed"
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name=script)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as stop:
        entry.load()()
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out
