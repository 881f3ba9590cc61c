"""Build a sharded FAISS index from embedding parquet shards and publish it as a new version.

Rows go to shard ``id % N`` (id = 63-bit hash of the key). The index type follows the vector count
(exact Flat below ``flat_threshold``, ``IVF{4*sqrt(n)},Flat`` above) unless a faiss factory string
is forced. The coarse quantizer is trained ONCE on a sample; every shard is a copy of that trained
empty index with its own vectors added, so all shards share the same centroids.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable, Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artextract import storage
from artextract.config import StorageConfig
from artextract.index import versions as V
from artextract.index.lock import index_lock
from artextract.index.search import METRICS, exact_search, search_shards
from artextract.index.segments import write_template

FLAT_THRESHOLD = 50_000


def choose_factory(n: int, flat_threshold: int = FLAT_THRESHOLD) -> str:
    """Flat (exact) for small collections, IVF with nlist ~ 4*sqrt(n) above ``flat_threshold``."""
    if n < flat_threshold:
        return "Flat"
    return f"IVF{max(1, int(round(4 * math.sqrt(n))))},Flat"


def effective_factory(factory: str) -> str:
    """Non-IVF indexes get an IDMap2 wrapper so that add_with_ids / remove_ids work on them."""
    if "IVF" in factory or factory.startswith("IDMap"):
        return factory
    return f"IDMap2,{factory}"


def train_template(vectors: np.ndarray, factory: str, metric: str = "ip", train_size: int = 100_000,
                   seed: int = 0) -> bytes:
    """Create and train (once, on a sample of at most ``train_size`` rows) an empty index; returns it
    serialized, ready to be copied for every shard."""
    index = faiss.index_factory(vectors.shape[1], effective_factory(factory), METRICS[metric])
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors
        if len(vectors) > train_size:
            sample = vectors[np.sort(rng.choice(len(vectors), train_size, replace=False))]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def build_shard(template: bytes, vectors: np.ndarray, ids: np.ndarray) -> bytes:
    """Copy the trained empty ``template`` index, add (vectors, ids), return the serialized shard."""
    index = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return faiss.serialize_index(index).tobytes()


def ids_table(ids: np.ndarray, image_ids: list[str], faces: np.ndarray) -> pa.Table:
    """The id map of a shard: (id, image_id, face_idx) sorted by id."""
    order = np.argsort(ids, kind="stable")
    return pa.table({"id": pa.array(ids[order], pa.int64()),
                     "image_id": pa.array([image_ids[i] for i in order], pa.string()),
                     "face_idx": pa.array(faces[order], pa.int16())}, schema=V.IDS_SCHEMA)


def write_shard(out_uri: str, version: int, shard: int, data: bytes, ids: pa.Table,
                cfg: StorageConfig | None = None) -> dict[str, Any]:
    """Write one shard's index file and id map into a version; returns its index.json entry."""
    index_rel, ids_rel = V.shard_files(shard)
    vdir = V.version_dir(out_uri, version)
    sink = pa.BufferOutputStream()
    pq.write_table(ids, sink, compression="zstd")
    ids_bytes = sink.getvalue().to_pybytes()
    storage.write_bytes(storage.join(vdir, index_rel), data, cfg)
    storage.write_bytes(storage.join(vdir, ids_rel), ids_bytes, cfg)
    return {"shard": shard, "index": index_rel, "ids": ids_rel, "count": len(ids),
            "sha256": V.sha256(data), "ids_sha256": V.sha256(ids_bytes), "bytes": len(data)}


def measure_recall(indexes: list[faiss.Index], vectors: np.ndarray, ids: np.ndarray, metric: str,
                   nprobe: int | None, queries: int = 200, k: int = 10, seed: int = 0) -> float | None:
    """recall@k of the sharded index vs exact search, on ``queries`` rows sampled as queries."""
    if len(vectors) == 0:
        return None
    rng = np.random.default_rng(seed)
    q = vectors[np.sort(rng.choice(len(vectors), min(queries, len(vectors)), replace=False))]
    k = min(k, len(vectors))
    _, exact_pos = exact_search(vectors, q, k, metric, backend="faiss")
    _, got = search_shards(indexes, q, k, metric, nprobe)
    hits = sum(len(set(ids[row].tolist()) & set(g.tolist())) for row, g in zip(exact_pos, got))
    return round(hits / (len(q) * k), 4)


def read_embeddings(embeddings_uri: str, cfg: StorageConfig | None = None) -> pa.Table:
    """All embedding shards (``part-*.parquet``) under ``embeddings_uri`` as one table."""
    return storage.read_parquet(embeddings_uri, cfg, columns=["image_id", "face_idx", "vector", "model_version"])


def build_index(embeddings_uri: str | pa.Table, out_uri: str, shards: int = 4, factory: str | None = None,
                metric: str = "ip", storage_cfg: StorageConfig | None = None,
                parallel: Literal["local", "ray"] = "local", keep: int = 3, nprobe: int = 16,
                flat_threshold: int = FLAT_THRESHOLD, train_size: int = 100_000,
                recall_queries: int = 200, seed: int = 0, force_lock: bool = False, locked: bool = False,
                extra: dict[str, Any] | None = None,
                before_publish: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Build N shards from embeddings (a URI or a table), write them as a new version under
    ``out_uri/versions/``, publish it (CURRENT written last), prune to ``keep`` versions; returns
    the new index.json. Holds ``out_uri/LOCK`` while writing (see lock.py) unless ``locked`` says
    the caller already holds it. ``extra`` keys go into index.json; ``before_publish(version)``
    may write more files into the version directory before it becomes visible."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    if shards < 1:
        raise ValueError("shards must be >= 1")
    table = embeddings_uri if isinstance(embeddings_uri, pa.Table) else read_embeddings(embeddings_uri, storage_cfg)
    vectors = V.vectors_of(table)
    ids, image_ids, faces = V.table_keys(table)
    factory = factory or choose_factory(len(vectors), flat_threshold)
    template = train_template(vectors, factory, metric, train_size, seed)
    parts = [np.flatnonzero(ids % shards == s) for s in range(shards)]
    if parallel == "ray":
        from artextract.index.ray_build import build_shards_ray

        blobs = build_shards_ray(template, [(vectors[p], ids[p]) for p in parts])
    elif parallel == "local":
        blobs = [build_shard(template, vectors[p], ids[p]) for p in parts]
    else:
        raise ValueError(f"parallel must be 'local' or 'ray', not {parallel!r}")
    guard = nullcontext() if locked else index_lock(out_uri, storage_cfg, owner="build_index", force=force_lock)
    with guard:
        version = V.next_version(out_uri, storage_cfg)
        entries = [write_shard(out_uri, version, s, blob, ids_table(ids[p], [image_ids[i] for i in p], faces[p]),
                               storage_cfg) for s, (p, blob) in enumerate(zip(parts, blobs))]
        indexes = [faiss.deserialize_index(np.frombuffer(b, dtype=np.uint8)) for b in blobs]
        manifest = {
            "shards": entries, "num_shards": shards,
            # the trained empty index: updates add new vectors to copies of it (segments.py)
            "template": write_template(out_uri, version, template, storage_cfg),
            "counts": [e["count"] for e in entries],
            "total": int(len(ids)), "dim": int(vectors.shape[1]), "metric": metric,
            "factory": effective_factory(factory), "nprobe": nprobe,
            "model_versions": V.model_versions(table), "parent": None,
            "recall_at_10": measure_recall(indexes, vectors, ids, metric, nprobe, recall_queries, 10, seed),
            "recall_queries": min(recall_queries, len(ids)),
            **(extra or {}),
        }
        if before_publish is not None:
            before_publish(version)
        V.write_manifest(out_uri, version, manifest, storage_cfg)
        V.publish(out_uri, version, storage_cfg)
        V.prune(out_uri, keep, storage_cfg)
    return V.read_manifest(out_uri, version, storage_cfg)
