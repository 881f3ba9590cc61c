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

from artextract.core import layout, storage
from artextract.config import StorageConfig
from artextract.index import fastscan as FS
from artextract.index import refine as R
from artextract.index import tune as T
from artextract.index import versions as V
from artextract.index.lock import index_lock
from artextract.index.exact import METRICS
from artextract.index.shard import ShardSearcher, search_shards
from artextract.index.segments import build_shard, write_template

FLAT_THRESHOLD = 50_000
COMPRESS_THRESHOLD = 4_000_000


def choose_factory(n: int, flat_threshold: int = FLAT_THRESHOLD, dim: int = 256,
                   compress_threshold: int = COMPRESS_THRESHOLD) -> str:
    """Flat (exact) for small collections, IVF with nlist ~ 4*sqrt(n) above ``flat_threshold``; from
    ``compress_threshold`` on (4 GB of float32 at d=256) 4-bit fast-scan PQ with 2 dims per
    sub-quantizer plus exact re-ranking (``RFlat``): the configuration docs/benchmarks.md measured
    at recall@10 >= 0.95 with a fraction of IVF-Flat's memory (its codes on disk: refine_store=disk)."""
    if n < flat_threshold:
        return "Flat"
    nlist = max(1, int(round(4 * math.sqrt(n))))
    if n < compress_threshold or dim % 2:
        return f"IVF{nlist},Flat"
    return f"IVF{nlist},PQ{dim // 2}x4fs,RFlat"


def effective_factory(factory: str) -> str:
    """Non-IVF indexes get an IDMap2 wrapper so that add_with_ids / remove_ids work on them (the
    refine suffix, split off by refine.split_factory, stays at the end)."""
    base = R.split_factory(factory)[0]
    suffix = factory[len(base):]
    return (base if "IVF" in base or base.startswith("IDMap") else f"IDMap2,{base}") + suffix


def _sample(vectors: np.ndarray, train_size: int, seed: int) -> np.ndarray:
    if len(vectors) <= train_size:
        return vectors
    rng = np.random.default_rng(seed)
    return vectors[np.sort(rng.choice(len(vectors), train_size, replace=False))]


def train_template(vectors: np.ndarray, factory: str, metric: str = "ip", train_size: int = 100_000,
                   seed: int = 0) -> bytes:
    """Create and train (once, on a sample of at most ``train_size`` rows) an empty index of the
    compressed part of ``factory`` (its refine suffix is :func:`train_refine`'s); returns it
    serialized, ready to be copied for every shard."""
    stored = FS.stored_factory(R.split_factory(effective_factory(factory))[0])[0]  # fastscan.py: why
    index = faiss.index_factory(vectors.shape[1], stored, METRICS[metric])
    if not index.is_trained:
        index.train(np.ascontiguousarray(_sample(vectors, train_size, seed), dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def train_refine(vectors: np.ndarray, factory: str, metric: str = "ip", train_size: int = 100_000,
                 seed: int = 0) -> bytes | None:
    """The trained refine codec of ``factory`` (serialized), None when it has no refine suffix."""
    codec = R.split_factory(factory)[1]
    if codec is None:
        return None
    return R.train_codec(codec, vectors.shape[1], METRICS[metric], _sample(vectors, train_size, seed))


def ids_table(ids: np.ndarray, image_ids: list[str], faces: np.ndarray) -> pa.Table:
    """The id map of a shard: (id, image_id, face_idx) sorted by id."""
    order = np.argsort(ids, kind="stable")
    return pa.table({"id": pa.array(ids[order], pa.int64()),
                     "image_id": pa.array([image_ids[i] for i in order], pa.string()),
                     "face_idx": pa.array(faces[order], pa.int16())}, schema=V.IDS_SCHEMA)


def write_shard(out_uri: str, version: int, shard: int, data: bytes, ids: pa.Table,
                cfg: StorageConfig | None = None, codes: np.ndarray | None = None) -> dict[str, Any]:
    """Write one shard's index file, id map (and refine codes, one row per id-map row) into a
    version; returns its index.json entry."""
    index_rel, ids_rel = V.shard_files(shard)
    vdir = V.version_dir(out_uri, version)
    sink = pa.BufferOutputStream()
    pq.write_table(ids, sink, compression="zstd")
    ids_bytes = sink.getvalue().to_pybytes()
    storage.write_bytes(storage.join(vdir, index_rel), data, cfg)
    storage.write_bytes(storage.join(vdir, ids_rel), ids_bytes, cfg)
    entry = {"shard": shard, "index": index_rel, "ids": ids_rel, "count": len(ids),
             "sha256": V.sha256(data), "ids_sha256": V.sha256(ids_bytes), "bytes": len(data)}
    if codes is not None:
        entry["refine"] = R.write_codes(out_uri, version, R.codes_rel(shard), codes, cfg)
    return entry


def measure_recall(searchers: list[ShardSearcher], vectors: np.ndarray, ids: np.ndarray, metric: str,
                   nprobe: int | None, queries: int = 200, k: int = 10, seed: int = 0,
                   k_factor: int | None = None) -> float | None:
    """recall@k of the sharded index vs exact search, on ``queries`` rows of the collection (their
    own ids excluded: tune.py)."""
    if len(vectors) < 2:
        return None
    q, me = T.sample_queries(vectors, ids, queries, seed)
    search = lambda qq, kk, npb, kf: search_shards(searchers, qq, kk, metric, npb, kf)  # noqa: E731
    return T.recall(search, q, me, T.truth(vectors, ids, q, me, k, metric), k, nprobe, k_factor)


def tune_search(searchers: list[ShardSearcher], vectors: np.ndarray, ids: np.ndarray, metric: str,
                target: float, queries: int = 200, k: int = 10, seed: int = 0, nprobe: int | None = None,
                k_factor: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(chosen {nprobe, k_factor, recall, ms_per_query}, all points): tune.tune over the shards,
    sweeping what is not fixed (nprobe only on IVF, k_factor only with re-ranking codes)."""
    q, me = T.sample_queries(vectors, ids, queries, seed)
    search = lambda qq, kk, npb, kf: search_shards(searchers, qq, kk, metric, npb, kf)  # noqa: E731
    ivf = faiss.try_extract_index_ivf(searchers[0].index)
    nprobes = [nprobe] if nprobe or ivf is None else T.nprobe_grid(ivf.nlist)
    k_factors = [k_factor or 1] if k_factor or searchers[0].refine is None else list(T.K_FACTORS)
    return T.tune(search, q, me, T.truth(vectors, ids, q, me, k, metric), k, nprobes, k_factors, target)


def read_embeddings(embeddings_uri: str, cfg: StorageConfig | None = None) -> pa.Table:
    """All embedding shards (``part-*.parquet``) under ``embeddings_uri`` as one table."""
    return layout.EmbeddingSet(embeddings_uri, cfg).read(columns=["image_id", "face_idx", "vector", "model_version"])


def _shard_codes(codec: faiss.Index | None, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """A shard's refine codes in id-map order (None without refine)."""
    if codec is None:
        return None
    return R.sorted_codes(ids, R.encode(codec, vectors))


# How the shards' add + serialize runs: (trained template, [(vectors, ids)] per shard) -> serialized shards.
ShardExecutor = Callable[[bytes, list[tuple[np.ndarray, np.ndarray]]], list[bytes]]


def build_shards_local(template: bytes, parts: list[tuple[np.ndarray, np.ndarray]]) -> list[bytes]:
    """The in-process executor: one shard after another."""
    return [build_shard(template, vectors, ids) for vectors, ids in parts]


def resolve_executor(parallel: "str | ShardExecutor") -> ShardExecutor:
    """An executor passed in as is; ``local`` the in-process one; ``ray`` the Ray-task adapter
    (index/ray_build.py, imported only then, so the library never needs Ray)."""
    if callable(parallel):
        return parallel
    if parallel == "local":
        return build_shards_local
    if parallel == "ray":
        from artextract.index.ray_build import build_shards_ray  # lazy: ray

        return build_shards_ray
    raise ValueError(f"parallel must be 'local', 'ray' or a shard executor, not {parallel!r}")


def build_index(embeddings_uri: str | pa.Table, out_uri: str, shards: int = 4, factory: str | None = None,
                metric: str = "ip", storage_cfg: StorageConfig | None = None,
                parallel: "Literal['local', 'ray'] | ShardExecutor" = "local", keep: int = 3, nprobe: int | None = None,
                flat_threshold: int = FLAT_THRESHOLD, train_size: int = 100_000,
                recall_queries: int = 200, seed: int = 0, force_lock: bool = False, locked: bool = False,
                extra: dict[str, Any] | None = None,
                before_publish: Callable[[int], None] | None = None, k_factor: int | None = None,
                target_recall: float = 0.95, refine_store: str = "disk",
                compress_threshold: int = COMPRESS_THRESHOLD) -> dict[str, Any]:
    """Build N shards from embeddings (a URI or a table), write them as a new version under
    ``out_uri/versions/``, publish it (CURRENT written last), prune to ``keep`` versions; returns
    the new index.json. Holds ``out_uri/LOCK`` while writing (see lock.py) unless ``locked`` says
    the caller already holds it. index.json records the ``lineage`` of an embeddings URI
    (core/layout.py: its embed run, preprocess output, manifest); ``extra`` keys go into index.json; ``before_publish(version)``
    may write more files into the version directory before it becomes visible.

    An IVF index's ``nprobe`` (and, with a refine suffix, ``k_factor``) left None is tuned on the
    recall queries for ``target_recall`` (tune.py); the chosen point and the whole sweep are recorded.
    ``parallel``: the shard executor (resolve_executor), so the caller decides where shards build."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    if shards < 1:
        raise ValueError("shards must be >= 1")
    if refine_store not in R.STORES:
        raise ValueError(f"refine_store must be one of {R.STORES}, not {refine_store!r}")
    table = embeddings_uri if isinstance(embeddings_uri, pa.Table) else read_embeddings(embeddings_uri, storage_cfg)
    vectors = V.vectors_of(table)
    ids, image_ids, faces = V.table_keys(table)
    factory = effective_factory(factory or choose_factory(len(vectors), flat_threshold, vectors.shape[1],
                                                          compress_threshold))
    template = train_template(vectors, factory, metric, train_size, seed)
    codec = train_refine(vectors, factory, metric, train_size, seed)
    parts = [np.flatnonzero(ids % shards == s) for s in range(shards)]
    blobs = resolve_executor(parallel)(template, [(vectors[p], ids[p]) for p in parts])
    codec_index = R.load_codec(codec) if codec is not None else None  # deserialized once for every shard
    codes = [_shard_codes(codec_index, vectors[p], ids[p]) for p in parts]
    fast_scan = FS.stored_factory(factory)[1]
    searchers = [ShardSearcher.of(faiss.deserialize_index(np.frombuffer(b, dtype=np.uint8)),
                                  None if c is None else R.RefineStore(codec_index, [(np.sort(ids[p]), c)]),
                                  fast_scan=fast_scan)
                 for b, c, p in zip(blobs, codes, parts)]
    tuned: dict[str, Any] = {}
    ivf = faiss.try_extract_index_ivf(searchers[0].index) is not None
    if len(ids) > 1 and ((ivf and nprobe is None) or (codec is not None and k_factor is None)):
        best, points = tune_search(searchers, vectors, ids, metric, target_recall, recall_queries, 10, seed,
                                   nprobe, k_factor)
        nprobe = nprobe or best["nprobe"]
        k_factor = k_factor or (best["k_factor"] if codec is not None else None)
        tuned = {"tuning": {"target_recall": target_recall, "chosen": best, "points": points}}
    nprobe = nprobe or 16  # not an IVF index (nothing to probe) or an empty one
    guard = nullcontext() if locked else index_lock(out_uri, storage_cfg, owner="build_index", force=force_lock)
    with guard:
        version = V.next_version(out_uri, storage_cfg)
        entries = [write_shard(out_uri, version, s, blob, ids_table(ids[p], [image_ids[i] for i in p], faces[p]),
                               storage_cfg, c) for s, (p, blob, c) in enumerate(zip(parts, blobs, codes))]
        manifest = {
            "shards": entries, "num_shards": shards,
            # the trained empty index: updates add new vectors to copies of it (segments.py)
            "template": write_template(out_uri, version, template, storage_cfg),
            "counts": [e["count"] for e in entries],
            "total": int(len(ids)), "dim": int(vectors.shape[1]), "metric": metric,
            "factory": factory, "fast_scan": fast_scan, "nprobe": nprobe,
            "model_versions": V.model_versions(table), "parent": None,
            "recall_at_10": measure_recall(searchers, vectors, ids, metric, nprobe, recall_queries, 10, seed,
                                           k_factor),
            "recall_queries": min(recall_queries, len(ids)),
            # what the vectors descend from, read once here so readers never walk run records
            "lineage": layout.lineage(None if isinstance(embeddings_uri, pa.Table) else embeddings_uri, storage_cfg),
            **tuned, **(extra or {}),
        }
        if codec is not None:
            manifest["refine"] = {**R.codec_entry(out_uri, version, codec, R.split_factory(factory)[1],
                                                  refine_store, storage_cfg), "k_factor": int(k_factor or 1)}
        if before_publish is not None:
            before_publish(version)
        V.write_manifest(out_uri, version, manifest, storage_cfg)
        V.publish(out_uri, version, storage_cfg)
        V.prune(out_uri, keep, storage_cfg)
    return V.read_manifest(out_uri, version, storage_cfg)
