"""``artextract search``: k-NN over a published index, written as results.json (+ grid.png).

Queries are either a ``.npy`` file (``vector=``, shape (d,) or (q, d)) or an image_id (``id=``,
    optionally ``face_idx=``; default: every stored vector of that image, one query each). An
    image's vectors are taken from the index itself: ``reconstruct(id)`` on the shard owning the id
    (``id % num_shards``); IVF shards get a hashtable direct map first, so this works for Flat and
    IVF-Flat (exact) and for PQ/SQ codes (approximate: ``query.approximate`` is true then). When
    ``embeddings=`` is set, or reconstruction fails, the vectors are read from the embedding shards
    instead (``embeddings=`` or the ``embeddings`` in the version's lineage).
    Nothing is excluded: an id query finds its own vector first (score ~1 for normalised vectors).
    An image (``image=``) is queried by each detected face, else by the whole painting, embedded with
    the index's model: see :mod:`artextract.search.query`.

    Hits come from :class:`artextract.search.service.SearchService` (the one ``artextract serve`` uses:
same hit schema, pose and copy re-ranking). Shards are searched in-process or by one Ray actor each (``parallel=``; ``auto`` uses actors from
    ``ray_min_vectors`` vectors on, :mod:`artextract.index.ray_search`); ``fan_out`` records which.

    Outputs under ``out``: ``results.json`` (per query: its key/source and hits with rank, image_id,
    face_idx, score; ``box`` (x1, y1, x2, y2 in original pixels) when ``faces=`` is given; manifest
    columns from ``metadata_columns`` present in ``manifest=``), ``grid.png`` (one row per query:
    the query thumbnail, then the top-k; face crops from ``faces/crop_jpeg`` for face_idx >= 0,
    ``images/whole_jpeg`` for whole-image keys (face_idx -1)) -- only with ``faces=``, otherwise
    ``results.json`` says why it was skipped -- and summary.json / config.resolved.yaml (JobRun).
"""
from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from artextract.core import layout, storage
from artextract.config import ConfigError, SearchConfig, StorageConfig
from artextract.core.runinfo import JobRun
from artextract.eval.grids import grid_png
from artextract.index import versions as V
from artextract.search.query import image_queries, recorded_embeddings
from artextract.search.rerank import hit_image
from artextract.search.service import SearchService, fetch_depth

log = logging.getLogger(__name__)


def _read_npy(uri: str, cfg: StorageConfig) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(storage.read_bytes(uri, cfg)), allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"query vector file not found: {uri}") from None
    except ValueError as exc:
        raise ValueError(f"{uri} is not a .npy array file: {exc}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{uri}: expected a (d,) or (q, d) float array, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _vectors_from_embeddings(uri: str, keys: list[V.Key], cfg: StorageConfig) -> np.ndarray:
    table = layout.EmbeddingSet(uri, cfg).rows([k[0] for k in keys], ["face_idx", "vector"])
    found = {(i, int(f)): r for r, (i, f) in enumerate(zip(table["image_id"].to_pylist(),
                                                           table["face_idx"].to_pylist()))}
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"embeddings at {uri} lack the keys {missing[:5]}")
    vec = V.vectors_of(table)
    return vec[[found[k] for k in keys]]


def query_vectors(service: SearchService, cfg: SearchConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(queries (q, d), per-query descriptions) from ``vector=``, ``id=`` or ``image=`` (module doc;
    image queries carry their thumbnail as ``jpeg``)."""
    reader = service.reader
    if cfg.image:
        q, info = image_queries(reader, cfg, service.models)
    elif cfg.vector:
        q = _read_npy(cfg.vector, cfg.storage)
        info = [{"source": "vector", "vector": cfg.vector, "row": i} for i in range(len(q))]
    else:
        keys = [k for k in reader.keys_of_image(cfg.id) if cfg.face_idx is None or k[1] == cfg.face_idx]
        if not keys:
            what = f"image_id {cfg.id!r}" + (f" face_idx {cfg.face_idx}" if cfg.face_idx is not None else "")
            raise ValueError(f"{what} is not in the index at {cfg.index} (version {reader.version})")
        source, approximate = "index", False
        q = None
        if not cfg.embeddings:
            try:
                q = reader.reconstruct(keys)
                approximate = not reader.manifest["factory"].endswith(",Flat")
            except RuntimeError as exc:
                log.info("cannot reconstruct vectors from the index (%s); reading embeddings", exc)
        if q is None:
            emb = cfg.embeddings or recorded_embeddings(reader)
            if not emb:
                raise RuntimeError("the index cannot reconstruct stored vectors and no embeddings URI is "
                                   "known: pass embeddings=URI")
            q, source = _vectors_from_embeddings(emb, keys, cfg.storage), f"embeddings:{emb}"
        info = [{"source": source, "image_id": i, "face_idx": f, "approximate": approximate} for i, f in keys]
    if q.shape[1] != reader.manifest["dim"]:
        raise ValueError(f"query vectors have dim {q.shape[1]}, the index has dim {reader.manifest['dim']}")
    return q, info


def render_grid(results: list[dict[str, Any]], queries: list[dict[str, Any]], crops: dict[V.Key, bytes],
                wholes: dict[str, bytes], px: int, query_jpegs: list[bytes | None]) -> bytes:
    """PNG: one row per query, the query thumbnail (outlined; an image query's face crop or whole
    painting) then its hits, captioned with rank/score."""
    rows = []
    for r, q, qjpeg in zip(results, queries, query_jpegs):
        if "image_id" in q:
            cell = (hit_image((q["image_id"], q["face_idx"]), crops, wholes),
                    f"Q {q['image_id']}#{q['face_idx']}"[:px // 6], "#c81e1e")
        elif q.get("source") == "image":
            cell = (qjpeg, "Q whole image" if q["face_idx"] < 0 else f"Q face {q['face_idx']}", "#c81e1e")
        else:
            cell = (None, f"Q vector row {q['row']}", "#c81e1e")
        rows.append([cell] + [(hit_image((h["image_id"], h["face_idx"]), crops, wholes),
                               f"#{h['rank']} {h['score']:.3f}", None) for h in r["hits"]])
    return grid_png(rows, px, margin=2, caption_px=14, fit="contain")


def _check(cfg: SearchConfig) -> None:
    if not cfg.index or not cfg.out:
        raise ConfigError("search needs index= and out= (or --index/--out)")
    if sum(bool(x) for x in (cfg.vector, cfg.id, cfg.image)) != 1:
        raise ConfigError("search needs exactly one of vector= (--vector FILE) or id= (--id IMAGE_ID) or "
                          "image= (--image PATH)")
    if cfg.face_idx is not None and not cfg.id:
        raise ConfigError("face_idx= only applies to id= queries")
    if cfg.pose != "off" and not cfg.faces:
        raise ConfigError("pose= needs faces= (the preprocess output holding each face's yaw/pitch/roll)")
    if cfg.copies and (not cfg.faces or cfg.pose != "off"):
        raise ConfigError("copies=true needs faces= (the hits' crops) and pose=off (one re-ranking at a time)")


def run_search(cfg: SearchConfig) -> dict[str, Any]:
    """k-NN search; writes results.json (+ grid.png) under ``out``; returns the summary."""
    _check(cfg)
    job = JobRun("search", cfg, cfg.out)
    # discover=False: the CLI joins only the faces= / manifest= it is given
    with SearchService.open(cfg, cfg.parallel, discover=False, columns=cfg.metadata_columns) as service:
        reader = service.reader
        job.lap("load")
        q, queries = query_vectors(service, cfg)
        query_jpegs = [qd.pop("jpeg", None) for qd in queries]
        job.lap("query")
        asks = [{"key": (qd["image_id"], qd["face_idx"]) if "image_id" in qd else None, "pose": qd.get("pose"),
                 "jpeg": jpeg} for qd, jpeg in zip(queries, query_jpegs)]
        hits, copy_counts = service.search(q, asks, cfg.k, fetch_depth(cfg.k, cfg.pose, cfg.copies, cfg),
                                           cfg.pose, cfg.copies, boxes=bool(cfg.faces))
        job.lap("search" if not cfg.copies else "verify")
        if cfg.pose != "off":  # a stored query's own pose, as the catalog knows it
            poses = service.catalog.poses([a["key"] for a in asks if a["key"] is not None])
            for qd, a in zip(queries, asks):
                if a["key"] is not None:
                    p = poses.get(a["key"])
                    qd["pose"] = list(p) if p else None
        results = [{"query": qd, "hits": hs} for qd, hs in zip(queries, hits)]
        if cfg.manifest:
            for hs in hits:
                for h in hs:
                    h["metadata"] = service.catalog.meta.get(h["image_id"])
        job.lap("join")
        grid_uri, note = None, None
        if not cfg.faces:
            note = "grid skipped: no faces= (preprocess output) given to take thumbnails from"
        elif not cfg.grid:
            note = "grid skipped: grid=false"
        else:
            keys = {(h["image_id"], h["face_idx"]) for hs in hits for h in hs}
            keys |= {a["key"] for a in asks if a["key"] is not None}
            crops, wholes = service.catalog.pixels(sorted(keys))
            grid_uri = storage.join(cfg.out, "grid.png")
            storage.write_bytes(grid_uri, render_grid(results, queries, crops, wholes, cfg.thumb_px, query_jpegs),
                                cfg.storage)
            job.lap("grid")
        doc = {"index": cfg.index, "version": reader.version, "metric": reader.metric, "k": cfg.k,
               "nprobe": cfg.nprobe or reader.nprobe, "k_factor": cfg.k_factor or reader.k_factor,
               "factory": reader.manifest["factory"], "fan_out": service.fan_out, "score": service.score_note,
               "grid": grid_uri, "grid_note": note, "results": results}
        storage.write_json(storage.join(cfg.out, "results.json"), doc, cfg.storage)
        counts = {"queries": len(results), "k": cfg.k, "hits": sum(len(r["hits"]) for r in results),
                  "index_version": reader.version, "index_vectors": reader.ntotal,
                  "grid": grid_uri is not None, "fan_out": service.fan_out, **copy_counts}
    return job.finish(counts, results=storage.join(cfg.out, "results.json"), grid=grid_uri, grid_note=note)
