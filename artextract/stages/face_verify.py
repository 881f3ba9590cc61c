"""MTCNN's O-Net as a second opinion on any face box (the ``verify`` cue of stages/face_merge.py).

The network is facenet-pytorch's ``ONet`` layer for layer, with the weights that ship in its wheel
(``facenet_pytorch/data/onet.pt``), built here rather than imported: importing
``facenet_pytorch`` imports torchvision, ~1 s of every detector actor's start, and the default
detector (RetinaFace on onnxruntime) needs nothing else from either. tests/test_face_detectors.py checks
that this network and facenet-pytorch's give the same probabilities.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image


def onet_weights() -> Path:
    """facenet-pytorch's O-Net state dict, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face verification needs facenet-pytorch's O-Net weights: "
                           "`make install`, or pip install --no-deps facenet-pytorch==2.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "onet.pt"


def _onet():
    from torch import nn

    class ONet(nn.Module):
        """facenet_pytorch.models.mtcnn.ONet's layers and names (so its state dict loads as is)."""

        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1, self.pool1 = nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2, self.pool2 = nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3, self.pool3 = nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()  # its (W, H, C) flattening
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return self.dense6_1(x).softmax(1)  # face / non-face; the box and landmark heads are unused

    return ONet


class Verifier:
    """P(face) of a square 48-px crop around each box, by MTCNN's O-Net."""

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, device
        net = _onet()()
        net.load_state_dict(torch.load(onet_weights(), map_location="cpu", weights_only=True))
        self.onet = net.to(device).eval()

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if len(boxes) == 0:
            return np.zeros(0)
        pil = Image.fromarray(image)
        crops = []
        for x1, y1, x2, y2 in boxes:
            side, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
            box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
            crops.append(np.asarray(pil.crop(box).resize((48, 48), Image.BILINEAR)))
        torch = self.torch
        x = (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().to(self.device) - 127.5) * 0.0078125
        with torch.no_grad():
            return self.onet(x)[:, 1].double().cpu().numpy()
