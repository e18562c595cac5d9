"""agefuse-train-joint on the sample: it trains every weight, resumes to the same model as an
uninterrupted run, and writes a fused.pt that evaluate and predict read like any other."""
import json
import subprocess
import sys

import torch

from agefuse.fusion import load_fused
from agefuse.fusion.model import save_half

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def joint(cache, fused, out, *extra):
    return subprocess.run([sys.executable, "-m", "agefuse.fusion.joint", "--cache", str(cache), "--fused", str(fused),
                           "--out", str(out), "--round-size", "64", "--batch-size", "16", "--workers", "0",
                           "--epsilon", "1e-9", "--lr", "1e-3", "--head-lr", "1e-3", *extra],
                          cwd=ROOT, capture_output=True, text=True)


def test_joint_training_moves_the_branches_and_resumes_to_the_same_model(sample_fused, sample_cache, tmp_path):
    whole = joint(sample_cache, sample_fused, tmp_path / "whole", "--max-rounds", "2")
    assert whole.returncode == 0, whole.stderr
    cut = joint(sample_cache, sample_fused, tmp_path / "cut", "--max-rounds", "2", "--pause-after", "1")
    assert cut.returncode == 0 and "paused after round 0" in cut.stdout, cut.stderr
    assert not (tmp_path / "cut" / "fused.pt").exists()
    changed = joint(sample_cache, sample_fused, tmp_path / "cut", "--max-rounds", "2", "--resume", "--lr", "2e-3")
    assert changed.returncode != 0 and "--lr 0.001 there, 0.002 here" in changed.stderr
    resumed = joint(sample_cache, sample_fused, tmp_path / "cut", "--max-rounds", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run differs from an uninterrupted one"

    # every part learned: the branches (not only the head) moved away from the frozen fusion
    start, _ = load_fused(sample_fused, fold=False)
    before = start.state_dict()
    moved = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("branches") else "")
             for k in a if a[k].is_floating_point() and not torch.equal(a[k], before[k])}
    assert {"branches.0", "branches.1", "branches.2", "branches.3", "head"} <= moved

    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [h["round"] for h in history] == [-1, 0, 1]  # -1: the frozen fusion, scored first
    model, state = load_fused(tmp_path / "whole" / "fused.pt")
    assert model.regions == start.regions and state["summary"]["joint"]["rounds"] == 2
    assert 0.0 <= state["summary"]["joint"]["val_interval_coverage"] <= 1.0


def test_resuming_from_another_start_is_refused(sample_fused, sample_cache, tmp_path):
    assert joint(sample_cache, sample_fused, tmp_path / "run", "--max-rounds", "1").returncode == 0
    other = save_half(sample_fused, tmp_path / "other.pt")  # a model, but not the one the run started from
    again = joint(sample_cache, other, tmp_path / "run", "--max-rounds", "1", "--resume")
    assert again.returncode != 0
    assert "started from another model" in again.stderr and "Traceback" not in again.stderr
