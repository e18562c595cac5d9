"""Branch training on real crops of the bundled sample, real torch, on the CPU."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, manifest_rows

from agefuse.branches import backbones, train
from agefuse.branches.checkpoint import CheckpointError, load_branch, load_checkpoint
from agefuse.branches.model import branch_loss, create_model

FAST = ["--model", "small_cnn", "--image-size", "32", "--batch-size", "32", "--workers", "0",
        "--threads", "2"]


def train_args(cache, out, *extra):
    return train.get_args_parser().parse_args(
        ["--cache", str(cache), "--region", "face", "--out", str(out), *FAST, *map(str, extra)])


def history(out):
    return json.loads((out / "history.json").read_text())


def branch_face_count(cache) -> int:
    """Training faces a branch learns from: the training split."""
    return sum(r["split"] == "train" and r["status"] != "rejected" for r in manifest_rows(cache))


def test_two_rounds_lower_the_training_loss(sample_cache, tmp_path):
    assert train.main(train_args(sample_cache, tmp_path / "run", "--max-rounds", 2, "--lr", 3e-3)) == 0
    rounds = history(tmp_path / "run")
    assert len(rounds) == 2 and rounds[1]["train_loss"] < rounds[0]["train_loss"]
    for name in ("last.pt", "best.pt", "learning_curve.png", "augmentation.json"):
        assert (tmp_path / "run" / name).is_file(), name
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "sampler", "stop", "rng", "model_args"} <= set(state)
    assert rounds[0]["sampler"]["alpha"] == 0.5  # a round draws as many as the branch's faces
    assert sum(rounds[0]["sampler"]["drawn"].values()) == branch_face_count(sample_cache)


def test_eyes_branch_reads_both_eyes(sample_cache, tmp_path):
    args = train.get_args_parser().parse_args(
        ["--cache", str(sample_cache), "--region", "eyes", "--out", str(tmp_path), *FAST, "--max-rounds", "1"])
    assert train.main(args) == 0
    # a left and a mirrored right eye per face
    assert history(tmp_path)[0]["train_images"] == 2 * branch_face_count(sample_cache)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(sample_cache, tmp_path):
    extra = ["--max-rounds", "3", "--round-size", "600", "--aug", "default"]
    assert train.main(train_args(sample_cache, tmp_path / "whole", *extra)) == 0

    command = [sys.executable, "-m", "agefuse.branches.train", "--cache", str(sample_cache), "--region", "face",
               "--out", str(tmp_path / "cut"), *FAST, *extra]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "history.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(history(tmp_path / "cut")) < 3, "the run should have been killed part-way"
    assert train.main(train_args(sample_cache, tmp_path / "cut", *extra, "--resume")) == 0

    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert [h["val_loss"] for h in history(tmp_path / "whole")] == [h["val_loss"] for h in history(tmp_path / "cut")]


def test_two_process_gloo_ddp_run_completes(sample_cache, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "agefuse.branches.train", "--cache", str(sample_cache), "--region", "mouth",
               "--out", str(tmp_path), *FAST, "--threads", "1", "--max-rounds", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rounds = history(tmp_path)
    assert "2 process(es)" in result.stdout and len(rounds) == 2
    assert rounds[0]["train_images"] == (branch_face_count(sample_cache) + 1) // 2  # rank 0's half of a round
    assert (tmp_path / "best.pt").is_file()


def test_bad_caches_give_one_clear_line(sample_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sample_cache, cache)
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]

    def run(*extra):
        result = subprocess.run([sys.executable, "-m", "agefuse.branches.train", "--cache", str(cache), "--out",
                                 str(tmp_path / "run"), *FAST, "--max-rounds", "1", *extra],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-1500:]
        return result.stderr.strip().splitlines()[-1]

    (cache / rows[0]["crops"]["mouth"]).unlink()
    assert "not on disk" in run("--region", "mouth") and rows[0]["crops"]["mouth"] in run("--region", "mouth")
    for row in rows:
        row["crops"].pop("mouth")
        row["split"] = "train"
    (cache / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "no mouth crops" in run("--region", "mouth")
    assert "the 'val' split is empty" in run("--region", "face")


def test_checkpoint_from_another_model_is_refused(sample_cache, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(sample_cache, out, "--max-rounds", 1)) == 0
    with pytest.raises(ValueError, match="from another model: model is 'small_cnn' there, 'dlib_gender_cnn' here"):
        train.main(train.get_args_parser().parse_args(
            ["--cache", str(sample_cache), "--region", "face", "--out", str(out), "--model", "dlib_gender_cnn",
             "--image-size", "32", "--workers", "0", "--resume", "--max-rounds", "3"]))
    # a setting only the checkpoint has (written by a newer agefuse) is named, not taken as the same model
    state = torch.load(out / "last.pt", weights_only=False)
    state["model_args"]["future_setting"] = 3
    torch.save(state, out / "newer.pt")
    with pytest.raises(CheckpointError, match="future_setting is 3 there, not set here"):
        load_checkpoint(out / "newer.pt", {k: v for k, v in state["model_args"].items() if k != "future_setting"})


def test_a_branch_starts_from_one_of_another_image_size_but_not_from_another_network(tmp_path):
    args = {"region": "original", "model": "dlib_face_resnet", "max_age": 100, "embedding_dim": 64,
            "image_size": 150, "feature_scale": 8.0, "fold": None}
    trained = create_model("dlib_face_resnet", pretrained=False, embedding_dim=64, feature_scale=8.0)
    torch.save({"model": trained.state_dict(), "model_args": args, "round": 1}, tmp_path / "best.pt")
    student = create_model("dlib_face_resnet", pretrained=False, embedding_dim=64, feature_scale=8.0)
    train.start_from(student, str(tmp_path / "best.pt"), {**args, "image_size": 128})
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in student.state_dict().items())
    with torch.inference_mode():  # the 150-px weights run at 128 px
        assert torch.isfinite(student.eval()(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))["age"]).all()
    with pytest.raises(CheckpointError, match="model is 'dlib_face_resnet' there, 'dlib_age_resnet' here"):
        train.start_from(create_model("dlib_age_resnet", pretrained=False), str(tmp_path / "best.pt"),
                         {**args, "model": "dlib_age_resnet"})


def test_head_lr_moves_the_new_layers_at_their_own_rate(sample_cache, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(sample_cache, out, "--max-rounds", 1, "--lr", 1e-7, "--head-lr", 3e-3)) == 0
    torch.manual_seed(0)  # the run's initial weights (its --seed)
    start = create_model("small_cnn").state_dict()
    trained = torch.load(out / "last.pt", weights_only=True)

    def moved(prefix):  # largest change of any weight under prefix, relative to the weight's size
        return max(float((trained["model"][k] - v).norm() / (v.norm() + 1e-12))
                   for k, v in start.items() if k.startswith(prefix) and v.is_floating_point() and v.dim() > 1)
    assert moved("backbone.") < 1e-3 < 1e-2 < moved("embed.")
    assert [g["peak"] for g in trained["optimizer"]["param_groups"]] == [1e-7, 3e-3]
    with pytest.raises(CheckpointError, match="head-lr"):  # resumed without it: one group against two
        train.main(train_args(sample_cache, out, "--max-rounds", 2, "--lr", 1e-7, "--resume"))


def test_a_checkpoint_with_a_removed_setting_loads_at_its_kept_value_and_is_refused_at_another(sample_cache, tmp_path):
    """--age-head and --fusion-holdout are gone: a file that says age_head "dist" or
    fusion_holdout 0 (what every branch still is) loads and resumes as before; "reg", a
    held-out share or a removed backbone is one line naming the file."""
    out = tmp_path / "run"
    assert train.main(train_args(sample_cache, out, "--max-rounds", 1)) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert not {"age_head", "fusion_holdout"} & set(state["model_args"])
    state["model_args"].update(age_head="dist", fusion_holdout=0.0)  # as an older agefuse wrote them
    torch.save(state, out / "last.pt")
    model, args = load_branch(out / "last.pt")
    assert not {"age_head", "fusion_holdout"} & set(args)
    assert train.main(train_args(sample_cache, out, "--max-rounds", 2, "--resume")) == 0
    for key, value in (("age_head", "reg"), ("fusion_holdout", 0.2), ("model", "efficientnet_lite0")):
        torch.save({**state, "model_args": {**state["model_args"], key: value}}, tmp_path / f"{key}.pt")
        with pytest.raises(CheckpointError) as refused:
            load_branch(tmp_path / f"{key}.pt")
        message = str(refused.value)
        assert message.startswith(f"{tmp_path / key}.pt: ") and "no longer has" in message and "\n" not in message
        assert repr(value) in message or str(value) in message


def test_feature_scale_is_kept_in_the_checkpoint_and_old_ones_load_without_it(sample_cache, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(sample_cache, out, "--max-rounds", 1, "--feature-scale", 8)) == 0
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model, args = load_branch(out / "best.pt")
    assert args["feature_scale"] == 8 and model.feature_scale == 8
    state = torch.load(out / "best.pt", weights_only=True)
    with torch.inference_mode():
        scaled = model(images)["age"]
        del state["model_args"]["feature_scale"]  # a checkpoint from before the option
        torch.save(state, out / "old.pt")
        old, old_args = load_branch(out / "old.pt")
        assert old_args["feature_scale"] == 1.0 and not torch.allclose(old(images)["age"], scaled)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sample_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(sample_cache, out, "--max-rounds", 1)) == 0
    # weights blown up to the edge of float32 (what a diverging run leaves): the next loss is NaN
    before = torch.load(out / "last.pt", weights_only=True)
    for _name, weight in before["model"].items():
        if weight.is_floating_point() and weight.dim() == 4:
            weight.fill_(3e38)
    torch.save(before, out / "last.pt")
    assert train.main(train_args(sample_cache, out, "--max-rounds", 3, "--resume")) == 1
    assert "The last good checkpoint is" in capsys.readouterr().err
    after = torch.load(out / "last.pt", weights_only=True)
    assert after["round"] == before["round"] == 0
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_model_gives_embedding_age_and_gender(name):
    model = create_model(name, pretrained=False).eval()
    out = model(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert out["embedding"].shape == (2, 128) and out["age"].shape == (2,)
    assert out["gender_logit"].shape == (2,) and out["age_logits"].shape == (2, 101)
    loss, _ = branch_loss(out, torch.tensor([3.0, 70.0]), torch.tensor([0, -1]))
    assert torch.isfinite(loss)


def test_weights_only_from_a_local_file_of_the_same_network(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        backbones.build_backbone("dlib_gender_cnn", weights=str(tmp_path / "missing.pt"))
    torch.save(backbones.build_backbone("small_cnn").state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit"):
        backbones.build_backbone("dlib_gender_cnn", weights=str(tmp_path / "wrong.pth"))
    torch.manual_seed(3)
    saved = backbones.build_backbone("dlib_gender_cnn", pretrained=False).state_dict()
    torch.save(saved, tmp_path / "own.pth")
    loaded = backbones.build_backbone("dlib_gender_cnn", weights=str(tmp_path / "own.pth"))
    assert loaded.features == 16 and all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.items())


def shipped_network(name: str, weights, outputs: int, size: int):
    """A shipped backbone, its own final layer (dropped by the backbone) back on, and the
    sample faces at ``size`` px normalised as it expects: (trunk, layer, inputs, files)."""
    import cv2
    from conftest import SAMPLE
    trunk = backbones.build_backbone(name, pretrained=True).eval()
    shipped = torch.load(weights, weights_only=True)
    layer = torch.nn.Linear(trunk.features, outputs)
    layer.load_state_dict({"weight": shipped["fc.weight"].float(), "bias": shipped["fc.bias"].float()})
    files = sorted(SAMPLE.glob("*.jpg"))
    chips = torch.from_numpy(np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size),
                                                  interpolation=cv2.INTER_AREA)
                                       for f in files])).permute(0, 3, 1, 2).float()
    mean, std = torch.tensor(trunk.mean).view(1, 3, 1, 1) * 255, torch.tensor(trunk.std).view(1, 3, 1, 1) * 255
    return trunk, layer, (chips - mean) / std, files


def test_shipped_face_age_weights_estimate_sample_ages_out_of_the_box():
    """The converted dlib face-age ResNet, with its own 81-way age layer, on real sample faces
    at 64 px: a wrong conversion (a transposed kernel, a swapped affine) gives nonsense."""
    trunk, age_layer, inputs, files = shipped_network("dlib_age_resnet", backbones.DLIB_AGE_WEIGHTS, 81, 64)
    with torch.no_grad():
        expected_age = age_layer(trunk(inputs)).softmax(1) @ torch.arange(81.0)
    true = torch.tensor([float(f.name.split("_")[0]) for f in files])
    mae = (expected_age - true).abs().mean().item()
    assert mae < 10, mae  # measured 6.69 (correlation 0.92) on the age-balanced sample
    assert np.corrcoef(expected_age.numpy(), true.numpy())[0, 1] > 0.8


def test_shipped_face_gender_weights_tell_sample_genders_out_of_the_box():
    """The converted dlib gender CNN, with its own 2-way layer (columns: female, male), on real
    sample faces at its 32 px; then as a branch's backbone at other sizes."""
    trunk, gender_layer, inputs, files = shipped_network("dlib_gender_cnn", backbones.DLIB_GENDER_WEIGHTS, 2, 32)
    with torch.no_grad():
        features = trunk(inputs)
        female = gender_layer(features).argmax(1) == 0
    true = torch.tensor([f.name.split("_")[1] == "1" for f in files])
    assert features.shape == (len(files), 16) and torch.isfinite(features).all() and features.std(0).max() > 0.1
    accuracy = (female == true).float().mean().item()
    assert accuracy > 0.8, accuracy  # measured 0.861 (ONNX Runtime's decisions, to the last one)
    for size in (32, 64):
        out = create_model("dlib_gender_cnn", pretrained=True).eval()(
            torch.randint(0, 255, (3, 3, size, size), dtype=torch.uint8))
        assert out["embedding"].shape == (3, 128) and torch.isfinite(out["age"]).all()


@pytest.mark.parametrize("size", [48, 64, 96])
def test_dlib_age_resnet_pads_its_residuals_at_any_size(size):
    model = create_model("dlib_age_resnet", pretrained=True).eval()
    out = model(torch.randint(0, 255, (3, 3, size, size), dtype=torch.uint8))
    assert out["embedding"].shape == (3, 128) and torch.isfinite(out["age"]).all()


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_folding_the_norms_into_the_convs_keeps_the_outputs(name):
    torch.manual_seed(0)
    model = create_model(name, pretrained=name == "dlib_age_resnet").eval()
    for module in model.modules():  # norms that are not the identity, so folding shows
        if isinstance(module, (torch.nn.BatchNorm2d, backbones.Affine)):
            for tensor in [module.weight, module.bias] if isinstance(module, torch.nn.BatchNorm2d) \
                    else [module.scale, module.offset]:
                tensor.data.add_(0.2 * torch.randn_like(tensor))
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        before = model(images)
        norms = sum(isinstance(m, (torch.nn.BatchNorm2d, backbones.Affine)) for m in model.modules())
        backbones.fold_norms(model)
        after = model(images)
    assert norms > 0
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, backbones.Affine)) for m in model.modules())
    scale = before["embedding"].abs().max().item() + 1e-6
    assert (after["embedding"] - before["embedding"]).abs().max().item() <= 1e-4 * scale
    assert torch.allclose(after["age"], before["age"], atol=1e-3)


def test_folding_skips_batch_statistics_and_handles_norms_without_affine():
    torch.manual_seed(1)
    plain_norm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, affine=False))
    batch_stats = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False))
    plain_norm[1].running_mean.normal_()
    plain_norm[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    for model in (plain_norm.eval(), batch_stats.eval()):
        with torch.no_grad():
            before = model(x)
            backbones.fold_norms(model)
            assert torch.allclose(model(x), before, atol=1e-5)
    assert isinstance(plain_norm[1], torch.nn.Identity)
    assert isinstance(batch_stats[1], torch.nn.BatchNorm2d)  # normalises by each batch: not foldable
