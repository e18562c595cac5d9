"""Fusion, evaluation, prediction and export with models trained on the bundled sample."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, link_images, manifest_rows, sample_files
from sklearn import metrics as sk

from agefuse import fusion
from agefuse.bootstrap import group_weights
from agefuse.branches import load_branch
from agefuse.branches.data import cache_rows
from agefuse.fusion import evaluate, exported, metrics, predict
from agefuse.fusion.features import batch_inputs, extract, fingerprint, read_crops, read_features
from agefuse.fusion.model import DEFAULT_MODEL, FusedModel, FusionHead, HeadAverage, head_count, load_fused
from agefuse.fusion.train import BestEpochs, epoch_order
from agefuse.regions.manifest import hashed_share


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 90, 300).astype(float)
    predicted = true + rng.normal(0, 7, 300)
    report = metrics.age_report(true, predicted, race=rng.integers(0, 5, 300))
    assert report["mae"] == pytest.approx(sk.mean_absolute_error(true, predicted))
    assert report["mse"] == pytest.approx(sk.mean_squared_error(true, predicted))
    assert report["r2"] == pytest.approx(sk.r2_score(true, predicted))
    assert report["cs5"] == pytest.approx(np.mean(np.abs(predicted - true) <= 5))
    minors_true, minors_pred = true < 18, predicted < 18
    assert report["minors"]["precision"] == pytest.approx(sk.precision_score(minors_true, minors_pred))
    assert report["minors"]["recall"] == pytest.approx(sk.recall_score(minors_true, minors_pred))
    assert report["adults"]["recall"] == pytest.approx(sk.recall_score(~minors_true, ~minors_pred))
    gender = rng.integers(0, 2, 300)
    gender[:7] = -1  # unknown: left out
    p_female = np.clip(gender * 0.6 + rng.uniform(0, 0.5, 300), 0, 1)
    g = metrics.gender_report(gender, p_female)
    known = gender >= 0
    guess = (p_female[known] >= 0.5).astype(int)
    assert g["n"] == 293
    assert g["accuracy"] == pytest.approx(sk.accuracy_score(gender[known], guess))
    assert g["precision"] == pytest.approx(sk.precision_score(gender[known], guess))
    assert g["recall"] == pytest.approx(sk.recall_score(gender[known], guess))
    assert g["f1"] == pytest.approx(sk.f1_score(gender[known], guess))
    assert g["confusion"] == sk.confusion_matrix(gender[known], guess).tolist()


def test_fusion_beats_a_constant_mean_predictor_on_the_sample_validation_split(sample_fused, sample_cache):
    rows = manifest_rows(sample_cache)
    train_mean = np.mean([r["age"] for r in rows if r["split"] == "train"])
    val = [r for r in rows if r["split"] == "val"]
    constant_mae = np.mean([abs(r["age"] - train_mean) for r in val])
    model, state = load_fused(sample_fused)
    result, _, _ = evaluate.evaluate_rows(model, sample_cache, val)
    assert result["fused"]["n"] == len(val)
    assert result["fused"]["mae"] < constant_mae, (result["fused"]["mae"], constant_mae)
    assert 0 < state["summary"]["val_interval_coverage"] <= 1
    # the head learned from the whole training split, and the interval's temperature from half
    # the validation split (faces no branch fitted), the interval being checked on the other half
    train_faces = [r for r in rows if r["split"] == "train" and r["status"] != "rejected"]
    summary = state["summary"]
    assert summary["head_faces"] == len(train_faces)
    fitted = [r for r in val if hashed_share(r["id"], 0.5, "calibration")]
    assert summary["calibration"] == {"split": "val", "faces": len(fitted), "cache": str(sample_cache.resolve())}
    assert summary["interval_checked_faces"] == len(val) - len(fitted) > 0
    # agefuse-evaluate leaves the same faces out of its coverage figure
    calibrated = {r["id"] for r in fitted}
    checked, _, _ = evaluate.evaluate_rows(model, sample_cache, val, calibrated)
    assert checked["fused"]["interval_checked_faces"] == summary["interval_checked_faces"]
    assert checked["fused"]["interval_coverage"] == pytest.approx(summary["val_interval_coverage"], abs=1e-6)


def test_a_missing_region_crop_is_scored_from_the_others(sample_fused, sample_cache):
    model, _ = load_fused(sample_fused)
    row = manifest_rows(sample_cache)[0]
    crops = read_crops(sample_cache, row)
    hidden = {**crops, "mouth": None}
    inputs, present = batch_inputs(model, [crops, hidden])
    assert present[0].all() and not present[1, model.regions.index("mouth")]
    out = model.predict(model.features(inputs), present)
    assert torch.isfinite(out["age"]).all() and out["age"][0] != out["age"][1]


@pytest.mark.parametrize("mirror", [False, True])
def test_branches_side_by_side_give_the_same_features(sample_fused, sample_cache, mirror):
    """Side by side, a mirrored branch runs its crops and their mirror images as two tasks."""
    model, _ = load_fused(sample_fused)
    if mirror:
        model.mirrored = {"face", "mouth", "original"}
    faces = [read_crops(sample_cache, row) for row in manifest_rows(sample_cache)[:3]]
    inputs, present = batch_inputs(model, faces)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            one_after_another = model.features(inputs)
            side_by_side = model.features(inputs, fusion.branch_pool(model, threads=2))
    finally:
        torch.set_num_threads(threads)  # branch_pool shares the threads out for the whole process
    assert torch.allclose(one_after_another, side_by_side, atol=1e-5)
    assert side_by_side.shape == (3, len(model.regions), model.block.width)


def test_a_model_of_the_original_branch_alone_predicts_as_from_every_crop(sample_fused, tmp_path):
    """predict cuts only the crops a model reads: a model of the box-framed ``original``
    branch skips the landmarks and gives what it gives from the full set of crops."""
    from agefuse.fusion.model import FusedModel
    from agefuse.regions import faces_in
    full, _ = load_fused(sample_fused)
    at = full.regions.index("original")
    only = FusedModel({"original": full.branches[at]}, {"original": full.image_sizes[at]},
                      crop_settings=full.crop_settings).eval()
    image = cv2.imread(str(sample_files(1, offset=3)[0]))
    found = fusion.find_faces(only, image)
    assert found and found[0]["landmarks"] is None and list(found[0]["crops"]) == ["original"]
    every = faces_in(image, fusion.crop_settings(only))
    assert torch.equal(fusion.estimate(only, found)["age"], fusion.estimate(only, every)["age"])


@pytest.mark.parametrize("count", [1, 5])
def test_traced_branches_predict_as_the_plain_ones(sample_fused, sample_cache, count):
    plain, _ = load_fused(sample_fused)
    traced, _ = load_fused(sample_fused)
    traced.trace()
    assert all(isinstance(b, torch.jit.ScriptModule) for b in traced.branches)
    faces = [read_crops(sample_cache, row) for row in manifest_rows(sample_cache)[10:10 + count]]
    inputs, present = batch_inputs(plain, faces)  # traced at one face, run here at `count`
    with torch.inference_mode():
        expected, got = plain.predict(plain.features(inputs), present), traced.predict(traced.features(inputs), present)
    for key in ("age", "gender_female", "branch_ages"):
        assert torch.allclose(got[key], expected[key], atol=1e-4), key


def test_evaluating_a_raw_folder_reports_the_image_without_a_face(sample_fused, tmp_path, capsys):
    folder = link_images(tmp_path / "photos", sample_files(6))
    cv2.imwrite(str(folder / "30_1_0_20990101000000000.jpg.chip.jpg"), np.full((200, 200, 3), 127, np.uint8))
    args = evaluate.get_args_parser().parse_args(["--model", str(sample_fused), "--images", str(folder),
                                                  "--out", str(tmp_path / "eval"), "--no-fallback", "--workers", "1"])
    assert evaluate.main(args) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["images"]["no face found"] == 1 and report["images"]["evaluated"] == 6
    assert report["images"]["no_face_files"][0].endswith("30_1_0_20990101000000000.jpg.chip.jpg")
    assert "no face found:" in capsys.readouterr().out
    assert {"fused", "face", "eyes", "mouth", "original"} == set(report["results"])
    for png in ("predicted_vs_true.png", "error_by_age.png", "gender_confusion.png"):
        assert (tmp_path / "eval" / png).is_file()


def test_predict_finds_both_faces_of_a_two_face_photo(sample_fused, tmp_path):
    left, right = (cv2.imread(str(p)) for p in sample_files(2, offset=100))
    photo = np.full((300, 560, 3), 255, np.uint8)
    photo[50:250, 20:220], photo[50:250, 340:540] = left, right
    cv2.imwrite(str(tmp_path / "two.jpg"), photo)
    cv2.imwrite(str(tmp_path / "none.jpg"), np.full((200, 300, 3), 90, np.uint8))
    args = predict.get_args_parser().parse_args([str(tmp_path / "two.jpg"), str(tmp_path / "none.jpg"),
                                                 "--model", str(sample_fused), "--out", str(tmp_path / "out")])
    assert predict.main(args) == 0
    record = json.loads((tmp_path / "out" / "two.jpg.json").read_text())
    boxes = sorted(face["box"] for face in record["faces"])
    assert len(boxes) == 2
    for (left, top, right, bottom), x0 in zip(boxes, (20, 340)):
        inter = max(0, min(right, x0 + 200) - max(left, x0)) * max(0, min(bottom, 250) - max(top, 50))
        assert inter / ((right - left) * (bottom - top)) > 0.8, "each box lies on its pasted face"
    for face in record["faces"]:
        assert face["age_interval"][0] <= face["age"] <= face["age_interval"][1]
        assert face["gender"] in ("male", "female") and 0.5 <= face["gender_probability"] <= 1
    assert (tmp_path / "out" / "two.jpg.annotated.jpg").is_file()
    assert json.loads((tmp_path / "out" / "none.jpg.json").read_text())["message"] == "no face found"


def test_export_round_trips_without_the_training_code(sample_fused, tmp_path):
    model, _ = load_fused(sample_fused)
    path = exported.export(model, tmp_path / "fused.pt2")
    views, present = exported.example_inputs(model, count=4, seed=5)
    torch.save({"views": views, "present": present}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(views, present)
    script = (
        "import sys, torch\n"
        f"program = torch.export.load({str(path)!r}).module()\n"
        f"data = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "out = program(data['views'], data['present'])\n"
        "assert not any(m.split('.')[0] in ('fusion', 'branches', 'regions') for m in sys.modules)\n"
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    assert (torch.load(tmp_path / "out.pt") - expected).abs().max() <= 1e-4


def test_a_half_precision_copy_predicts_as_the_full_model(sample_fused, sample_cache, tmp_path):
    from agefuse.fusion.model import save_half
    half_path = save_half(sample_fused, tmp_path / "half.pt")
    assert half_path.stat().st_size < 0.6 * sample_fused.stat().st_size
    full, _ = load_fused(sample_fused)
    half, state = load_fused(half_path)
    assert state["precision"] == "float16"
    val = [r for r in manifest_rows(sample_cache) if r["split"] == "val"]
    inputs, present = batch_inputs(full, [read_crops(sample_cache, r) for r in val])
    with torch.inference_mode():
        a, b = full.predict(full.features(inputs), present), half.predict(half.features(inputs), present)
    assert (a["age"] - b["age"]).abs().max() < 0.5
    assert ((a["gender_female"] >= 0.5) == (b["gender_female"] >= 0.5)).float().mean() >= 0.95


def test_predict_works_out_of_the_box_with_the_installed_model(tmp_path):
    """No --model: the UTKFace model shipped with the package. A sanity check, not an accuracy
    figure: the sample's faces come from the pool that model was trained on."""
    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size <= 20e6
    files = sample_files(12, offset=3)
    result = subprocess.run([sys.executable, "-m", "agefuse.fusion.predict", *map(str, files), "--out", str(tmp_path),
                             "--no-annotate"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    errors = [abs(r["faces"][0]["age"] - int(Path(r["photo"]).name.split("_")[0])) for r in records if r["faces"]]
    assert len(errors) >= 10 and np.mean(errors) < 8, errors


def test_the_label_of_a_face_at_the_photo_edge_stays_whole():
    """The rightmost person of a 1280x886 group photo: the label strip moves left to fit."""
    image = np.zeros((886, 1280, 3), np.uint8)
    label = "34 (28-41) F 97%"
    fusion.draw_labelled_box(image, (1210, 300, 1279, 380), label, female=True)
    scale = max(0.4, 886 / 600)
    (width, height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
    strip = np.all(image[300 - 2] == (60, 60, 230), axis=1) | np.all(image[300 - 2] == (255, 255, 255), axis=1)
    columns = np.flatnonzero(strip)
    assert columns.max() - columns.min() + 1 >= width + 4 and columns.max() <= 1279


def test_cached_features_of_the_same_branches_in_another_order_are_not_reused(sample_fused, sample_cache):
    """The order of the branches is the features' layout: read back in another order, each
    block would feed the head's weights of another branch."""
    runs = Path(json.loads((Path(sample_fused).parent / "fusion.json").read_text())["branches"]["face"]).parents[1]
    paths = {r: runs / r / "best.pt" for r in ("face", "eyes", "mouth", "original")}
    reordered = dict(reversed(list(paths.items())))
    assert fingerprint(sample_cache, paths) != fingerprint(sample_cache, reordered)
    assert fingerprint(sample_cache, paths) == fingerprint(sample_cache, dict(paths))


def test_a_mirrored_model_averages_each_crop_with_its_mirror_image(sample_fused, sample_cache, tmp_path):
    state = torch.load(sample_fused, weights_only=True)
    state["mirror"] = True
    torch.save(state, tmp_path / "mirrored.pt")
    plain_model, _ = load_fused(sample_fused)
    mirrored_model, _ = load_fused(tmp_path / "mirrored.pt")
    assert mirrored_model.mirrored == {"face", "mouth", "original"} & set(mirrored_model.regions)
    faces = [read_crops(sample_cache, row) for row in manifest_rows(sample_cache)[:3]]
    inputs, _ = batch_inputs(plain_model, faces)
    with torch.inference_mode():
        plain = plain_model.features(inputs)
        flipped = plain_model.features([x.flip(-1) for x in inputs])
        mirrored = mirrored_model.features(inputs)
    for r, region in enumerate(plain_model.regions):
        expected = (plain[:, r] + flipped[:, r]) / 2 if region in mirrored_model.mirrored else plain[:, r]
        assert torch.allclose(mirrored[:, r], expected, atol=1e-4), region


def _fusion_again(sample_fused, sample_cache, tmp_path, *options: str) -> Path:
    """The sample's fusion head trained again with ``options``, over the same branches (their
    features already cached in a copy of its folder); its fused.pt."""
    shutil.copytree(Path(sample_fused).parent, tmp_path / "fused")
    spec = ",".join(f"{r}={p}"
                    for r, p in json.loads((tmp_path / "fused" / "fusion.json").read_text())["branches"].items())
    subprocess.run([sys.executable, "-m", "agefuse.fusion.train", "--cache", str(sample_cache), "--branches", spec,
                    "--out", str(tmp_path / "fused"), *options], cwd=ROOT, check=True, capture_output=True)
    return tmp_path / "fused" / "fused.pt"


def test_a_rebalanced_fusion_epoch_draws_the_rare_age_group_as_often_as_the_common_one(sample_fused, sample_cache,
                                                                                       tmp_path):
    groups = ["20-29"] * 900 + ["70+"] * 100
    generator = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(len(groups), None, generator).tolist()) == list(range(len(groups)))
    drawn = epoch_order(len(groups), group_weights(groups, 1.0), generator)
    assert 0.45 < (drawn >= 900).float().mean().item() < 0.55  # 10% of the faces, half the draws
    # and the command trains with it, over the sample's branches (their features already cached)
    _, state = load_fused(_fusion_again(sample_fused, sample_cache, tmp_path, "--alpha", "1", "--epochs", "3"))
    assert state["config"]["alpha"] == 1.0 and state["config"]["epochs"] == 3


def test_a_separate_gender_part_keeps_its_own_best_epoch():
    head = FusionHead(12, max_age=10, separate_gender=True)
    best = BestEpochs(head, separate_gender=True)
    best.update(0, 2.0, {"age": 1.0, "gender": 1.0})
    first = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        for p in head.parameters():
            p.add_(1.0)
    second = {k: v.clone() for k, v in head.state_dict().items()}
    assert best.update(1, 2.5, {"age": 0.5, "gender": 2.0})  # age better, gender worse, the sum worse
    best.restore()
    assert best.epoch == {"age": 1, "gender": 0}
    for key, value in head.state_dict().items():
        expected = first if key.startswith(FusionHead.GENDER_PARTS) else second
        assert torch.equal(value, expected[key]), key
    assert any(k.startswith("gender_body.") for k in first) and any(k.startswith("body.") for k in first)


def test_a_fusion_with_a_separate_gender_part_saves_and_loads(sample_fused, sample_cache, tmp_path):
    model, state = load_fused(_fusion_again(sample_fused, sample_cache, tmp_path, "--separate-gender", "--epochs", "3"))
    assert model.head.separate_gender and set(state["summary"]["best_epochs"]) == {"age", "gender"}
    faces = [read_crops(sample_cache, row) for row in manifest_rows(sample_cache)[:2]]
    with torch.inference_mode():
        out = model.outputs(*batch_inputs(model, faces))
    assert ((out["gender_female"] >= 0) & (out["gender_female"] <= 1)).all() and (out["age"] > 0).all()


def test_averaged_heads_predict_the_mean_of_their_members(sample_fused, sample_cache, tmp_path):
    model, state = load_fused(_fusion_again(sample_fused, sample_cache, tmp_path, "--heads", "3", "--separate-gender",
                                            "--epochs", "3"))
    assert isinstance(model.head, HeadAverage) and len(model.head.members) == 3 and model.head.separate_gender
    assert len(state["summary"]["best_epochs"]) == 3
    faces = [read_crops(sample_cache, row) for row in manifest_rows(sample_cache)[:4]]
    with torch.inference_mode():
        features = model.features(*batch_inputs(model, faces)[:1])
        present = batch_inputs(model, faces)[1]
        together = model.predict(features, present)
        alone = []
        for member in model.head.members:  # each head trained from its own seed: they differ
            model.head, kept = member, model.head
            alone.append(model.predict(features, present))
            model.head = kept
    assert (alone[0]["age"] - alone[1]["age"]).abs().max() > 1e-3
    assert torch.allclose(together["age"], torch.stack([a["age"] for a in alone]).mean(0), atol=1e-4)
    assert torch.allclose(together["gender_female"], torch.stack([a["gender_female"] for a in alone]).mean(0),
                          atol=1e-5)
    # and it exports like a one-head model
    views, present = exported.example_inputs(model, count=2, seed=1)
    program = torch.export.load(exported.export(model, tmp_path / "heads.pt2")).module()
    with torch.no_grad():
        assert (program(views, present) - model(views, present)).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def eyes_folds(sample_cache, tmp_path_factory) -> list[Path]:
    """Two eyes branches of the sample, each trained on one half of the training faces."""
    out = tmp_path_factory.mktemp("eyes-folds")
    for i in (1, 2):
        subprocess.run([sys.executable, "-m", "agefuse.branches.train", "--cache", str(sample_cache),
                        "--region", "eyes", "--out", str(out / f"eyes-{i}"), "--image-size", "40",
                        "--batch-size", "32", "--max-rounds", "1", "--workers", "0", "--fold", f"{i}/2"],
                       cwd=ROOT, check=True, capture_output=True)
    return [out / f"eyes-{i}" / "best.pt" for i in (1, 2)]


def test_out_of_fold_features_come_from_the_fold_branch_that_left_each_face_out(sample_fused, sample_cache,
                                                                               eyes_folds, tmp_path):
    # two eyes branches, each leaving one half of the training faces out: between them every
    # training face is left out exactly once
    train_ids = {r["id"] for r in cache_rows(sample_cache, "eyes", "train")}
    kept = [{r["id"] for r in cache_rows(sample_cache, "eyes", "train", fold=(i, 2))} for i in (1, 2)]
    assert kept[0] and kept[1] and not kept[0] & kept[1] and kept[0] | kept[1] == train_ids
    folds = eyes_folds
    fused = _fusion_again(sample_fused, sample_cache, tmp_path, "--epochs", "2",
                          "--out-of-fold", f"eyes={folds[1]},{folds[0]}")  # in any order
    model, state = load_fused(fused)
    assert state["summary"]["out_of_fold"] == {"eyes": [str(folds[1]), str(folds[0])]}
    # the head learned each face's eyes features from the branch that did not train on it
    (cached,) = fused.parent.glob("features-train-oof-eyes-*.npz")
    block = np.load(cached)["block"]
    (full,) = [p for p in fused.parent.glob("features-train-*.npz") if "oof" not in p.name]
    full_data = np.load(full)
    rows = {r["id"]: r for r in manifest_rows(sample_cache)}
    region = model.regions.index("eyes")
    for i, path in enumerate(folds):
        fold_branch, fold_args = load_branch(path)
        single = FusedModel({"eyes": fold_branch}, {"eyes": fold_args["image_size"]})
        index = [n for n, face in enumerate(full_data["id"]) if str(face) not in kept[i]][:3]
        expected = extract(single, sample_cache, [rows[str(full_data["id"][n])] for n in index])["features"][:, 0]
        np.testing.assert_allclose(block[index], expected, atol=1e-5)
        assert not np.allclose(block[index], full_data["features"][index, region], atol=1e-3)
    # and that is what the head learned from: the branch's training-face MAE as the head saw it
    assert state["summary"]["branch_train_mae"]["eyes"] == pytest.approx(
        float(np.abs(model.block.age(block) - full_data["age"]).mean()), rel=1e-5)
    # a checkpoint that is no fold branch, or the same part twice, is refused in one line, before any work
    runs = Path(sample_fused).parents[1] / "runs"
    for given, message in ((f"{runs / 'eyes' / 'best.pt'},{folds[0]}", "not a fold branch"),
                           (f"{folds[0]},{folds[0]}", "each part once")):
        refused = subprocess.run([sys.executable, "-m", "agefuse.fusion.train", "--cache", str(sample_cache),
                                  "--runs", str(runs), "--out", str(tmp_path / "refused"),
                                  "--out-of-fold", f"eyes={given}"],
                                 cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
        assert not list((tmp_path / "refused").glob("features-*"))


def test_an_out_of_fold_regions_branch_is_not_run_over_the_training_faces(sample_fused, sample_cache, eyes_folds,
                                                                          tmp_path):
    # the head learns the eyes' training block from the fold branches, so the full eyes branch
    # need not see the training faces: in cpu-long that was most of the fusion stage's time
    spec = ",".join(f"{r}={p}"
                    for r, p in json.loads((Path(sample_fused).parent / "fusion.json").read_text())["branches"].items())
    folds = ["--epochs", "2", "--out-of-fold", f"eyes={eyes_folds[0]},{eyes_folds[1]}"]
    command = [sys.executable, "-m", "agefuse.fusion.train", "--cache", str(sample_cache), "--branches", spec,
               "--out", str(tmp_path / "fresh")]
    subprocess.run(command + folds, cwd=ROOT, check=True, capture_output=True)
    (path,) = [p for p in (tmp_path / "fresh").glob("features-train-*.npz") if "oof" not in p.name]
    data, skipped = read_features(path)
    reference, reference_skipped = read_features(Path(sample_fused).parent / path.name)  # the same branches, all run
    model, _ = load_fused(tmp_path / "fresh" / "fused.pt")
    eyes = model.regions.index("eyes")
    others = [i for i in range(len(model.regions)) if i != eyes]
    assert skipped == {"eyes"} and not reference_skipped
    assert not data["features"][:, eyes].any() and reference["features"][:, eyes].any()
    np.testing.assert_allclose(data["features"][:, others], reference["features"][:, others], atol=1e-5)
    assert (data["present"] == reference["present"]).all() and data["present"][:, eyes].any()
    # the head is the one it would be had the eyes branch run, and again when every feature is
    # read back from the cache: what ran before it does not change its dropout
    reused, _ = load_fused(_fusion_again(sample_fused, sample_cache, tmp_path, *folds))
    subprocess.run(command + folds, cwd=ROOT, check=True, capture_output=True)
    cached, _ = load_fused(tmp_path / "fresh" / "fused.pt")
    for name, weight in model.head.state_dict().items():
        torch.testing.assert_close(weight, reused.head.state_dict()[name], atol=1e-5, rtol=0)
        torch.testing.assert_close(weight, cached.head.state_dict()[name], atol=1e-5, rtol=0)
    # a later fusion that reads the full eyes branch on the training faces does not take that file
    subprocess.run(command + ["--epochs", "1"], cwd=ROOT, check=True, capture_output=True)
    data, skipped = read_features(path)
    assert not skipped
    np.testing.assert_allclose(data["features"], reference["features"], atol=1e-5)


def test_a_cross_fit_model_scores_a_region_by_the_mean_of_its_fold_branches(sample_fused, sample_cache, eyes_folds,
                                                                            tmp_path):
    # no full eyes branch is read: the spec names the region alone, and its runs folder has none
    shutil.copytree(Path(sample_fused).parent, tmp_path / "fused")
    given = json.loads((tmp_path / "fused" / "fusion.json").read_text())["branches"]
    spec = ",".join("eyes" if r == "eyes" else f"{r}={p}" for r, p in given.items())
    options = ["--cache", str(sample_cache), "--branches", spec, "--runs", str(tmp_path / "nothing"), "--epochs", "2"]
    subprocess.run([sys.executable, "-m", "agefuse.fusion.train", *options, "--out", str(tmp_path / "fused"),
                    "--out-of-fold", f"eyes={eyes_folds[0]},{eyes_folds[1]}", "--cross-fit"],
                   cwd=ROOT, check=True, capture_output=True)
    model, state = load_fused(tmp_path / "fused" / "fused.pt", fold=False)
    assert state["summary"]["cross_fit"] == ["eyes"] and state["branch_args"]["eyes"]["averaged_folds"] == 2
    assert model.regions == list(given)
    faces = [read_crops(sample_cache, row) for row in manifest_rows(sample_cache)[:3]]
    inputs, present = batch_inputs(model, faces)
    region = model.regions.index("eyes")
    with torch.inference_mode():
        block = model.features(inputs)[:, region]
        expected = []
        for path in eyes_folds:
            fold_branch, fold_args = load_branch(path)
            expected.append(FusedModel({"eyes": fold_branch},
                                       {"eyes": fold_args["image_size"]}).features([inputs[region]])[:, 0])
        # norms folded, as predict runs
        folded = load_fused(tmp_path / "fused" / "fused.pt")[0].features(inputs)[:, region]
    np.testing.assert_allclose(block.numpy(), torch.stack(expected).mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(folded.numpy(), block.numpy(), atol=1e-3)
    assert not np.allclose(expected[0].numpy(), expected[1].numpy(), atol=1e-3)  # two different branches
    # side by side (as predict runs it, traced) each fold branch is a task of its own, with the same features
    model = load_fused(tmp_path / "fused" / "fused.pt")[0].trace()
    assert model.task_count() == len(model.regions) + 1
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            side_by_side = model.features(inputs, fusion.branch_pool(model, threads=2))[:, region]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(side_by_side.numpy(), block.numpy(), atol=1e-3)
    # cross-fitting without fold branches is refused in one line
    refused = subprocess.run([sys.executable, "-m", "agefuse.fusion.train", *options,
                              "--out", str(tmp_path / "refused"), "--cross-fit"],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "--cross-fit" in refused.stderr and "Traceback" not in refused.stderr


def test_head_average_is_the_mean_of_its_heads_probabilities():
    torch.manual_seed(0)
    heads = [FusionHead(12, max_age=20).eval() for _ in range(3)]
    features = torch.randn(5, 12)
    with torch.no_grad():
        age, gender = HeadAverage(heads).eval()(features)
        outputs = [head(features) for head in heads]
    np.testing.assert_allclose(age.softmax(1).numpy(), np.mean([a.softmax(1).numpy() for a, _ in outputs], 0),
                               atol=1e-6)
    np.testing.assert_allclose(torch.sigmoid(gender).numpy(),
                               np.mean([torch.sigmoid(g).numpy() for _, g in outputs], 0), atol=1e-6)
    # a saved model's heads are counted from its keys, and a gap among them is named
    assert head_count({"head.age.bias": 0}) == 1
    assert head_count({f"head.members.{n}.age.bias": 0 for n in range(3)}) == 3
    with pytest.raises(ValueError, match=r"numbered \[0, 2\]"):
        head_count({"head.members.0.age.bias": 0, "head.members.2.age.bias": 0})
