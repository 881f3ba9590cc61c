"""``artextract embed``: preprocess output -> Ray Data (read tasks -> EmbedStage actor pool ->
single shard writer) -> ``out/part-NNNNN.parquet`` embedding shards + summary.json.

The plan is every face (``what=faces``), every ok whole painting (``images``, face_idx -1) or both,
sorted by (image_id, face_idx) and cut into shards of ``shard_rows``. Only keys (and the source file
and row of each JPEG) travel through the graph; read tasks fetch the JPEG bytes from the source
shard. A rerun skips committed shards; ``_plan.json`` holds a fingerprint of (input keys, model_version,
image size, batch size, shard size) and an output holding another plan's shards is refused unless
``overwrite=true``. Vectors are computed in fixed chunks of ``batch_size`` plan rows, so a rerun
produces bit-identical vectors whatever batches Ray forms.
"""
from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from artextract import console

from artextract.core import layout, storage
from artextract.config import EmbedConfig, StorageConfig
from artextract.manifest import shard_name
from artextract.pipelines import shards
from artextract.pipelines.ray_env import actor_device, capacity, cluster_counts, gpu_pool, init_ray
from artextract.core.runinfo import JobRun
from artextract.stages.embed import EmbedStage, model_version_of

log = logging.getLogger(__name__)
JPEG_COLUMN = {"faces": "crop_jpeg", "images": "whole_jpeg"}
STATS_SCHEMA = pa.schema([("shard", pa.int64()), ("rows", pa.int64())])


def _sources(cfg: EmbedConfig) -> list[str]:
    return ["faces", "images"] if cfg.what == "both" else [cfg.what]


def plan(cfg: EmbedConfig) -> pa.Table:
    """Rows to embed: image_id, face_idx, yaw, pitch, roll, src, src_row, table; sorted, with shard/chunk."""
    parts = []
    for table in _sources(cfg):
        files = layout.PreprocessOutput(cfg.input, cfg.storage).table(table).require()
        for uri in files:
            if table == "faces":
                t = storage.read_parquet(uri, cfg.storage, columns=["image_id", "face_idx", "yaw", "pitch", "roll"])
                keep = np.arange(len(t))
                cols = {"image_id": t["image_id"], "face_idx": pc.cast(t["face_idx"], pa.int16()),
                        **{a: pc.cast(t[a], pa.float32()) for a in ("yaw", "pitch", "roll")}}
            else:
                t = storage.read_parquet(uri, cfg.storage, columns=["image_id", "status"])
                keep = np.flatnonzero(pc.equal(t["status"], "ok").to_numpy(zero_copy_only=False))
                t = t.take(pa.array(keep))
                nan = pa.array(np.full(len(t), np.nan, np.float32))
                cols = {"image_id": t["image_id"], "face_idx": pa.array(np.full(len(t), -1, np.int16)),
                        "yaw": nan, "pitch": nan, "roll": nan}
            parts.append(pa.table({**cols, "src": pa.array([uri] * len(t), pa.string()),
                                   "src_row": pa.array(keep, pa.int64()),
                                   "table": pa.array([table] * len(t), pa.string())}))
    work = pa.concat_tables(parts).combine_chunks().sort_by([("image_id", "ascending"), ("face_idx", "ascending")])
    if len(work) == 0:
        raise ValueError(f"{cfg.input} has no {cfg.what} to embed")
    n = np.arange(len(work))
    return work.append_column("shard", pa.array(n // cfg.shard_rows, pa.int64())) \
               .append_column("chunk", pa.array(n // cfg.batch_size, pa.int64()))


def fingerprint(work: pa.Table, cfg: EmbedConfig, model_version: str) -> str:
    """Same keys, same model, same preprocessing of pixels, same shard size -> same outputs."""
    h = hashlib.sha256(f"{model_version}|{cfg.image_size}|{cfg.shard_rows}|{cfg.batch_size}|{cfg.what}".encode())
    for col in ("image_id", "face_idx"):
        h.update(str(work[col].to_pylist()).encode())
    return h.hexdigest()[:16]


def _check_plan(cfg: EmbedConfig, fp: str, n_shards: int, model_version: str) -> None:
    plan = {"fingerprint": fp, "shards": n_shards, "input": cfg.input, "what": cfg.what, "model": cfg.model,
            "model_version": model_version}
    shards.check_plan(cfg.out, cfg.storage, plan, cfg.overwrite, ("",),
                      "embeddings of a different input, model or shard size")


def _pending(cfg: EmbedConfig, n_shards: int) -> list[int]:
    return shards.pending(cfg.out, cfg.storage, n_shards)


def read_jpegs(batch: pa.Table, storage_cfg: StorageConfig) -> pa.Table:
    """Ray task body: add the ``jpeg`` column to a key block, reading each source file it touches once."""
    jpegs: list[bytes | None] = [None] * len(batch)
    srcs, rows, tables = batch["src"].to_pylist(), batch["src_row"].to_pylist(), batch["table"].to_pylist()
    for src in sorted(set(srcs)):
        idx = [i for i, s in enumerate(srcs) if s == src]
        col = storage.read_parquet(src, storage_cfg, columns=[JPEG_COLUMN[tables[idx[0]]]]).column(0)
        got = col.take(pa.array([rows[i] for i in idx])).to_pylist()
        for i, data in zip(idx, got):
            jpegs[i] = data
    missing = [batch["image_id"][i].as_py() for i, j in enumerate(jpegs) if not j]
    if missing:
        raise ValueError(f"no JPEG bytes for {missing[:5]}")
    keep = batch.select(["image_id", "face_idx", "yaw", "pitch", "roll", "shard", "chunk"])
    return keep.append_column("jpeg", pa.array(jpegs, pa.binary()))


class EmbedShardWriter:
    """Buffers vectors by shard; commits ``out/part-N.parquet`` (sorted by key) once a shard is complete."""

    def __init__(self, out: str, storage_cfg: StorageConfig, sizes: dict[int, int]):
        self.out, self.storage_cfg, self.sizes = out, storage_cfg, sizes
        self.buffers: dict[int, dict[tuple[str, int], pa.Table]] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for s in sorted(set(batch["shard"].to_pylist())):
            part = batch.filter(pc.equal(batch["shard"], s))
            buf = self.buffers.setdefault(s, {})
            for i, (iid, fidx) in enumerate(zip(part["image_id"].to_pylist(), part["face_idx"].to_pylist())):
                buf[(iid, fidx)] = part.slice(i, 1)  # a retried task's duplicate overwrites
            if len(buf) == self.sizes[s]:
                rows = pa.concat_tables([buf[k] for k in sorted(buf)]).drop_columns(["shard"])
                storage.write_parquet(storage.join(self.out, shard_name(s)), rows.combine_chunks(), self.storage_cfg)
                done.append({"shard": s, "rows": len(rows)})
                del self.buffers[s]
        return pa.Table.from_pylist(done, schema=STATS_SCHEMA)


def _run_ray(cfg: EmbedConfig, work: pa.Table) -> tuple[int, float]:
    ray = init_ray(cfg.ray)
    cpus, gpus = cluster_counts(ray)
    res = cfg.resources.embed
    n_blocks = len(np.unique(work["chunk"].to_numpy()))
    if res.num_gpus > 0:
        low, high = gpu_pool(cfg.actors, gpus, res.num_gpus)
    else:
        low = high = cfg.actors or max(1, int((cpus - cfg.resources.read.num_cpus) // res.num_cpus))
    high = min(high, n_blocks)  # more actors than blocks would only idle (and Ray Data warns about it)
    low = min(low, high)
    with capacity(ray, cfg.ray, res.bundle(), high, "embed actors"):
        return _run_graph(ray, cfg, work, low, high)


def _run_graph(ray, cfg: EmbedConfig, work: pa.Table, low: int, high: int) -> tuple[int, float]:
    from ray.data import ActorPoolStrategy

    res = cfg.resources.embed
    # One block per chunk (batch_size plan rows); ReadJpegs reads every source file a block touches.
    keys = work.select(["image_id", "face_idx", "yaw", "pitch", "roll", "src", "src_row", "table", "shard", "chunk"])
    chunks = keys["chunk"].to_numpy()
    bounds = np.flatnonzero(np.diff(chunks)) + 1
    starts = [0, *bounds.tolist()]
    ends = [*bounds.tolist(), len(keys)]
    ds = ray.data.from_arrow([keys.slice(a, b - a) for a, b in zip(starts, ends)])
    # batch_size=None: one block (= one chunk) per call, so a chunk is never split across batches.
    ds = ds.map_batches(read_jpegs, fn_kwargs={"storage_cfg": cfg.storage}, batch_size=None,
                        batch_format="pyarrow", **cfg.resources.read.options())
    log.info("embed: %s actors, each %s", low if low == high else f"{low}-{high}", res.bundle())
    device = actor_device(cfg.device, res.num_gpus)
    ds = ds.map_batches(EmbedStage, fn_constructor_args=(cfg.model, cfg.image_size, device, cfg.batch_size,
                                                         cfg.dim, cfg.seed, cfg.storage,
                                                         None if res.num_gpus > 0 else cfg.torch_threads),
                        # One chunk per call on CPUs; Ray Data wants an explicit size for GPU actors
                        # (a chunk is batch_size rows, so batches still mostly equal chunks).
                        batch_size=cfg.batch_size if res.num_gpus > 0 else None, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=low, max_size=high), **res.options())
    sizes = {int(k): int(v) for k, v in zip(*np.unique(work["shard"].to_numpy(), return_counts=True))}
    ds = ds.map_batches(EmbedShardWriter, fn_constructor_args=(cfg.out, cfg.storage, sizes),
                        batch_size=None, batch_format="pyarrow", num_cpus=0, compute=ActorPoolStrategy(size=1))
    t0, rows = time.perf_counter(), 0
    with console.progress(total=len(work), desc="embed", unit="vec") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for stat in batch.to_pylist():
                rows += stat["rows"]
                log.debug("embedding shard %d written: %d vectors", stat["shard"], stat["rows"])
                bar.update(stat["rows"])
    return rows, time.perf_counter() - t0


def _reconcile(cfg: EmbedConfig, work: pa.Table, n_shards: int, model_version: str) -> dict:
    out = storage.read_parquet(cfg.out, cfg.storage, columns=["image_id", "face_idx", "model_version"])
    keys = set(zip(out["image_id"].to_pylist(), out["face_idx"].to_pylist()))
    counts = {"rows_in": len(work), "vectors_out": len(out), "shards": n_shards,
              "faces": int(pc.sum(pc.greater_equal(out["face_idx"], 0)).as_py() or 0),
              "whole_images": int(pc.sum(pc.equal(out["face_idx"], -1)).as_py() or 0)}
    if len(out) != len(work) or len(keys) != len(out):
        raise RuntimeError(f"counts do not reconcile (duplicates or missing vectors): {counts}")
    versions = set(out["model_version"].to_pylist())
    if versions != {model_version}:
        raise RuntimeError(f"output mixes model versions {sorted(versions)}; expected {model_version}")
    return counts


def run(cfg: EmbedConfig) -> dict:
    """Embed the faces and/or whole images of a preprocess output; returns the summary.json dict."""
    if not cfg.input or not cfg.out:
        raise ValueError("embed needs input= and out= (or --input/--out)")
    job = JobRun("embed", cfg, cfg.out)
    model_version = model_version_of(cfg.model, cfg.dim, cfg.seed, cfg.storage)
    work = plan(cfg)
    n_shards = int(work["shard"][-1].as_py()) + 1
    _check_plan(cfg, fingerprint(work, cfg, model_version), n_shards, model_version)
    pending = _pending(cfg, n_shards)
    n_pending = len(pending)
    job.lap("plan")
    log.info("embed: %d %s in %d shards, %d pending (model %s)", len(work), cfg.what, n_shards, n_pending,
             model_version)
    rows, seconds = shards.run_passes(work, pending, lambda todo: _run_ray(cfg, todo),
                                      lambda: _pending(cfg, n_shards))
    job.lap("embed")
    counts = _reconcile(cfg, work, n_shards, model_version)
    counts.update(shards_skipped=n_shards - n_pending, shards_written_now=n_pending, vectors_now=rows)
    job.lap("reconcile")
    return job.finish(counts, model=cfg.model, model_version=model_version, what=cfg.what,
                      images_per_s=round(rows / seconds, 2) if seconds else None, pipeline_s=round(seconds, 3))
