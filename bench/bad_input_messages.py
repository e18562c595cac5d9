"""What each command says to the bad inputs of the review (issue "bad input"): the case, the
exit status, whether a traceback leaked, and the line it prints.

    python bench/bad_input_messages.py

Every file is made here (a 50000 x 50000 PNG bomb in a few dozen bytes, random bytes and a
pickle with code as models, a CSV with nan and inf ages, a FIFO, ...); the commands run as a
user runs them, with the installed model.
"""
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "utkface"
GOOD = SAMPLE / "35_0_3_20170119201338805.jpg.chip.jpg"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
from test_bad_input import Payload, bomb_png  # noqa: E402  (the test suite's own hostile files)


def make_files(work: Path) -> dict:
    (work / "folder").mkdir()
    for path in sorted(SAMPLE.glob("*.jpg"))[:3]:
        shutil.copy(path, work / "folder" / path.name)
    bomb_png(work / "folder" / "30_0_0_20170101000000000.jpg.chip.jpg")  # a PNG under a UTKFace name
    bomb_png(work / "bomb.png")
    (work / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (work / "pickle.pt").write_bytes(pickle.dumps(Payload(work / "code-ran")))
    (work / "labels.csv").write_text(f"path,age,gender\n{GOOD},nan,0\n{GOOD},inf,0\n")
    cv2.imwrite(str(work / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    os.mkfifo(work / "fifo.jpg")
    (work / "a-file").write_text("x")
    (work / "aug.json").write_text('{"face": [{"load": {}}]}')
    (work / "broken.json").write_text('{"face": [')
    for folder in ("d1", "d2"):
        (work / folder).mkdir()
        shutil.copy(GOOD, work / folder / "photo.jpg")
    writer = cv2.VideoWriter(str(work / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for _ in range(3):
        writer.write(np.full((240, 320, 3), 128, np.uint8))
    writer.release()
    return {}


def cases(w: Path, cache: Path) -> list[tuple[str, list]]:
    branch = ["agefuse-train-branch", "--cache", cache, "--region", "face", "--out", w / "run", "--max-rounds", "1"]
    return [
        ("bomb PNG among good images (regions)", ["agefuse-regions", w / "folder", "--cache", w / "c1", "--workers", 2]),
        ("same, run again", ["agefuse-regions", w / "folder", "--cache", w / "c1", "--workers", 2]),
        ("bomb PNG before a good photo (predict)", ["agefuse-predict", w / "bomb.png", GOOD, "--out", w / "p1"]),
        ("--model random bytes (predict)", ["agefuse-predict", GOOD, "--model", w / "random.pt", "--out", w / "p2"]),
        ("--model pickle with code (predict)", ["agefuse-predict", GOOD, "--model", w / "pickle.pt", "--out", w / "p2"]),
        ("--model pickle with code (evaluate)", ["agefuse-evaluate", "--model", w / "pickle.pt", "--images", SAMPLE,
                                                 "--out", w / "e"]),
        ("--model pickle with code (export)", ["agefuse-export", "--model", w / "pickle.pt", "--out", w / "x.pt2"]),
        ("--model pickle with code (watch)", ["agefuse-watch", "--source", w / "v.avi", "--model", w / "pickle.pt",
                                              "--out", w / "w"]),
        ("train-branch --weights pickle with code", [*branch, "--model", "resnet18", "--weights", w / "pickle.pt"]),
        ("labels CSV with nan and inf ages", ["agefuse-regions", SAMPLE, "--cache", w / "c2", "--labels",
                                              w / "labels.csv"]),
        ("--upsample -1 (predict)", ["agefuse-predict", GOOD, "--upsample", "-1"]),
        ("--upsample -1 (regions)", ["agefuse-regions", SAMPLE, "--cache", w / "c3", "--upsample", "-1"]),
        ("--upsample -1 (watch)", ["agefuse-watch", "--source", w / "v.avi", "--upsample", "-1", "--out", w / "w2"]),
        ("--cache naming a file", ["agefuse-regions", SAMPLE, "--cache", w / "a-file"]),
        ("--out naming a file (evaluate)", ["agefuse-evaluate", "--model", w / "random.pt", "--cache", cache,
                                            "--out", w / "a-file"]),
        ("--image-size 0", [*branch, "--image-size", "0"]),
        ("--device bogus", [*branch, "--device", "bogus"]),
        ("--aug naming no transform", [*branch, "--aug", w / "aug.json", "--workers", "0"]),
        ("--aug with a syntax error", [*branch, "--aug", w / "broken.json", "--workers", "0"]),
        ("predict d1/photo.jpg d2/photo.jpg", ["agefuse-predict", w / "d1" / "photo.jpg", w / "d2" / "photo.jpg",
                                               "--out", w / "p3", "--no-annotate", "--quiet"]),
        ("1x1 image, --whole-image-fallback", ["agefuse-predict", w / "tiny.png", "--whole-image-fallback",
                                               "--out", w / "p4"]),
        ("/dev/zero as a photo", ["agefuse-predict", "/dev/zero", "--out", w / "p4"]),
        ("a FIFO as a photo", ["agefuse-predict", w / "fifo.jpg", "--out", w / "p4"]),
        ("--split 50/60/10", ["agefuse-regions", SAMPLE, "--cache", w / "c4", "--split", "50/60/10"]),
        ("--epsilon nan", [*branch, "--epsilon", "nan"]),
        ("--image-size 2", [*branch, "--image-size", "2"]),
        ("--threads 0", ["agefuse-predict", GOOD, "--threads", "0"]),
    ]


def main() -> int:
    work = Path(tempfile.mkdtemp())
    make_files(work)
    cache = work / "sample-cache"
    subprocess.run([str(BIN / "agefuse-regions"), str(SAMPLE), "--cache", str(cache), "--workers", "2"],
                   capture_output=True, check=True)
    print("| case | exit | traceback | what it prints (stderr, last lines) |")
    print("|---|---|---|---|")
    for name, argv in cases(work, cache):
        command = [str(BIN / argv[0]), *map(str, argv[1:])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=work)
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
        said = [line for line in lines if any(k in line for k in ("error", "skipped", "could not", ": too", ": not",
                                                                  "excluded", "photos could"))] or lines[-1:]
        said = " / ".join(dict.fromkeys(said))[-300:].replace("|", "\\|")
        print(f"| {name} | {result.returncode} | {'YES' if 'Traceback' in result.stderr else 'no'} | {said} |",
              flush=True)
    print(f"\ncode from the pickle ran: {'YES' if (work / 'code-ran').exists() else 'no'}; "
          f"predict d1/d2 outputs: {sorted(p.name for p in (work / 'p3').glob('*.json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
