"""``artextract evaluate classifier``: run a trained classifier over a split (or a new collection)
and write metrics.json, confusion matrices, t-SNE, outliers and report.html.

The rows come from the run's ``splits.parquet`` (the held-out ``test`` split by default), so the
evaluation never sees training images unless asked to (``split=train``). ``split=all`` evaluates
every row of ``input``: a new, possibly unlabelled, collection.
"""
from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from artextract.core import storage
from artextract.config import EvaluateClassifierConfig
from artextract.eval.classifier_report import ClassifierPredictions, TaskPredictions, write_classifier_report
from artextract.models.crnn import CRNNClassifier
from artextract.core.runinfo import JobRun
from artextract.train import checkpoint as ckpt
from artextract.data import loaders as tdata

log = logging.getLogger(__name__)
THUMB_PX = 128


def load_classifier(run: str, which: str, storage_cfg=None) -> tuple[CRNNClassifier, dict[str, Any], dict]:
    """(model in eval mode, checkpoint meta, progress) from a training run directory."""
    state = ckpt.load(ckpt.checkpoint_uri(run, which), storage_cfg, task="classifier")
    meta = state["meta"]
    model_cfg = {**meta["model"], "weights": "none"}  # the state dict carries the weights
    model = CRNNClassifier({t: len(c) for t, c in meta["vocab"].items()}, storage=storage_cfg, **model_cfg)
    model.load_state_dict(state["state_dict"])
    return model.eval(), meta, state["progress"]


def _thumb(data: bytes | None) -> bytes | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            return buf.getvalue()
    except Exception:  # the grid shows a placeholder; metrics are unaffected
        return None


def _split(cfg: EvaluateClassifierConfig, meta: dict[str, Any]) -> str:
    if cfg.split is not None:
        return cfg.split
    return "test" if cfg.input in (None, meta["input"]) else "all"  # another collection: all of it


def _rows(cfg: EvaluateClassifierConfig, meta: dict[str, Any], split: str) -> tuple[pa.Table, dict[str, np.ndarray]]:
    tasks = tuple(meta["tasks"])
    source = cfg.input or meta["input"]
    keys = tdata.load_rows(source, tasks, cfg.storage, require_labels=False)
    if split != "all":
        splits = storage.read_parquet(storage.join(cfg.run, "splits.parquet"), cfg.storage,
                                      columns=["image_id", "split"])
        wanted = pc.filter(splits["image_id"], pc.equal(splits["split"], split))
        keys = keys.filter(pc.is_in(keys["image_id"], value_set=wanted))
        if len(keys) == 0:
            raise ValueError(f"no rows of split {split!r} of {cfg.run} found in {source} (split=all evaluates "
                             "every row of another collection)")
    return keys, tdata.encode_labels(keys, meta["vocab"])


def label_coverage(keys: pa.Table, vocab: dict[str, list[str]], top: int = 20) -> dict[str, dict[str, Any]]:
    """Per task: rows with a class the model has a head for (scored), rows whose class it has never
    seen (counted by class, not scored) and unlabelled rows."""
    out = {}
    for task, classes in vocab.items():
        known = set(classes)
        values = [v for v in keys[task].to_pylist() if v not in (None, "")]
        names, counts = np.unique([v for v in values if v not in known], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        out[task] = {"rows": len(keys), "scored": sum(v in known for v in values),
                     "unknown_class_rows": int(counts.sum()), "unlabelled": len(keys) - len(values),
                     "unknown_classes": {str(names[i]): int(counts[i]) for i in order[:top]}}
        if counts.sum():
            log.warning("%s: %d of %d rows have classes the model has no head for (%s%s): counted, not scored",
                        task, int(counts.sum()), len(keys),
                        ", ".join(f"{names[i]} {counts[i]}" for i in order[:5]), ", …" if len(order) > 5 else "")
    return out


def _seen_in_training(cfg: EvaluateClassifierConfig, keys: pa.Table) -> int:
    # Another collection may share images with the training data: say how many, since they inflate scores.
    splits = storage.read_parquet(storage.join(cfg.run, "splits.parquet"), cfg.storage, columns=["image_id", "split"])
    trained = pc.filter(splits["image_id"], pc.is_in(splits["split"], value_set=pa.array(["train", "val"])))
    return int(pc.sum(pc.is_in(keys["image_id"], value_set=trained)).as_py() or 0)


@torch.no_grad()
def predict(model: CRNNClassifier, keys: pa.Table, image_size: int, batch_size: int, device: torch.device,
            storage_cfg=None, tta: str = "none") -> tuple[dict[str, np.ndarray], np.ndarray, list[bytes | None]]:
    """Softmax probabilities per task, pooled features (N, D) and thumbnails for ``keys`` rows;
    ``tta="flip"`` averages each image with its mirror (features too)."""
    transform = tdata.image_transform(image_size, augment=False)
    probs: dict[str, list[np.ndarray]] = {t: [] for t in model.heads}
    feats, thumbs = [], []
    model.to(device)
    for lo in range(0, len(keys), batch_size):
        part = keys.slice(lo, batch_size)
        blobs = tdata.fetch_bytes(part["src"].to_pylist(), part["src_row"].to_pylist(), storage_cfg)
        x = torch.from_numpy(tdata.decode_images(blobs, transform, image_size)).to(device)
        views = [x, x.flip(3)] if tta == "flip" else [x]
        fs = [model.features(v.contiguous(memory_format=torch.channels_last)) for v in views]
        feats.append(torch.stack(fs).mean(0).float().cpu().numpy())
        for t, head in model.heads.items():
            probs[t].append(torch.stack([torch.softmax(head(f).float(), dim=1) for f in fs]).mean(0).cpu().numpy())
        thumbs.extend(_thumb(b) for b in blobs)
        log.info("evaluated %d/%d images", min(lo + batch_size, len(keys)), len(keys))
    return {t: np.concatenate(p) for t, p in probs.items()}, np.concatenate(feats), thumbs


def run(cfg: EvaluateClassifierConfig) -> dict[str, Any]:
    """Evaluate ``cfg.run``'s checkpoint on ``cfg.split`` and write the report into ``cfg.out``."""
    if not cfg.run or not cfg.out:
        raise ValueError("evaluate classifier needs run= and out=")
    job = JobRun("evaluate_classifier", cfg, cfg.out)
    model, meta, progress = load_classifier(cfg.run, cfg.checkpoint, cfg.storage)
    split = _split(cfg, meta)
    keys, labels = _rows(cfg, meta, split)
    coverage = label_coverage(keys, meta["vocab"])
    seen = _seen_in_training(cfg, keys) if split == "all" else 0
    job.lap("load")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    # Older runs have no eval_size: they were validated at image_size.
    size = meta.get("eval_size") or meta["image_size"]
    probs, feats, thumbs = predict(model, keys, size, cfg.batch_size,
                                   torch.device("cuda" if use_cuda else "cpu"), cfg.storage, cfg.tta)
    job.lap("predict")
    preds = ClassifierPredictions(
        image_ids=keys["image_id"].to_pylist(),
        tasks={t: TaskPredictions(meta["vocab"][t], labels[t], probs[t]) for t in meta["tasks"]},
        embeddings=feats, thumbnails=thumbs, titles=keys["image_id"].to_pylist())
    extra = {"run": cfg.run, "checkpoint": cfg.checkpoint, "checkpoint_epoch": progress["epoch"],
             "checkpoint_step": progress["step"], "split": split, "input": cfg.input or meta["input"],
             "backbone": meta["model"]["backbone"], "sequence": meta["model"]["sequence"],
             "rnn": meta["model"]["rnn"], "image_size": meta["image_size"], "eval_size": size, "tta": cfg.tta,
             "label_coverage": coverage, "rows_seen_in_training": seen}
    metrics = write_classifier_report(cfg.out, preds, storage_cfg=cfg.storage, tsne_max_points=cfg.tsne_max_points,
                                      outlier_method=cfg.outlier_method, outlier_top=cfg.outlier_top,
                                      mispredict_min_prob=cfg.mispredict_min_prob, seed=cfg.seed, extra=extra)
    job.lap("report")
    headline = {t: {k: m.get(k) for k in ("n", "accuracy", "top3", "balanced_accuracy", "macro_f1")}
                for t, m in metrics["tasks"].items()}
    counts = {"images": len(keys), "rows_seen_in_training": seen,
              **{f"{t}_{k}": c[k] for t, c in coverage.items() for k in ("scored", "unknown_class_rows", "unlabelled")}}
    return job.finish(counts, metrics=headline, unknown_classes={t: c["unknown_classes"] for t, c in coverage.items()},
                      report=storage.join(cfg.out, "report.html"))
