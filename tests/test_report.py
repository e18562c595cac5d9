import json
import os
import shutil

from conftest import link_images, run_regions, sample_files

from agefuse.regions import report


def test_report_writes_plots_and_finds_a_planted_duplicate(tmp_path):
    files = sample_files(18)
    source = link_images(tmp_path / "images", files)
    # the same photo again under another name: a near duplicate the report must name
    shutil.copy(files[5], source / (files[5].name.split("_2")[0] + "_20990101000000000.jpg.chip.jpg"))
    run_regions(source, "--cache", tmp_path / "cache", "--workers", 1)
    out = tmp_path / "report"
    assert report.main(report.get_args_parser().parse_args([str(tmp_path / "cache"), "--out", str(out)])) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["images"] == 19
    assert sum(data["age_histogram"].values()) == 19
    assert sum(data["gender"].values()) == 19 and sum(data["race"].values()) == 19
    assert set(data["split_age_histograms"]) == {"train", "val", "test"}
    names = {(os.path.basename(p["a"]), os.path.basename(p["b"])) for p in data["near_duplicates"]["list"]}
    assert any(files[5].name in pair and "20990101000000000" in "".join(pair) for pair in names)
    for png in ("age_histogram.png", "gender_race.png", "split_ages.png", "near_duplicates.png"):
        assert (out / png).stat().st_size > 10_000, png


def test_near_duplicates_compares_every_pair_across_blocks():
    rows = [{"phash": h} for h in ("0000000000000000", "ffffffffffffffff", "0000000000000001",
                                   "00000000000000ff", "fffffffffffffff0")]
    pairs = report.near_duplicates(rows, max_distance=4, block=2)
    assert pairs == [(0, 2, 1), (1, 4, 4)]
