"""The regions command as a user meets it: bad files, interruptions, seeds, shards."""
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import pytest
from conftest import ROOT, link_images, manifest_rows, run_regions, sample_files

from agefuse.regions import manifest


@pytest.mark.parametrize("detector", ["hog", "cnn"])
def test_bad_files_are_skipped_with_their_reason_and_the_rest_is_processed(tmp_path, detector):
    source = link_images(tmp_path / "images", sample_files(6))
    good = sample_files(1)[0].read_bytes()
    (source / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(good)      # a field missing
    (source / "25_0_0_20170101000000001.jpg.chip.jpg").write_bytes(good[: len(good) // 2])
    (source / "26_0_0_20170101000000002.jpg.chip.jpg").write_text("this is not a picture")
    os.symlink(tmp_path / "gone.jpg", source / "27_0_0_20170101000000003.jpg.chip.jpg")
    result = run_regions(source, "--cache", tmp_path / "cache", "--workers", 2, "--detector", detector, check=False)
    err = result.stderr
    assert result.returncode == 1 and "3 image(s) could not be read; every other image is cached" in err
    assert "39_1_20170116174525125.jpg.chip.jpg: malformed UTKFace name" in err
    assert "25_0_0_20170101000000001.jpg.chip.jpg: truncated JPEG" in err
    assert "26_0_0_20170101000000002.jpg.chip.jpg: not a readable image" in err
    assert "27_0_0_20170101000000003.jpg.chip.jpg: cannot read" in err
    rows = {r["id"]: r for r in manifest_rows(tmp_path / "cache")}
    assert len(rows) == 9  # the malformed name has no labels, so no row; it is in label_problems
    assert sum(r["status"] != "rejected" for r in rows.values()) == 6
    assert rows["25_0_0_20170101000000001"]["status"] == "rejected"
    assert "39_1_2017" in (tmp_path / "cache" / "label_problems.csv").read_text()
    assert "6 cached" in result.stdout and "3 rejected" in result.stdout


def test_other_settings_on_the_same_cache_are_refused(tmp_path):
    source = link_images(tmp_path / "images", sample_files(2))
    run_regions(source, "--cache", tmp_path / "cache", "--workers", 1)
    result = run_regions(source, "--cache", tmp_path / "cache", "--face-size", 128, check=False)
    assert result.returncode != 0 and "made with other settings" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_source_is_one_clear_line(tmp_path):
    result = run_regions(tmp_path / "nowhere", "--cache", tmp_path / "cache", check=False)
    assert result.returncode != 0 and "image folder not found" in result.stderr
    assert "Traceback" not in result.stderr


def _start(source, cache, workers, detector):
    return subprocess.Popen([sys.executable, "-m", "agefuse.regions.cli", str(source), "--cache", str(cache),
                             "--workers", str(workers), "--seed", "3", "--detector", detector],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored, and Python then never
                            # turns it into KeyboardInterrupt: the run under test gets it as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_rows(path, count, process, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} rows in {path} before the run ended")


def _assert_consistent(cache):
    """Every listed crop is whole on disk, and nothing temporary is left."""
    for row in manifest_rows(cache):
        for rel in row.get("crops", {}).values():
            assert cv2.imread(str(cache / rel)) is not None, rel
    assert not [p for p in cache.rglob(".*tmp-*")]


@pytest.mark.parametrize("how, workers, detector, count", [
    (signal.SIGKILL, 1, "hog", 40), (signal.SIGINT, 2, "hog", 40), (signal.SIGKILL, 1, "cnn", 8)])
def test_interrupted_run_resumes_to_the_same_manifest(tmp_path, how, workers, detector, count):
    source = link_images(tmp_path / "images", sample_files(count))
    options = ["--seed", 3, "--detector", detector]
    run_regions(source, "--cache", tmp_path / "whole", "--workers", 2, *options)

    cache = tmp_path / "cut"
    process = _start(source, cache, workers, detector)
    _wait_for_rows(cache / "manifest.jsonl", count // 5, process)
    process.send_signal(how)
    process.communicate(timeout=30)
    rows_before = manifest.read_rows(cache / "manifest.jsonl")
    assert count // 5 <= len(rows_before) < count, "the run should have been cut part-way"
    if how == signal.SIGINT:
        assert process.returncode == 130
    else:
        # a kill can land mid-append: simulate the worst case, a row cut in half
        with open(cache / "manifest.jsonl", "a") as handle:
            handle.write('{"id": "half a row')

    result = run_regions(source, "--cache", cache, "--workers", 2, *options)
    assert f"{len(rows_before)} already cached" in result.stderr
    assert manifest_rows(cache) == manifest_rows(tmp_path / "whole")
    _assert_consistent(cache)
    dated = (cache / "manifest.jsonl").stat().st_mtime_ns
    again = run_regions(source, "--cache", cache, "--workers", 2, *options)
    assert "0 to process" in again.stderr
    # nothing redone, nothing rewritten: the fusion's cached branch outputs are keyed by this date
    assert (cache / "manifest.jsonl").stat().st_mtime_ns == dated


def test_split_is_seeded_and_stratified():
    ids = {group: [f"{group}-{i}" for i in range(n)]
           for group, n in {"0-2": 57, "20-29": 400, "70+": 23}.items()}
    first = manifest.assign_split(ids, seed=11)
    assert first == manifest.assign_split(dict(reversed(list(ids.items()))), seed=11)
    assert first != manifest.assign_split(ids, seed=12)
    for group, members in ids.items():
        counts = {s: sum(first[i] == s for i in members) for s in manifest.SPLITS}
        assert abs(counts["val"] - 0.1 * len(members)) <= 1, (group, counts)
        assert abs(counts["train"] - 0.8 * len(members)) <= 1, (group, counts)


def test_same_seed_same_split_in_the_cache(hog_cache, tmp_path):
    source = hog_cache.parent / "images"
    run_regions(source, "--cache", tmp_path / "again", "--workers", 1, "--seed", 7)
    run_regions(source, "--cache", tmp_path / "other", "--workers", 1, "--seed", 8)
    split = lambda cache: {r["id"]: r["split"] for r in manifest_rows(cache)}
    assert split(hog_cache) == split(tmp_path / "again") != split(tmp_path / "other")
    # the cache's split is the stratified one: drawn within each age group
    rows = manifest_rows(hog_cache)
    by_group = {}
    for row in rows:
        by_group.setdefault(row["age_group"], []).append(row["id"])
    assert split(hog_cache) == manifest.assign_split(by_group, seed=7)
    for group, ids in by_group.items():
        assert sum(split(hog_cache)[i] == "train" for i in ids) >= len(ids) // 2, group


def test_shards_are_disjoint_and_merge_to_the_whole(tmp_path, hog_cache):
    source = hog_cache.parent / "images"
    for k in (0, 1, 2):
        run_regions(source, "--cache", tmp_path / "sharded", "--workers", 1, "--seed", 7,
                    "--shard", f"{k}/3")
    parts = [manifest_rows(tmp_path / "sharded", f"manifest.shard-{k}-of-3.jsonl") for k in range(3)]
    ids = [r["id"] for part in parts for r in part]
    assert len(ids) == len(set(ids)) == 36 and all(parts)
    subprocess.run([sys.executable, "-c", "import sys; from agefuse.regions.cli import merge_main; "
                    f"sys.exit(merge_main([{str(tmp_path / 'sharded')!r}]))"], check=True, cwd=ROOT)
    assert manifest_rows(tmp_path / "sharded") == manifest_rows(hog_cache)


def test_merge_refuses_a_missing_shard(tmp_path, hog_cache):
    shutil.copytree(hog_cache, tmp_path / "c")
    (tmp_path / "c" / "manifest.jsonl").rename(tmp_path / "c" / "manifest.shard-0-of-2.jsonl")
    with pytest.raises(FileNotFoundError, match=r"shards \[1\] of 2 are missing"):
        manifest.merge_shards(tmp_path / "c")
