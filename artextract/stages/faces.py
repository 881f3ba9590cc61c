"""Face detection over batches of decoded images (stages/face_detectors.py: the detectors;
stages/face_merge.py: test-time views, merging, the calibrated score), with aligned crops.

Boxes and landmarks are stored in the coordinates of the upright (EXIF-applied) original image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from artextract.config import FacesConfig
from artextract.stages.align import aligned_crop
from artextract.stages.decode import encode_jpeg
from artextract.stages.device import resolve_device
from artextract.stages.face_detectors import DETECTORS, TORCH_DETECTORS, Raw
from artextract.stages.face_merge import CALIBRATION, VIEWS, calibrated, weighted_nms
from artextract.stages.face_verify import Verifier
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
    """One detection in detection-image pixels; ``prob`` is the calibrated probability."""

    box: np.ndarray  # (4,)
    landmarks: np.ndarray  # (5, 2)
    prob: float


class FaceDetector:
    """The configured detector(s) x test-time views, merged; ``detect`` runs on a list of HxWx3
    uint8 images (any sizes). Models load once, in the constructor."""

    def __init__(self, cfg: FacesConfig, torch_threads: int | None = None):
        if torch_threads:
            cv2.setNumThreads(torch_threads)  # views and RetinaFace's input: one pool per actor, not per core
        self.cfg = cfg
        names = list(dict.fromkeys(cfg.members if cfg.detector == "ensemble" else [cfg.detector]))
        # Only torch detectors (MTCNN) have a device: the default actor never imports torch (~1.7
        # CPU-s of its start). One decision (and warning) for all of them.
        self.device = resolve_device(cfg.device, "face detection") if set(names) & TORCH_DETECTORS else "cpu"
        resolved = cfg.model_copy(update={"device": self.device})
        self.detectors = [DETECTORS[n](resolved, torch_threads) for n in names]
        self.views = [VIEWS[v] for v in dict.fromkeys(cfg.views)]
        self.verify = Verifier()

    def candidates(self, images: list[np.ndarray]) -> list[tuple[Raw, np.ndarray, np.ndarray]]:
        """Per image, before any threshold: the merged faces, their vote and O-Net verify score."""
        parts: list[list[Raw]] = [[] for _ in images]
        sharpness: list[list[float]] = [[] for _ in images]  # per source: view pixels per image pixel
        for view in self.views:
            seen = [view(img) for img in images]
            for det in self.detectors:  # raw_many: MTCNN batches equal-sized views
                for i, ((v, inverse), raw) in enumerate(zip(seen, det.raw_many([v for v, _ in seen]))):
                    parts[i].append(inverse(raw))
                    sharpness[i].append(v.shape[1] / images[i].shape[1])
        merged = [weighted_nms(p, self.cfg.merge_iou, r) for p, r in zip(parts, sharpness)]
        verify = self.verify.many(images, [m.boxes for m, _ in merged])
        return [(m, vote, v) for (m, vote), v in zip(merged, verify)]

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per image, most probable first, filtered by min_prob and capped at max_faces."""
        coef = CALIBRATION[self.cfg.detector]
        out = []
        for merged, vote, verify in self.candidates(images):
            prob = calibrated(coef, vote, verify)
            faces = [Face(b.astype(np.float32), p.astype(np.float32), float(q))
                     for b, p, q in zip(merged.boxes, merged.landmarks, prob) if q >= self.cfg.min_prob]
            faces.sort(key=lambda f: -f.prob)
            out.append(faces[: self.cfg.max_faces])
        return out


def face_record(k: int, face: Face, image: np.ndarray, scale: float, cfg: FacesConfig) -> dict:
    """One FACE_TYPE row: the aligned crop (JPEG), box/landmarks in original pixels and head pose.

    Shared by preprocess (FaceStage) and search by image, so a query face is cropped exactly like
    the indexed ones. ``image`` is the detection image, ``scale`` its det pixels per original pixel.
    """
    crop = aligned_crop(image, face.landmarks, face.box, cfg.crop_size, cfg.crop_margin)
    # Detectors regress boxes of faces at the border partly outside the image: store the visible part.
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
