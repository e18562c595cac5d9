"""Your own data set: age ranges and Adience's fold files as labels, age groups as outputs,
label-free folders; on real sample faces."""
import csv
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SAMPLE, manifest_rows, run_regions

from agefuse.branches import branch_loss
from agefuse.branches.data import RegionDataset
from agefuse.branches.model import soft_targets
from agefuse.fusion.groups import group_index, group_probabilities, parse_groups
from agefuse.regions import labels

ADIENCE_RANGES = [(0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100)]


def adience_range(age: int) -> tuple[int, int]:
    return min(ADIENCE_RANGES, key=lambda r: 0 if r[0] <= age <= r[1] else min(abs(age - r[0]), abs(age - r[1])))


def test_a_range_is_trained_as_a_spread_target_and_an_exact_age_as_before():
    exact = soft_targets(torch.tensor([[30.0, 30.0]]), 101)[0]
    spread = soft_targets(torch.tensor([[25.0, 32.0]]), 101)[0]
    assert int(exact.argmax()) == 30 and exact[28:33].sum() > 0.75  # a Gaussian of 2 years
    assert spread[25:33].sum() > 0.75 and spread[25:33].min() > 0.5 * spread[25:33].max(), "spread over the range"
    assert abs(float((spread * torch.arange(101)).sum()) - 28.5) < 0.05
    out = {"age": torch.tensor([28.0, 40.0]), "gender_logit": torch.zeros(2), "age_logits": torch.zeros(2, 101)}
    _, parts = branch_loss(out, torch.tensor([28.0, 28.0]), torch.tensor([-1, -1]),
                           age_range=torch.tensor([[25.0, 32.0], [25.0, 32.0]]))
    assert float(parts["age_l1"]) == pytest.approx(4.0), "inside the range costs nothing, 40 is 8 years out"


def test_a_csv_mixing_exact_ages_and_ranges_trains_a_branch(tmp_path):
    files = sorted(SAMPLE.glob("*.jpg"))[::4]
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age", "gender"])
        for i, path in enumerate(files):
            age = int(path.name.split("_")[0])
            low, high = adience_range(age)
            label = str(age) if i % 2 else (f"({low}, {high})" if i % 4 else f"{low}-{high}")
            writer.writerow([path, label, path.name.split("_")[1]])
        writer.writerow([files[0], "(32, 25)", 0])
        writer.writerow([files[1], "(40, 200)", 0])
    result = run_regions(SAMPLE, "--cache", tmp_path / "cache", "--labels", tmp_path / "labels.csv", "--workers", 2)
    assert "labels.csv:" in result.stderr and "is empty" in result.stderr and "outside 0..120" in result.stderr
    rows = manifest_rows(tmp_path / "cache")
    ranged = [r for r in rows if r["age_range"]]
    assert len(ranged) >= len(files) // 3 and all(r["age_range"][0] <= r["age"] <= r["age_range"][1] for r in ranged)
    data = RegionDataset(tmp_path / "cache", "face", "train", 32)
    spans = data.targets[:, 4] - data.targets[:, 3]
    assert (spans > 0).any() and (spans == 0).any(), "both kinds reach training"
    run = subprocess.run([sys.executable, "-m", "agefuse.branches.train", "--cache", str(tmp_path / "cache"),
                          "--region", "face", "--out", str(tmp_path / "run"), "--image-size", "32",
                          "--max-rounds", "2", "--workers", "0", "--batch-size", "16"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "best.pt").is_file()


def test_an_adience_fold_file_is_read_with_its_ranges_genders_and_bad_rows(tmp_path):
    """Sample faces laid out as Adience's aligned/ folder, a fold file over them."""
    files = sorted(SAMPLE.glob("*.jpg"))[:12]
    lines = ["user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
             "fiducial_yaw_angle\tfiducial_score"]
    for i, path in enumerate(files):
        user, original, face_id = f"user{i % 3}", f"{1000 + i}_abc_o.jpg", 100 + i
        (tmp_path / "aligned" / user).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "aligned" / user / f"landmark_aligned_face.{face_id}.{original}")
        age = int(path.name.split("_")[0])
        low, high = adience_range(age)
        age_text = f"({low}, {high})" if i % 3 else str(age)
        gender = "u" if i % 4 == 0 else "mf"[int(path.name.split("_")[1])]
        lines.append(f"{user}\t{original}\t{face_id}\t{age_text}\t{gender}\t0\t0\t100\t100\t0\t0\t50")
    lines.append("user0\t9999_missing_o.jpg\t999\t(25, 32)\tm\t0\t0\t1\t1\t0\t0\t1")
    lines.append(f"user1\t{1000 + 1}_abc_o.jpg\t101\t(32, 25)\tf\t0\t0\t1\t1\t0\t0\t1")
    lines.append("user2\t1002_abc_o.jpg\t102\tNone\tx\t0\t0\t1\t1\t0\t0\t1")
    (tmp_path / "fold_0_data.txt").write_text("\n".join(lines) + "\n")
    items, problems = labels.collect(tmp_path / "aligned", tmp_path / "fold_0_data.txt", "adience")
    assert len(items) == 12
    assert sum(item.age_range is not None for item in items) == 8
    assert sum(item.gender is None for item in items) == 3
    reasons = {p.path.rsplit(":", 1)[1]: p.reason for p in problems}
    assert set(reasons) == {"14", "15", "16"}  # the header is line 1, the twelve faces 2-13
    assert "no image user0/*.999.9999_missing_o.jpg" in reasons["14"]
    assert "is empty" in reasons["15"]
    assert reasons["16"] == "no age"
    result = run_regions(tmp_path / "aligned", "--cache", tmp_path / "cache", "--labels", tmp_path / "fold_0_data.txt",
                         "--labels-format", "adience", "--workers", 1)
    rows = manifest_rows(tmp_path / "cache")
    assert len(rows) == 12 and "fold_0_data.txt:16: no age" in result.stderr
    subject = {item.id: item.subject for item in items}
    splits_of = {user: {r["split"] for r in rows if subject[r["id"]] == user} for user in set(subject.values())}
    assert all(len(splits) == 1 for splits in splits_of.values()), splits_of  # a person is on one side


def test_group_probabilities_sum_to_one_and_are_the_distribution_s_mass():
    groups = parse_groups("child:0-12,teen:13-17,adult:18-")
    probabilities = torch.softmax(torch.randn(5, 101), 1)
    in_groups = group_probabilities(probabilities, groups)
    assert torch.allclose(in_groups.sum(1), torch.ones(5))
    assert torch.allclose(in_groups[:, 1], probabilities[:, 13:18].sum(1))
    assert list(group_index([0, 12, 13, 17, 18, 90], groups)) == [0, 0, 1, 1, 2, 2]
    for bad, message in (("child:0-12,adult:14-", "not contiguous"), ("a:1-5,b:6-", "start at 0"),
                         ("a:0-5,a:6-", "repeat"), ("kid:0-twelve", "NAME:LOW-HIGH")):
        with pytest.raises(ValueError, match=message):
            parse_groups(bad)


def test_a_folder_without_labels_makes_a_label_free_cache(tmp_path):
    for i, path in enumerate(sorted(SAMPLE.glob("*.jpg"))[50:54]):
        shutil.copy(path, tmp_path / f"holiday_{i}.jpg")
    for _ in range(2):  # the cache lies inside the photo folder: its crops never become photos
        result = run_regions(tmp_path, "--cache", tmp_path / "cache", "--workers", 1)
        assert result.returncode == 0 and "a label-free cache" in result.stderr, result.stderr
    rows = manifest_rows(tmp_path / "cache")
    assert len(rows) == 4 and all(r["age"] is None and r["split"] is None and r["age_group"] == "unlabelled"
                                  for r in rows)
    found = [r for r in rows if r["status"] != "rejected"]
    assert found and all((tmp_path / "cache" / r["crops"]["face"]).is_file() for r in found)
    assert all(r["crops"]["face"].startswith("unlabelled/face/") for r in found)
