"""The fused model as one ONNX file (the four branches and the head), run by ONNX Runtime.

    agefuse-export --model runs/fused/fused.pt --format onnx --out fused.onnx
    agefuse-predict photo.jpg --engine onnx --model fused.onnx

The file's inputs are ``views_0`` ... ``views_<R-1>`` (each (N, V, 3, S, S) uint8 RGB crops of
one branch) and ``present`` ((N, R) bool); its one output is (N, 4 + R): age, interval low,
interval high, P(female), then each branch's own age. Its metadata (``agefuse``, JSON) names
the regions, their crop sizes and views, the outputs, the interval and the crop settings
the model learned from, so ``OnnxModel`` needs nothing else. Exported by torch's ``onnx``
exporter (``dynamo=True``, which needs ``onnxscript``); any number of faces.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from agefuse.branches import RENAMED_REGIONS
from agefuse.regions import Settings

from .exported import example_inputs, meta
from .model import FusedModel

METADATA_KEY = "agefuse"
OPSET = 18


def export_onnx(model: FusedModel, path: Path) -> Path:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it; named here for a clear error)
    except ImportError:
        raise ValueError("ONNX export needs the onnx and onnxscript packages: pip install 'agefuse[onnx]'") from None
    views, present = example_inputs(model)
    faces = torch.export.Dim("faces", min=1, max=4096)
    names = [f"views_{i}" for i in range(len(views))] + ["present"]
    with torch.no_grad():
        torch.onnx.export(model, (views, present), str(path), dynamo=True, opset_version=OPSET,
                          input_names=names, output_names=["outputs"], verbose=False,
                          dynamic_shapes=([{0: faces} for _ in views], {0: faces}))
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**meta(model), "crops": model.crop_settings.to_json()})
    onnx.save(proto, str(path))
    return path


class OnnxModel:
    """An exported fused model under ONNX Runtime, with what agefuse-predict reads of a
    ``FusedModel``: ``regions``, ``image_sizes``, ``interval``, ``crop_settings`` and
    ``outputs(views, present)``."""

    def __init__(self, path: str | Path, threads: int = 1):
        try:
            import onnxruntime
        except ImportError:
            raise ValueError("--engine onnx needs onnxruntime: pip install 'agefuse[onnx]'") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            info = json.loads(self.session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        except Exception as err:  # onnxruntime's own errors for a file that is not a model
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not an agefuse ONNX model ({reason})") from None
        self.regions, self.image_sizes, self.interval = info["regions"], info["image_sizes"], info["interval"]
        # each branch's region (an older export named branches after their regions)
        self.crops = info.get("branch_regions") or {name: RENAMED_REGIONS.get(name, name) for name in self.regions}
        self.columns = info["outputs"]
        self.crop_settings = Settings.from_json(info["crops"])
        self.names = [i.name for i in self.session.get_inputs()]

    def outputs(self, views: list[torch.Tensor], present: torch.Tensor, pool=None) -> dict[str, torch.Tensor]:
        feed = dict(zip(self.names, [v.numpy() for v in views] + [present.numpy()]))
        table = torch.from_numpy(np.asarray(self.session.run(None, feed)[0]))
        out = {name: table[:, i] for i, name in enumerate(self.columns)}
        return {"age": out["age"], "age_low": out["age_low"], "age_high": out["age_high"],
                "gender_female": out["p_female"],
                "branch_ages": torch.stack([out[f"age_{r}"] for r in self.regions], 1)}
