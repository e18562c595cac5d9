"""MTCNN (Zhang et al. 2016): three small cascaded networks that find faces and their five
points (the eyes, the nose tip, the mouth corners).

The weights are the original authors' networks as the ``facenet-pytorch`` 2.6.0 wheel ships
them (MIT; ``weights/NOTICE.md``); that package pins an old torch, so this module holds the
networks and the cascade itself, and reads only its weight files. The cascade follows that
package's ``detect_face`` (thresholds 0.6/0.7/0.7, pyramid factor 0.709), except that a
candidate box past the photo's edge is padded with black rather than squeezed into the photo,
as the original MTCNN does.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

WEIGHTS = Path(__file__).parent / "weights"
THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R- and O-net face probabilities a candidate must pass
FACTOR = 0.709                # pyramid step: each level has half the area of the last
MIN_FACE = 20                 # pixels, at upsample 0


def _conv(name: str, cin: int, cout: int, kernel: int) -> list[tuple[str, nn.Module]]:
    return [(f"conv{name}", nn.Conv2d(cin, cout, kernel)), (f"prelu{name}", nn.PReLU(cout))]


def _pool(name: str, kernel: int, stride: int) -> list[tuple[str, nn.Module]]:
    return [(f"pool{name}", nn.MaxPool2d(kernel, stride, ceil_mode=True))]


class Net(nn.Module):
    """A trunk of named layers (the names of the weight files' keys) and its output heads.
    The dense layers read the trunk channels-last, transposed, as the converted Caffe weights
    expect."""

    def __init__(self, trunk: list[tuple[str, nn.Module]], dense: list[tuple[str, nn.Module]],
                 heads: dict[str, nn.Module]):
        super().__init__()
        self.trunk_names = [name for name, _ in trunk]
        self.dense_names = [name for name, _ in dense]
        for name, layer in trunk + dense:
            self.add_module(name, layer)
        self.head_names = list(heads)
        for name, layer in heads.items():
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The heads' outputs in their order, the first (face or not) as probabilities."""
        for name in self.trunk_names:
            x = getattr(self, name)(x)
        if self.dense_names:
            x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
            for name in self.dense_names:
                x = getattr(self, name)(x)
        first, *rest = [getattr(self, name)(x) for name in self.head_names]
        return [torch.softmax(first, dim=1), *rest]


def pnet() -> Net:
    """12-px proposals over the pyramid; heads: face probability (2 channels), box offsets."""
    trunk = _conv("1", 3, 10, 3) + _pool("1", 2, 2) + _conv("2", 10, 16, 3) + _conv("3", 16, 32, 3)
    return Net(trunk, [], {"conv4_1": nn.Conv2d(32, 2, 1), "conv4_2": nn.Conv2d(32, 4, 1)})


def rnet() -> Net:
    """24-px refinement; heads: face probability, box offsets."""
    trunk = (_conv("1", 3, 28, 3) + _pool("1", 3, 2) + _conv("2", 28, 48, 3) + _pool("2", 3, 2)
             + _conv("3", 48, 64, 2))
    return Net(trunk, [("dense4", nn.Linear(576, 128)), ("prelu4", nn.PReLU(128))],
               {"dense5_1": nn.Linear(128, 2), "dense5_2": nn.Linear(128, 4)})


def onet() -> Net:
    """48-px output; heads: face probability, box offsets, the five points (x0..x4, y0..y4)."""
    trunk = (_conv("1", 3, 32, 3) + _pool("1", 3, 2) + _conv("2", 32, 64, 3) + _pool("2", 3, 2)
             + _conv("3", 64, 64, 3) + _pool("3", 2, 2) + _conv("4", 64, 128, 2))
    return Net(trunk, [("dense5", nn.Linear(1152, 256)), ("prelu5", nn.PReLU(256))],
               {"dense6_1": nn.Linear(256, 2), "dense6_2": nn.Linear(256, 4), "dense6_3": nn.Linear(256, 10)})


@functools.cache
def networks() -> tuple[Net, Net, Net]:
    """The three networks with their weights, loaded once per process."""
    nets = []
    for name, build in (("pnet", pnet), ("rnet", rnet), ("onet", onet)):
        path = WEIGHTS / f"mtcnn_{name}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MTCNN weights missing (they ship with agefuse)")
        net = build()
        net.load_state_dict(torch.load(path, weights_only=True))
        nets.append(net.eval())
    return tuple(nets)


def _normalise(pixels: np.ndarray) -> torch.Tensor:
    """HWC or NHWC RGB uint8 to the networks' NCHW input in [-1, 1]."""
    batch = torch.from_numpy(np.ascontiguousarray(pixels, np.float32))
    batch = batch[None] if batch.ndim == 3 else batch
    return (batch.permute(0, 3, 1, 2) - 127.5) * 0.0078125


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes (n, >=4) made square about their centres, on their longer side."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0], out[:, 1] = boxes[:, 0] + (w - side) / 2, boxes[:, 1] + (h - side) / 2
    out[:, 2], out[:, 3] = out[:, 0] + side, out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by a network's offsets (fractions of the box's width and height)."""
    out = boxes.copy()
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, axis=1)
    out[:, :4] = boxes[:, :4] + offsets * size
    return out


def _keep(boxes: np.ndarray, overlap: float) -> np.ndarray:
    """Non-maximum suppression on (n, 5) boxes with their score in column 4."""
    if not len(boxes):
        return boxes
    picked = nms(torch.from_numpy(boxes[:, :4]).float(), torch.from_numpy(boxes[:, 4]).float(), overlap)
    return boxes[picked.numpy()]


def _patches(image: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """Each box's pixels resized to ``side``; what lies past the photo's edge is black."""
    height, width = image.shape[:2]
    out = np.zeros((len(boxes), side, side, 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(int)):
        patch = np.zeros((max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1), 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        out[i] = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    return out


def _proposals(image: np.ndarray, min_face: float) -> np.ndarray:
    """Stage 1: P-net over the image pyramid; candidate boxes (n, 5), squared."""
    net = networks()[0]
    height, width = image.shape[:2]
    scale, found = 12.0 / min_face, []
    while min(height, width) * scale >= 12:
        level = cv2.resize(image, (int(width * scale + 1), int(height * scale + 1)), interpolation=cv2.INTER_AREA)
        probabilities, offsets = net(_normalise(level))
        face = probabilities[0, 1].numpy()
        rows, cols = np.nonzero(face >= THRESHOLDS[0])
        if len(rows):
            # a P-net cell is a 12-px window at a stride of 2 on this level
            corner = np.stack([cols, rows], axis=1).astype(np.float32)
            boxes = np.hstack([np.floor((2 * corner + 1) / scale), np.floor((2 * corner + 12) / scale),
                               face[rows, cols, None], offsets[0].numpy()[:, rows, cols].T])
            found.append(_keep(boxes, 0.5))
        scale *= FACTOR
    if not found:
        return np.zeros((0, 5), np.float32)
    boxes = _keep(np.vstack(found), 0.7)
    return _square(np.hstack([_regress(boxes[:, :4], boxes[:, 5:9])[:, :4], boxes[:, 4:5]]))


@torch.inference_mode()
def detect(image: np.ndarray, min_face: float = MIN_FACE) -> list[tuple[tuple[float, ...], float, np.ndarray]]:
    """Faces of an RGB uint8 image as ``(box, probability, points)``: ``box`` (left, top,
    right, bottom) in pixels, ``points`` (5, 2): the image-left eye, the image-right eye, the
    nose tip, the image-left and image-right mouth corners."""
    _, refine, output = networks()
    boxes = _proposals(image, min_face)
    if len(boxes):
        probabilities, offsets = refine(_normalise(_patches(image, boxes, 24)))
        passed = probabilities[:, 1].numpy() > THRESHOLDS[1]
        boxes = np.hstack([boxes[passed, :4], probabilities[passed, 1:].numpy(), offsets[passed].numpy()])
        boxes = _keep(boxes, 0.7)
        boxes = _square(np.hstack([_regress(boxes[:, :4], boxes[:, 5:9])[:, :4], boxes[:, 4:5]]))
    if not len(boxes):
        return []
    probabilities, offsets, points = output(_normalise(_patches(image, boxes, 48)))
    passed = probabilities[:, 1].numpy() > THRESHOLDS[2]
    boxes, points, offsets = boxes[passed], points[passed].numpy(), offsets[passed].numpy()
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)
    points = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None] + boxes[:, None, :2] - 1
    boxes = np.hstack([_regress(boxes[:, :4], offsets)[:, :4], probabilities[passed, 1:].numpy()])
    kept = _min_overlap_keep(boxes, 0.7)
    return [(tuple(map(float, boxes[i, :4])), float(boxes[i, 4]), points[i]) for i in kept]


def _min_overlap_keep(boxes: np.ndarray, overlap: float) -> list[int]:
    """Non-maximum suppression by the overlap over the smaller box (MTCNN's last stage), so a
    small box inside a larger face is dropped too."""
    order, kept = list(np.argsort(-boxes[:, 4])), []
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order:
        best, order = order[0], order[1:]
        kept.append(best)
        rest = np.array(order, int)
        if not len(rest):
            break
        w = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1
        h = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        order = list(rest[inter / np.minimum(area[best], area[rest]) <= overlap])
    return kept
