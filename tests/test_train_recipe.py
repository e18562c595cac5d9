"""agefuse-train: a recipe's stages in order on real sample photos, each command line printed,
and a rerun that resumes instead of training again."""
import json
import subprocess
import sys

from conftest import ROOT, link_images, sample_files

from agefuse.fusion import load_fused

TINY = """name = "tiny"
seed = 5
device = "cpu"
[regions]
workers = 2
[branch]
model = "small_cnn"
image-size = 32
batch-size = 32
workers = 0
max-rounds = 2
round-size = 64
[branches.face]
[branches.mouth_small_cnn]
crop = "mouth"
[out-of-fold]
folds = 2
regions = ["mouth_small_cnn"]
[fusion]
cross-fit = true
"""


def train(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agefuse.train", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)


def test_a_recipe_runs_every_stage_then_resumes_with_nothing_to_redo(tmp_path):
    source = link_images(tmp_path / "photos", sample_files(72))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    first = train(recipe, "--source", source, "--out", tmp_path / "run")
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stdout.splitlines()
    # each stage's own command line, in order: regions, the face branch, mouth's two fold branches
    # (cross-fitted: no full mouth branch), the head, the evaluation
    shown = [line.split(": ", 1)[1].split()[0] for line in lines if line.startswith("[") and ": agefuse-" in line]
    assert shown == ["agefuse-regions", "agefuse-train-branch", "agefuse-train-branch", "agefuse-train-branch",
                     "agefuse-train-fusion", "agefuse-evaluate"]
    assert any("--fold 2/2" in line and "--crop mouth" in line for line in lines)
    assert sum("done in" in line for line in lines) == 6
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["seed"] == 5 and summary["model"].endswith("fused/fused.pt")
    assert 0 < summary["fused"]["mae"] < 60
    assert (tmp_path / "run" / "eval" / "evaluation.md").is_file()
    # the branch is named as its table, and reads the crop the table gives it
    model, _ = load_fused(tmp_path / "run" / "fused" / "fused.pt")
    assert model.regions == ["face", "mouth_small_cnn"]
    assert model.crops == {"face": "face", "mouth_small_cnn": "mouth"}
    fused = tmp_path / "run" / "fused" / "fused.pt"
    before = fused.stat().st_mtime_ns

    again = train(recipe, "--source", source, "--out", tmp_path / "run")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("up to date, skipped") == 2  # the head and the evaluation
    assert again.stdout.count("--resume") == 3  # each branch resumes from its last.pt: nothing to do
    assert fused.stat().st_mtime_ns == before


def test_a_failing_stage_is_named_with_its_log(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = train(recipe, "--source", empty, "--out", tmp_path / "run")
    assert result.returncode == 1
    assert "error: stage" in result.stderr and "logs/" in result.stderr
    assert "Traceback" not in result.stderr.split("error: stage", 1)[0]


def test_a_missing_source_or_recipe_is_one_line(tmp_path):
    result = train(ROOT / "recipes" / "cpu-budget.toml", "--source", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert result.returncode == 1 and result.stderr.strip() == f"error: {tmp_path / 'nowhere'}: not a folder of photos"
    result = train(tmp_path / "none.toml", "--source", tmp_path, "--out", tmp_path / "o")
    assert result.returncode == 2 and "no such file" in result.stderr
