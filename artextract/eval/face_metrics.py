"""Face-detection metrics against hand labels: box matching at an IoU threshold, precision/recall,
VOC average precision, and the image-level figures a curator cares about (is the prominent face of
a portrait found? does a landscape stay faceless?). Numpy over plain dicts; no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artextract.stages.face_detectors import box_iou as iou  # one IoU for detection and its scoring

SIZES = ("prominent", "small")
POSES = ("frontal", "profile", "other")


@dataclass
class LabelledImage:
    """One labelled image: its hand-drawn faces (x1, y1, x2, y2 in original pixels) with their
    size class and pose; no faces = a faceless image."""

    image_id: str
    boxes: np.ndarray                      # (G, 4) float
    sizes: list[str] = field(default_factory=list)
    poses: list[str] = field(default_factory=list)


def match(gt: np.ndarray, det: np.ndarray, scores: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching, highest score first (PASCAL VOC): each detection takes the unmatched label
    it overlaps most if IoU >= thr. Returns (det_tp (D,) bool, gt_hit (G,) bool)."""
    det_tp, gt_hit = np.zeros(len(det), bool), np.zeros(len(gt), bool)
    if len(det) == 0 or len(gt) == 0:
        return det_tp, gt_hit
    ious = iou(det, gt)
    for d in np.argsort(-np.asarray(scores), kind="stable"):
        cand = np.where(~gt_hit, ious[d], -1.0)
        g = int(cand.argmax())
        if cand[g] >= thr:
            det_tp[d], gt_hit[g] = True, True
    return det_tp, gt_hit


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float | None:
    """VOC all-point AP: area under the precision envelope over recall, detections of every image
    pooled and ranked by score; labels never detected count against recall."""
    if n_gt == 0:
        return None
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = np.asarray(tp, bool)[order]
    if len(hits) == 0:
        return 0.0
    ctp, cfp = np.cumsum(hits), np.cumsum(~hits)
    recall = np.concatenate([[0.0], ctp / n_gt, [ctp[-1] / n_gt]])
    precision = np.concatenate([[1.0], ctp / (ctp + cfp), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def evaluate(labels: list[LabelledImage], detections: dict[str, tuple[np.ndarray, np.ndarray]],
             iou_thr: float = 0.5) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of ``detections`` (image_id -> (boxes (D, 4), scores (D,))) against ``labels``, and one
    record per miss / false positive (image_id, box, kind, score) for the error grid."""
    all_scores, all_tp, errors = [], [], []
    n_gt = 0
    hit_by = {k: [0, 0] for k in (*SIZES, *POSES, *(f"prominent_{p}" for p in POSES))}
    portraits = [0, 0]   # images with a prominent face: [found, total]
    faceless = [0, 0]    # faceless images: [with a detection, total]
    for im in labels:
        boxes, scores = detections.get(im.image_id, (np.zeros((0, 4)), np.zeros(0)))
        tp, hit = match(im.boxes, boxes, scores, iou_thr)
        all_scores.extend(np.asarray(scores, float).tolist())
        all_tp.extend(tp.tolist())
        n_gt += len(im.boxes)
        for i, (size, pose) in enumerate(zip(im.sizes, im.poses)):
            keys = (size, pose, f"prominent_{pose}") if size == "prominent" else (size, pose)
            for key in keys:
                if key in hit_by:
                    hit_by[key][0] += int(hit[i])
                    hit_by[key][1] += 1
            if not hit[i]:
                errors.append({"image_id": im.image_id, "kind": "miss", "box": im.boxes[i].tolist(),
                               "size": size, "pose": pose, "score": None})
        prominent = [i for i, s in enumerate(im.sizes) if s == "prominent"]
        if prominent:
            portraits[0] += int(hit[prominent].any())
            portraits[1] += 1
        if len(im.boxes) == 0:
            faceless[0] += int(len(boxes) > 0)
            faceless[1] += 1
        for d in np.flatnonzero(~tp):
            errors.append({"image_id": im.image_id, "kind": "false_positive", "box": np.asarray(boxes[d]).tolist(),
                           "size": None, "pose": None, "score": float(scores[d])})
    n_tp = int(np.sum(all_tp))
    metrics = {
        "iou": iou_thr, "images": len(labels), "labelled_faces": n_gt, "detections": len(all_scores),
        "true_positives": n_tp, "precision": _rate(n_tp, len(all_scores)), "recall": _rate(n_tp, n_gt),
        "ap50" if iou_thr == 0.5 else f"ap{int(iou_thr * 100)}": average_precision(
            np.array(all_scores), np.array(all_tp, bool), n_gt),
        "prominent_image_recall": _rate(*portraits), "images_with_prominent_face": portraits[1],
        "faceless_fp_rate": _rate(*faceless), "faceless_images": faceless[1],
        "recall_by": {k: {"recall": _rate(*v), "faces": v[1]} for k, v in hit_by.items()},
    }
    return metrics, errors
