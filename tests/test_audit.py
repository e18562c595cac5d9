"""agefuse-audit finds labels planted wrong in real faces, and --exclude takes its findings."""
import csv

import numpy as np
import pytest
from conftest import SAMPLE, manifest_rows, run_regions

from agefuse.fusion import audit


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The sample with 10 ages moved by 30+ years and 10 genders flipped, through the regions
    stage; returns the cache and the two sets of planted ids."""
    root = tmp_path_factory.mktemp("audit")
    files = sorted(SAMPLE.glob("*.jpg"))
    rng = np.random.default_rng(4)
    picks = rng.choice(len(files), 20, replace=False)
    moved, flipped = set(picks[:10].tolist()), set(picks[10:].tolist())
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age", "gender"])
        for i, path in enumerate(files):
            age, gender = int(path.name.split("_")[0]), int(path.name.split("_")[1])
            if i in moved:
                age = age + 35 if age < 50 else age - 35
            if i in flipped:
                gender = 1 - gender
            writer.writerow([path, age, gender])
    run_regions(SAMPLE, "--cache", root / "cache", "--labels", root / "labels.csv", "--workers", 2)
    ids = lambda chosen: {files[i].name.split(".jpg")[0] for i in chosen}
    return root, ids(moved), ids(flipped)


def test_the_audit_finds_planted_ages_and_genders_in_its_top_30(planted, tmp_path):
    root, moved, flipped = planted
    args = audit.get_args_parser().parse_args(["--cache", str(root / "cache"), "--out", str(tmp_path / "out")])
    assert audit.main(args) == 0
    with (tmp_path / "out" / "suspects.csv").open() as handle:
        ranked = [row["id"] for row in csv.DictReader(handle)]
    top = set(ranked[:30])
    assert len(ranked) == 252
    assert len(moved & top) >= 8, (len(moved & top), "of the moved ages")
    assert len(flipped & top) >= 8, (len(flipped & top), "of the flipped genders")
    assert (tmp_path / "out" / "suspects.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "leaks.csv").read_text().startswith("id_a,split_a,id_b,split_b")


def test_exclude_takes_the_audit_s_ids_out_of_the_cache(planted, tmp_path):
    root, moved, _ = planted
    (tmp_path / "wrong.txt").write_text("\n".join(sorted(moved)) + "\n")
    import shutil
    shutil.copytree(root / "cache", tmp_path / "cache")
    result = run_regions(SAMPLE, "--cache", tmp_path / "cache", "--labels", root / "labels.csv", "--workers", 1,
                         "--exclude", tmp_path / "wrong.txt")
    assert "excluded by" in result.stderr
    rows = manifest_rows(tmp_path / "cache")
    assert len(rows) == 242 and not moved & {r["id"] for r in rows}
    assert not [p for p in (tmp_path / "cache").glob("*/*/*") if p.stem in moved], "their crops are gone"
