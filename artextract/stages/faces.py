"""MTCNN face detection (facenet-pytorch) over batches of decoded images, with aligned crops.

Boxes and landmarks are stored in the coordinates of the upright (EXIF-applied) original image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from artextract.config import FacesConfig
from artextract.stages.align import aligned_crop
from artextract.stages.decode import encode_jpeg
from artextract.stages.pose import pose_from_landmarks

FACE_TYPE = pa.struct([
    ("face_idx", pa.int16()),
    ("box", pa.list_(pa.float32(), 4)),        # x1, y1, x2, y2 in original pixels
    ("landmarks", pa.list_(pa.float32(), 10)),  # (x, y) x 5: eyes, nose, mouth corners
    ("prob", pa.float32()),
    ("yaw", pa.float32()),    # head pose in degrees from the landmarks (stages/pose.py); NaN if degenerate
    ("pitch", pa.float32()),
    ("roll", pa.float32()),
    ("crop_jpeg", pa.binary()),
])


@dataclass
class Face:
    """One detection in detection-image pixels."""

    box: np.ndarray  # (4,)
    landmarks: np.ndarray  # (5, 2)
    prob: float


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("faces.device=cuda but torch sees no CUDA device")
    return device


class FaceDetector:
    """Loads MTCNN once; ``detect`` runs it on a list of HxWx3 uint8 images (any sizes)."""

    def __init__(self, cfg: FacesConfig, torch_threads: int | None = None):
        import torch
        from facenet_pytorch import MTCNN

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        # keep_all: every face, not only the largest; post_process off: we crop ourselves.
        self.mtcnn = MTCNN(keep_all=True, min_face_size=cfg.min_face_px, thresholds=list(cfg.thresholds),
                           post_process=False, select_largest=False, device=self.device)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per image, most probable first, filtered by min_prob and capped at max_faces."""
        out: list[list[Face]] = [[] for _ in images]
        # MTCNN batches only equal-sized images: bucket by shape, one call per bucket.
        buckets: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            buckets.setdefault(img.shape, []).append(i)
        for idx in buckets.values():
            step = self.cfg.batch_size or len(idx)
            for start in range(0, len(idx), step):
                chunk = idx[start:start + step]
                stack = np.stack([images[i] for i in chunk])
                boxes, probs, points = self.mtcnn.detect(stack, landmarks=True)
                for i, b, p, l in zip(chunk, boxes, probs, points):
                    out[i] = self._filter(b, p, l)
        return out

    def _filter(self, boxes, probs, points) -> list[Face]:
        if boxes is None:
            return []
        faces = [Face(np.asarray(b, np.float32), np.asarray(l, np.float32), float(p))
                 for b, p, l in zip(boxes, probs, points) if p is not None and p >= self.cfg.min_prob]
        faces.sort(key=lambda f: -f.prob)
        return faces[: self.cfg.max_faces]


def face_record(k: int, face: Face, image: np.ndarray, scale: float, cfg: FacesConfig) -> dict:
    """One FACE_TYPE row: the aligned crop (JPEG), box/landmarks in original pixels and head pose.

    Shared by preprocess (FaceStage) and search by image, so a query face is cropped exactly like
    the indexed ones. ``image`` is the detection image, ``scale`` its det pixels per original pixel.
    """
    crop = aligned_crop(image, face.landmarks, face.box, cfg.crop_size, cfg.crop_margin)
    # MTCNN regresses boxes of faces at the border partly outside the image: store the visible part.
    h, w = image.shape[:2]
    box = np.clip(face.box, 0, [w, h, w, h])
    yaw, pitch, roll = pose_from_landmarks(face.landmarks[None].astype(np.float64))[0]
    return {"face_idx": k, "box": (box / scale).tolist(),
            "landmarks": (face.landmarks / scale).reshape(-1).tolist(),
            "prob": face.prob, "yaw": float(yaw), "pitch": float(pitch), "roll": float(roll),
            "crop_jpeg": encode_jpeg(crop, 92)}


class FaceStage:
    """Batch stage: det_image column -> ``faces`` column (list<FACE_TYPE>), det_image dropped."""

    def __init__(self, cfg: FacesConfig, torch_threads: int | None = None):
        self.cfg = cfg
        self.detector = FaceDetector(cfg, torch_threads) if cfg.enabled else None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = list(batch["det_image"])
        ok = [i for i, s in enumerate(batch["status"]) if s == "ok"]
        found = self.detector.detect([images[i] for i in ok]) if self.detector and ok else [[] for _ in ok]
        faces_col: list[list[dict]] = [[] for _ in images]
        for i, faces in zip(ok, found):
            scale = float(batch["det_scale"][i])
            faces_col[i] = [face_record(k, f, images[i], scale, self.cfg) for k, f in enumerate(faces)]
        cols = {k: pa.array(list(v)) for k, v in batch.items() if k not in ("det_image",)}
        cols["n_faces"] = pa.array([len(f) for f in faces_col], pa.int32())
        cols["faces"] = pa.array(faces_col, pa.list_(FACE_TYPE))
        return pa.table(cols)
