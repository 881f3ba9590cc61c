"""``artextract evaluate similarity``: how good are the neighbours in an embedding space?

Outputs under ``cfg.out``
    metrics.json               retrieval metrics (P@k, R@k, hit_rate@k, MAP@R, MRR) when a label column is
                               given, top-1 cosine statistics, pixel SSIM/RMSE of sampled neighbour pairs,
                               the near-duplicate protocol
    cosine_distributions.png   densities of same-label vs different-label pair cosines (labels only)
    pairs.csv, query_grid.png  sampled queries and their top ``grid_k`` neighbours (``preprocess`` only)
    config.resolved.yaml, summary.json

Rows of the same image_id never count as neighbours of each other (``groups`` in
:mod:`artextract.eval.retrieval`): a painting's several faces share its label, so they would make
retrieval look better than it is, and a face would "find" its own painting's whole-image vector.
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from artextract.core import layout, storage
from artextract.config import EvaluateSimilarityConfig, StorageConfig
from artextract.eval.grids import grid_png
from artextract.eval.neardup import near_duplicate
from artextract.eval.retrieval import (cosine_distributions, encode_labels, knn, retrieval_metrics)
from artextract.core.runinfo import JobRun

log = logging.getLogger(__name__)
Key = tuple[str, int]  # (image_id, face_idx); face_idx -1 = the whole image
WHAT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "faces": lambda f: f >= 0, "images": lambda f: f == -1, "all": lambda f: np.ones(len(f), bool)}
JPEG_SOURCE = {"faces": ("faces", "crop_jpeg"), "images": ("images", "whole_jpeg")}  # table, column
PAIR_SIZE = 128      # both crops are resized to this square before SSIM/RMSE
TILE, CAPTION = 96, 14  # query grid tile and caption height in pixels
MAX_DIST_PAIRS = 100_000
TOP1_QUERIES = 5000  # a sample suffices for the top-1 cosine distribution; a full pass is O(N^2 D)


# ------------------------------------------------------------------------------------------ IO

def read_labels(uri: str, column: str, st: StorageConfig | None = None) -> dict[str, Any]:
    """image_id -> label from a manifest dir/file or a preprocess output (its ``images/`` table)."""
    st = st or StorageConfig()
    t = layout.labelled_rows(uri, st)[1].read(["image_id"] if column == "image_id" else ["image_id", column])
    lut: dict[str, Any] = {}
    for i, v in zip(t["image_id"].to_pylist(), t[column].to_pylist()):
        lut.setdefault(i, v)  # first row wins when a manifest repeats an image_id
    return lut


def list_keys(pre: str, what: str, st: StorageConfig | None = None) -> list[Key]:
    """All (image_id, face_idx) a preprocess output holds JPEGs for: faces, or ok whole images."""
    st = st or StorageConfig()
    table, _ = JPEG_SOURCE[what]
    keys: list[Key] = []
    for uri in layout.PreprocessOutput(pre, st).table(table).files():
        if what == "faces":
            t = storage.read_parquet(uri, st, columns=["image_id", "face_idx"])
            keys += [(i, int(f)) for i, f in zip(t["image_id"].to_pylist(), t["face_idx"].to_pylist())]
        else:
            t = storage.read_parquet(uri, st, columns=["image_id", "status"])
            keys += [(i, -1) for i, s in zip(t["image_id"].to_pylist(), t["status"].to_pylist()) if s == "ok"]
    return sorted(keys)


def read_jpegs(pre: str, keys: set[Key], st: StorageConfig | None = None) -> dict[Key, bytes]:
    """JPEG bytes for ``keys`` from a preprocess output, one shard in memory at a time."""
    st = st or StorageConfig()
    out: dict[Key, bytes] = {}
    for what, want in (("faces", {k for k in keys if k[1] >= 0}), ("images", {k for k in keys if k[1] < 0})):
        if not want:
            continue
        table, col = JPEG_SOURCE[what]
        ids = pa.array(sorted({k[0] for k in want}), pa.string())
        for uri in layout.PreprocessOutput(pre, st).table(table).files():
            cols = ["image_id", col] + (["face_idx"] if what == "faces" else [])
            t = storage.read_parquet(uri, st, columns=cols)
            t = t.filter(pc.is_in(t["image_id"], value_set=ids))
            fidx = t["face_idx"].to_pylist() if what == "faces" else [-1] * len(t)
            for i, f, data in zip(t["image_id"].to_pylist(), fidx, t[col].to_pylist()):
                if (i, int(f)) in want and data is not None:
                    out[(i, int(f))] = data
    return out


# ------------------------------------------------------------------------------------- pixels

def _rgb(jpeg: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0


def pair_similarity(a: bytes, b: bytes, size: int = PAIR_SIZE) -> tuple[float, float]:
    """(SSIM, RMSE) of two JPEGs resized to (size, size) RGB floats in [0, 1]; SSIM 1 / RMSE 0 = identical."""
    from skimage.metrics import mean_squared_error, structural_similarity

    x, y = _rgb(a, size), _rgb(b, size)
    ssim = structural_similarity(x, y, channel_axis=-1, data_range=1.0)
    return float(ssim), float(np.sqrt(mean_squared_error(x, y)))


def query_grid(rows: list[list[tuple[bytes | None, str, str]]]) -> bytes:
    """PNG bytes: one row per query of (jpeg, caption, border colour) tiles, query first."""
    return grid_png(rows, TILE, caption_px=CAPTION)


def distribution_png(pos: np.ndarray, neg: np.ndarray, column: str) -> bytes:
    """PNG bytes: overlaid densities of positive/negative pair cosines with their means marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    both = np.concatenate([pos, neg])
    # Bins over the observed range: untrained or collapsed models put everything near cos 1.
    lo, hi = (float(both.min()), float(both.max())) if len(both) else (-1.0, 1.0)
    bins = np.linspace(lo, max(hi, lo + 1e-3), 61)
    for scores, name, colour in ((pos, f"same {column}", "tab:green"), (neg, f"different {column}", "tab:red")):
        if len(scores):
            ax.hist(scores, bins=bins, density=True, alpha=0.45, color=colour, label=f"{name} (n={len(scores)})")
            ax.axvline(float(scores.mean()), color=colour, ls="--", lw=1.5)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title("pair cosines (dashed: means)")
    ax.legend(loc="upper left", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {}
    p5, p50, p95 = np.percentile(x, [5, 50, 95])
    return {"mean": float(x.mean()), "p05": float(p5), "median": float(p50), "p95": float(p95)}


# ---------------------------------------------------------------------------------------- job

def _pairs(cfg: EvaluateSimilarityConfig, X: np.ndarray, ids: np.ndarray, fidx: np.ndarray,
           codes: np.ndarray | None) -> tuple[dict[str, Any], list[dict[str, Any]], bytes]:
    """Sampled queries' top grid_k neighbours: (pixel metrics, pair rows, grid PNG)."""
    rng = np.random.default_rng(cfg.seed)
    qrows = np.sort(rng.choice(len(X), min(cfg.queries, len(X)), replace=False))
    scores, idx = knn(X, cfg.grid_k, groups=ids, rows=qrows)
    keys = {(ids[r], int(fidx[r])) for r in np.concatenate([qrows, idx[idx >= 0]])}
    jpegs = read_jpegs(cfg.preprocess or "", keys, cfg.storage)
    rows, grid = [], []
    for q, nbrs, sc in zip(qrows, idx, scores):
        qk = (ids[q], int(fidx[q]))
        cells = [(jpegs.get(qk), "query", "blue")]
        for rank, (n, s) in enumerate(zip(nbrs, sc), start=1):
            if n < 0:
                continue
            nk = (ids[n], int(fidx[n]))
            same = codes is not None and codes[q] >= 0 and codes[q] == codes[n]
            cells.append((jpegs.get(nk), f"#{rank}: {s:.3f}", "green" if same else "grey"))
            if qk in jpegs and nk in jpegs:
                ssim, rmse = pair_similarity(jpegs[qk], jpegs[nk])
                rows.append({"query_image_id": qk[0], "query_face_idx": qk[1], "rank": rank,
                             "image_id": nk[0], "face_idx": nk[1], "cosine": float(s),
                             "ssim": ssim, "rmse": rmse})
        grid.append(cells)
    r1 = [r for r in rows if r["rank"] == 1]
    mean = (lambda rs, c: float(np.mean([r[c] for r in rs])) if rs else None)
    metrics = {"queries": len(qrows), "k": cfg.grid_k, "pairs": len(rows), "size": PAIR_SIZE,
               "missing_jpegs": len(keys) - len(jpegs),
               "ssim@1": mean(r1, "ssim"), "rmse@1": mean(r1, "rmse"),
               f"ssim@{cfg.grid_k}": mean(rows, "ssim"), f"rmse@{cfg.grid_k}": mean(rows, "rmse")}
    return metrics, rows, query_grid(grid)


def _csv(rows: list[dict[str, Any]]) -> str:
    fields = ["query_image_id", "query_face_idx", "rank", "image_id", "face_idx", "cosine", "ssim", "rmse"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run(cfg: EvaluateSimilarityConfig) -> dict[str, Any]:
    """Evaluate the embedding shards ``cfg.embeddings``; writes the outputs above, returns summary.json."""
    if not cfg.embeddings or not cfg.out:
        raise ValueError("evaluate similarity needs embeddings= and out=")
    if cfg.label_column and not cfg.labels:
        raise ValueError("label_column needs labels= (a manifest or preprocess output)")
    st, out = cfg.storage, cfg.out
    job = JobRun("evaluate_similarity", cfg, out)
    t = layout.EmbeddingSet(cfg.embeddings, st).read(columns=["image_id", "face_idx", "vector", "model_version"])
    t = t.filter(pa.array(WHAT[cfg.what](t["face_idx"].to_numpy().astype(np.int64))))
    if len(t) < 2:
        raise ValueError(f"{cfg.embeddings}: {len(t)} vectors for what={cfg.what}; need at least 2")
    vec = t["vector"].combine_chunks()
    X = vec.values.to_numpy().reshape(len(t), vec.type.list_size).astype(np.float32)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)  # shards should be unit; be sure
    ids = np.array(t["image_id"].to_pylist(), object)
    fidx = t["face_idx"].to_numpy().astype(np.int64)
    versions = sorted({v for v in t["model_version"].to_pylist() if v})
    job.lap("read")

    metrics: dict[str, Any] = {"what": cfg.what, "vectors": len(X), "dim": int(X.shape[1]),
                               "model_versions": versions, "exclude_same_image": True}
    sample = np.random.default_rng(cfg.seed).permutation(len(X))[:TOP1_QUERIES]
    top1, _ = knn(X, 1, groups=ids, rows=np.sort(sample))
    metrics["top1_cosine"] = {"queries": len(sample), **_stats(top1[:, 0])}
    codes = None
    counts: dict[str, int] = {"vectors": len(X), "labelled": 0, "queries": 0, "skipped_queries": 0, "pairs": 0}
    if cfg.label_column:
        lut = read_labels(cfg.labels or "", cfg.label_column, st)
        labels = np.array([lut.get(i) for i in ids], object)
        codes = encode_labels(labels)
        ret = retrieval_metrics(X, labels, cfg.ks, groups=ids)
        metrics["labels"] = {"uri": cfg.labels, "column": cfg.label_column}
        metrics["retrieval"] = ret
        counts.update(labelled=ret["labelled"], queries=ret["queries"], skipped_queries=ret["skipped_queries"])
        pos, neg = cosine_distributions(X, labels, MAX_DIST_PAIRS, cfg.seed, groups=ids)
        metrics["cosine_distributions"] = {"positive": {"n": len(pos), **_stats(pos)},
                                           "negative": {"n": len(neg), **_stats(neg)}}
        storage.write_bytes(storage.join(out, "cosine_distributions.png"),
                            distribution_png(pos, neg, cfg.label_column), st)
    else:
        metrics["retrieval"] = {"note": "no label_column: relevant neighbours are undefined, so only "
                                        "label-free metrics (top-1 cosine, pixel similarity, near-duplicate) "
                                        "are reported"}
    job.lap("retrieval")

    if cfg.preprocess:
        pm, rows, png = _pairs(cfg, X, ids, fidx, codes)
        metrics["pairs"] = pm
        counts["pairs"] = len(rows)
        storage.write_text(storage.join(out, "pairs.csv"), _csv(rows), st)
        storage.write_bytes(storage.join(out, "query_grid.png"), png, st)
        job.lap("pairs")

    nd = cfg.near_duplicate
    if nd.enabled:
        if not cfg.preprocess:
            metrics["near_duplicate"] = {"skipped": "needs preprocess= for the original images"}
        elif not nd.model:
            raise ValueError("near_duplicate.enabled needs near_duplicate.model (the model of the shards)")
        else:
            keys = list_keys(cfg.preprocess, nd.what, st)
            rng = np.random.default_rng(cfg.seed)
            pick = [keys[i] for i in sorted(rng.choice(len(keys), min(nd.images, len(keys)), replace=False))]
            jpegs = read_jpegs(cfg.preprocess, set(pick), st)
            metrics["near_duplicate"] = near_duplicate([jpegs[k] for k in pick if k in jpegs], nd, cfg.seed,
                                                       versions, st)
            counts["near_duplicate_copies"] = int(metrics["near_duplicate"].get("copies", 0))
        job.lap("near_duplicate")

    storage.write_json(storage.join(out, "metrics.json"), metrics, st)
    return job.finish(counts, metrics=metrics)
