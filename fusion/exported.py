"""What an exported fused model holds, shared by agefuse-export (.pt2) and the ONNX export:
example inputs to trace with, the metadata that names its inputs and outputs, and the
torch.export program itself (``export``, ``load_exported``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from agefuse.branches import BRANCH_REGIONS

from .model import FusedModel


def example_inputs(model: FusedModel, count: int = 3, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (count, len(BRANCH_REGIONS[model.crops[r]]), 3, s, s), generator=generator,
                           dtype=torch.uint8) for r, s in zip(model.regions, model.image_sizes)]
    present = torch.ones(count, len(model.regions), dtype=torch.bool)
    present[0, -1] = False  # one face with a crop missing, so that path is traced too
    return views, present


def meta(model: FusedModel) -> dict:
    return {"regions": model.regions, "branch_regions": model.crops, "image_sizes": model.image_sizes,
            "views": {r: [name + (" (mirrored)" if mirror else "") for name, mirror in BRANCH_REGIONS[model.crops[r]]]
                      for r in model.regions},
            "outputs": ["age", "age_low", "age_high", "p_female"] + [f"age_{r}" for r in model.regions],
            "interval": model.interval}


def export(model: FusedModel, path: Path) -> Path:
    views, present = example_inputs(model)
    faces = torch.export.Dim("faces", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (views, present),
                                      dynamic_shapes=([{0: faces} for _ in views], {0: faces}))
    torch.export.save(program, str(path), extra_files={"meta.json": json.dumps(meta(model))})
    return path


def load_exported(path: str | Path):
    """What a user without agefuse does: torch alone."""
    return torch.export.load(str(path)).module()
