"""Shared helpers: the bundled sample, and the regions stage run as a user runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    result = subprocess.run([sys.executable, "-m", "regions.cli", *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"agefuse-regions failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def manifest_rows(cache: Path, name: str = "manifest.jsonl") -> list[dict]:
    return [json.loads(line) for line in (cache / name).read_text().splitlines()]


@pytest.fixture(scope="session")
def hog_cache(tmp_path_factory) -> Path:
    """36 sample images (4 per age group) through the HOG pipeline, 2 workers."""
    root = tmp_path_factory.mktemp("hog")
    source = link_images(root / "images", sample_files(36))
    run_regions(source, "--cache", root / "cache", "--workers", 2, "--seed", 7)
    return root / "cache"


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """The whole bundled sample (252 faces) through the regions stage."""
    root = tmp_path_factory.mktemp("sample")
    run_regions(SAMPLE, "--cache", root / "cache", "--workers", 2)
    return root / "cache"
