"""``artextract evaluate faces``: a preprocess run's detected faces against hand labels.

The labels are a CSV, one row per labelled face (``image_id, face_idx, x1, y1, x2, y2, size, pose``;
boxes in original pixels, ``size`` prominent|small, ``pose`` frontal|profile|other) and one row with
an empty ``face_idx`` per faceless image. An optional ``split`` column (dev|test) says which half
an image belongs to; without it the split is a stable hash of the image_id, so tuning on ``dev``
and reporting on ``test`` never mixes the two. Writes metrics.json, errors.csv, errors.png (misses
and false positives, cropped from the stored whole images) and report.html.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from artextract.core import layout, storage
from artextract.config import EvaluateFacesConfig, StorageConfig
from artextract.eval.face_metrics import POSES, SIZES, LabelledImage, evaluate
from artextract.eval.grids import grid_png
from artextract.core.runinfo import JobRun

log = logging.getLogger(__name__)
_COLOURS = {"miss": "red", "false_positive": "orange"}


def split_of(image_id: str) -> str:
    """'dev' or 'test': a stable half of the images by hash (the same on every machine)."""
    return "dev" if int(hashlib.sha1(image_id.encode()).hexdigest(), 16) % 2 == 0 else "test"


def read_labels(uri: str, split: str, st: StorageConfig | None = None) -> list[LabelledImage]:
    """The labelled images of ``split`` (dev | test | all) from a labels CSV; bad rows fail loudly."""
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(uri, st).decode("utf-8-sig"))))
    need = {"image_id", "face_idx", "x1", "y1", "x2", "y2", "size", "pose"}
    if rows and need - set(rows[0]):
        raise ValueError(f"{uri}: labels CSV lacks columns {sorted(need - set(rows[0]))}")
    by_id: dict[str, dict[str, list]] = {}
    for n, r in enumerate(rows, start=2):
        image_id = r["image_id"].strip()
        if split != "all" and (r.get("split") or split_of(image_id)) != split:
            continue
        im = by_id.setdefault(image_id, {"boxes": [], "sizes": [], "poses": []})
        if str(r["face_idx"]).strip() == "":
            continue  # a faceless image
        box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
        if r["size"] not in SIZES or r["pose"] not in POSES or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"{uri} line {n}: bad label (size {r['size']!r}, pose {r['pose']!r}, box {box})")
        im["boxes"].append(box)
        im["sizes"].append(r["size"])
        im["poses"].append(r["pose"])
    return [LabelledImage(i, np.asarray(v["boxes"], np.float64).reshape(-1, 4), v["sizes"], v["poses"])
            for i, v in sorted(by_id.items())]


def _detections(pre: str, ids: set[str], min_prob: float | None, st: StorageConfig) -> dict[str, Any]:
    faces = layout.PreprocessOutput(pre, st).table("faces").read(columns=["image_id", "box", "prob"])
    out: dict[str, list] = {}
    for image_id, box, prob in zip(*(faces[c].to_pylist() for c in ("image_id", "box", "prob"))):
        if image_id in ids and (min_prob is None or prob >= min_prob):
            out.setdefault(image_id, []).append((box, prob))
    return {k: (np.asarray([b for b, _ in v], np.float64), np.asarray([p for _, p in v], np.float64))
            for k, v in out.items()}


def _crop(whole: bytes, orig_w: int, box: list[float], margin: float = 0.4) -> bytes:
    with Image.open(io.BytesIO(whole)) as im:
        s = im.width / max(orig_w, 1)  # the stored whole image is a resized copy of the original
        x1, y1, x2, y2 = (v * s for v in box)
        m = margin * max(x2 - x1, y2 - y1)
        crop = im.convert("RGB").crop((int(x1 - m), int(y1 - m), int(x2 + m), int(y2 + m)))
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        return buf.getvalue()


def _error_grid(pre: str, errors: list[dict[str, Any]], limit: int, st: StorageConfig) -> bytes:
    ids = sorted({e["image_id"] for e in errors})
    images = layout.PreprocessOutput(pre, st).images.read(columns=["image_id", "orig_width", "whole_jpeg"])
    images = images.filter(pc.is_in(images["image_id"], value_set=pa.array(ids, pa.string())))
    whole = {i: (w, j) for i, w, j in zip(*(images[c].to_pylist() for c in ("image_id", "orig_width", "whole_jpeg")))}
    misses = [e for e in errors if e["kind"] == "miss"]
    misses.sort(key=lambda e: (e["size"] != "prominent", e["image_id"]))
    fps = sorted((e for e in errors if e["kind"] == "false_positive"), key=lambda e: -e["score"])
    tiles = []
    for e in misses[:limit] + fps[:limit]:
        w, jpeg = whole.get(e["image_id"], (0, None))
        caption = (f"miss {e['image_id']} {e['pose']}" if e["kind"] == "miss"
                   else f"FP {e['image_id']} {e['score']:.2f}")
        tiles.append((_crop(jpeg, w, e["box"]) if jpeg else None, caption[:22], _COLOURS[e["kind"]]))
    rows = [tiles[i:i + 8] for i in range(0, len(tiles), 8)] or [[(None, "no errors", "green")]]
    return grid_png(rows, 96, caption_px=14)


def _html(metrics: dict[str, Any]) -> str:
    e, f = html.escape, lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    head = ("precision", "recall", "ap50", "prominent_image_recall", "faceless_fp_rate")
    rows = "".join(f"<tr><td>{e(k)}</td><td>{f(metrics.get(k))}</td></tr>" for k in head)
    by = "".join(f"<tr><td>{e(k)}</td><td>{f(v['recall'])}</td><td>{v['faces']}</td></tr>"
                 for k, v in metrics["recall_by"].items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Face detection report</title></head><body>"
            f"<h1>Face detection vs labels ({e(metrics['split'])} split)</h1>"
            f"<p>{metrics['images']} images, {metrics['labelled_faces']} labelled faces, {metrics['detections']} "
            f"detections, IoU {metrics['iou']}; missing from the preprocess run: {metrics['images_missing']}.</p>"
            f"<table border=1>{rows}</table><h2>Recall by kind</h2><table border=1>"
            f"<tr><th>kind</th><th>recall</th><th>faces</th></tr>{by}</table>"
            "<h2>Misses (red) and false positives (orange)</h2><img src='errors.png'></body></html>\n")


def run(cfg: EvaluateFacesConfig) -> dict[str, Any]:
    """Evaluate ``cfg.preprocess``'s faces against ``cfg.labels``; returns the job summary."""
    if not (cfg.preprocess and cfg.labels and cfg.out):
        raise ValueError("evaluate faces needs preprocess=, labels= and out= (or --preprocess/--labels/--out)")
    st = cfg.storage
    job = JobRun("evaluate_faces", cfg, cfg.out)
    labels = read_labels(cfg.labels, cfg.split, st)
    images = layout.PreprocessOutput(cfg.preprocess, st).table("images").read(columns=["image_id", "status"])
    status = dict(zip(images["image_id"].to_pylist(), images["status"].to_pylist()))
    missing = sorted(im.image_id for im in labels if im.image_id not in status)
    if missing:  # counted and named, not silently scored as misses
        log.warning("%d labelled images are not in %s: %s", len(missing), cfg.preprocess, missing[:10])
    labels = [im for im in labels if im.image_id in status]
    if not labels:
        raise ValueError(f"no labelled image of split {cfg.split!r} is in {cfg.preprocess}")
    dets = _detections(cfg.preprocess, {im.image_id for im in labels}, cfg.min_prob, st)
    metrics, errors = evaluate(labels, dets, cfg.iou)
    metrics.update(split=cfg.split, min_prob=cfg.min_prob, images_missing=len(missing),
                   images_quarantined=sum(status[im.image_id] != "ok" for im in labels))
    job.lap("evaluate")
    storage.write_json(storage.join(cfg.out, "metrics.json"), metrics, st)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["image_id", "kind", "size", "pose", "score", "box"])
    w.writeheader()
    w.writerows(errors)
    storage.write_text(storage.join(cfg.out, "errors.csv"), buf.getvalue(), st)
    storage.write_bytes(storage.join(cfg.out, "errors.png"), _error_grid(cfg.preprocess, errors, cfg.grid_max, st), st)
    storage.write_text(storage.join(cfg.out, "report.html"), _html(metrics), st)
    job.lap("report")
    log.info("faces: recall %s, precision %s, prominent-image recall %s, faceless FP rate %s",
             *(None if metrics[k] is None else round(metrics[k], 3)
               for k in ("recall", "precision", "prominent_image_recall", "faceless_fp_rate")))
    return job.finish({"images": metrics["images"], "labelled_faces": metrics["labelled_faces"],
                       "detections": metrics["detections"], "errors": len(errors), "images_missing": len(missing)},
                      metrics=metrics)
