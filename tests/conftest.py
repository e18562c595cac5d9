"""Shared helpers: the bundled sample, and the regions stage run as a user runs it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "utkface"


def sample_files(count: int, offset: int = 0) -> list[Path]:
    """``count`` sample images spread over the ages (the sample is sorted by age text)."""
    files = sorted(SAMPLE.glob("*.jpg"))
    step = max(1, len(files) // count)
    return files[offset::step][:count]


def link_images(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        os.symlink(path, folder / path.name)
    return folder


def run_regions(*args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "agefuse.regions.cli", *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"agefuse-regions failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def manifest_rows(cache: Path, name: str = "manifest.jsonl") -> list[dict]:
    return [json.loads(line) for line in (cache / name).read_text().splitlines()]


def shared_folder(tmp_path_factory, name: str, build) -> Path:
    """A session fixture's folder, built once per test run by ``build(folder)``. Under pytest-xdist
    each worker is a session of its own, and the sample's fixtures take a minute or more to build:
    the workers share one folder beside their own temporary folders, the first to come builds it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part-way
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".built").touch()
    return folder


def _hog_cache(root: Path) -> None:
    source = link_images(root / "images", sample_files(36))
    run_regions(source, "--cache", root / "cache", "--workers", 2, "--seed", 7)


@pytest.fixture(scope="session")
def hog_cache(tmp_path_factory) -> Path:
    """36 sample images (4 per age group) through the HOG pipeline, 2 workers."""
    return shared_folder(tmp_path_factory, "hog", _hog_cache) / "cache"


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """The whole bundled sample (252 faces) through the regions stage."""
    return shared_folder(tmp_path_factory, "sample",
                         lambda root: run_regions(SAMPLE, "--cache", root / "cache", "--workers", 2)) / "cache"


@pytest.fixture(scope="session")
def sample_fused(sample_cache, tmp_path_factory) -> Path:
    """Branches for face, eyes, mouth and original trained briefly on the sample, and the
    fusion head over them: the fused.pt a user gets from the main job, in miniature."""
    def build(root: Path) -> None:
        for region in ("face", "eyes", "mouth", "original"):
            subprocess.run([sys.executable, "-m", "agefuse.branches.train", "--cache", str(sample_cache),
                            "--region", region, "--out", str(root / "runs" / region), "--image-size", "40",
                            "--batch-size", "32", "--max-rounds", "6", "--lr", "3e-3", "--workers", "0"],
                           cwd=ROOT, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "agefuse.fusion.train", "--cache", str(sample_cache),
                        "--runs", str(root / "runs"), "--out", str(root / "fused")],
                       cwd=ROOT, check=True, capture_output=True)
    return shared_folder(tmp_path_factory, "fused", build) / "fused" / "fused.pt"
