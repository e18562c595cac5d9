"""Writes tests/golden/installed_model.json: what the installed model predicts for ten sample
photos spread over the ages (unrounded age, interval and gender probability per face), the
reference ``tests/test_golden.py`` holds every later change to. Run it again only when the
installed model is replaced on purpose:

    .venv/bin/python tools/make_golden.py > tests/golden/installed_model.json
"""
import json
import sys
from pathlib import Path

import torch

from agefuse.fusion import crop_settings, estimate, find_faces, load_fused
from agefuse.regions import decode, read_image_file

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "utkface"
COUNT = 10


def golden_photos() -> list[Path]:
    """Ten sample photos, one every len/10 in name order (the names start with the age)."""
    files = sorted(SAMPLE.glob("*.jpg"))
    return files[::len(files) // COUNT][:COUNT]


def predictions(model, photos: list[Path]) -> list[dict]:
    records = []
    for path in photos:
        faces = find_faces(model, decode(read_image_file(path)), crop_settings(model, fallback=True))
        out = estimate(model, faces)
        records.append({"photo": path.name, "faces": [
            {"box": list(map(int, face["box"])), "age": float(out["age"][i]),
             "gender_female": float(out["gender_female"][i]), "age_low": float(out["age_low"][i]),
             "age_high": float(out["age_high"][i])} for i, face in enumerate(faces)]})
    return records


def main() -> int:
    torch.set_num_threads(1)
    model, _ = load_fused(None)
    json.dump({"model": "the installed model (fusion/default)", "photos": predictions(model, golden_photos())},
              sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
