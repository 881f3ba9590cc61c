"""``artextract preprocess``: manifest -> Ray Data (read+decode tasks -> MTCNN actor pool ->
shard writer) -> images/, faces/, quarantine/ parquet shards + summary.json.

Shards are a deterministic partition of the manifest sorted by image_id; a rerun skips shards
whose images/part-N.parquet (written last) exists, and refuses an output that holds a different
manifest's shards unless ``overwrite=true``.
"""
from __future__ import annotations

import hashlib
import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from artextract import console, manifest as mf
from artextract.core import layout
from artextract.config import FacesConfig, PreprocessConfig, Resources
from artextract.pipelines import shards
from artextract.pipelines.ray_env import actor_device, capacity, cluster_counts, gpu_pool, init_ray
from artextract.core.runinfo import JobRun
from artextract.stages.faces import FaceStage
from artextract.stages.read import ReadDecodeStage
from artextract.stages.write import ShardWriter

log = logging.getLogger(__name__)
IMAGES_PER_EXTRA_DETECTOR = 16
TABLES = ("images", "faces", "quarantine")


def plan(cfg: PreprocessConfig) -> pa.Table:
    """The manifest rows to process, sorted by image_id, with their ``shard`` number."""
    table = mf.read(cfg.manifest, cfg.storage).sort_by("image_id")
    if cfg.limit:
        table = table.slice(0, cfg.limit)
    if len(table) == 0:
        raise ValueError(f"manifest {cfg.manifest} has no rows")
    shards = pa.array([i // cfg.shard_rows for i in range(len(table))], pa.int64())
    return table.append_column("shard", shards)


def fingerprint(table: pa.Table, cfg: PreprocessConfig) -> str:
    """Identifies a plan: same rows, same objects, same shard size -> same outputs."""
    h = hashlib.sha256(f"{cfg.shard_rows}".encode())
    for col in ("image_id", "uri", "size", "etag"):
        h.update(str(table[col].to_pylist()).encode())
    return h.hexdigest()[:16]


def _check_plan(cfg: PreprocessConfig, fp: str, n_shards: int) -> None:
    shards.check_plan(cfg.out, cfg.storage, {"fingerprint": fp, "shards": n_shards, "manifest": cfg.manifest},
                      cfg.overwrite, TABLES, "outputs of a different manifest or shard size")


def _pending(cfg: PreprocessConfig, n_shards: int) -> list[int]:
    return shards.pending(cfg.out, cfg.storage, n_shards, marker_dir="images")


class ReadDecodeFaceStage:
    """ReadDecodeStage then FaceStage in one actor (``fuse_decode``): the CPU-only layout."""

    def __init__(self, cfg: PreprocessConfig):
        self.read = ReadDecodeStage(cfg.decode, cfg.storage)
        self.faces = FaceStage(_faces(cfg), cfg.torch_threads)

    def __call__(self, batch: dict) -> pa.Table:
        return self.faces(self.read(batch))


def _faces(cfg: PreprocessConfig) -> FacesConfig:
    """The detector settings an actor gets (its device: ray_env.actor_device)."""
    return cfg.faces.model_copy(update={"device": actor_device(cfg.faces.device, cfg.resources.detector.num_gpus)})


def _pools(cfg: PreprocessConfig, cpus: float, gpus: float, n_blocks: int, n_images: int) -> tuple[bool, int, int]:
    """(fuse decode into the detectors, smallest and largest detector pool) from the declared resources."""
    det, dec = cfg.resources.detector, cfg.resources.decode
    if det.num_gpus > 0:  # GPU detectors get a decode pool of their own
        low, high = gpu_pool(cfg.detector_actors, gpus, det.num_gpus)
        return False, low, max(1, min(high, n_blocks))
    # Measured on 2 cores (docs/benchmarks.md): one single-threaded detector per core beats one
    # multi-threaded detector; small detector batches keep the actors evenly loaded.
    fuse = cfg.fuse_decode
    per_actor = dec.num_cpus + det.num_cpus if fuse else det.num_cpus
    spare = cpus if fuse else cpus - dec.num_cpus  # unfused: one decode actor's share is taken
    actors = cfg.detector_actors or max(1, int(spare // per_actor))
    if not cfg.detector_actors:
        # A detector actor costs ~1.5 CPU-s to start (a worker process, our imports, the
        # RetinaFace session and O-Net; no torch): ~15 NGA images' read + decode + detection at
        # ~0.1 CPU-s each. Each actor gets at least 16 images, so small jobs (a nightly reindex delta, a
        # sample) start fewer.
        actors = min(actors, max(1, n_images // IMAGES_PER_EXTRA_DETECTOR))
    actors = min(actors, n_blocks)  # more detectors than blocks would only idle (Ray Data warns)
    return fuse, actors, actors


def _run_ray(cfg: PreprocessConfig, work: pa.Table) -> tuple[int, float]:
    """Run the Ray Data graph over ``work``; returns (rows written, seconds)."""
    ray = init_ray(cfg.ray)
    cpus, gpus = cluster_counts(ray)
    blocks = -(-len(work) // cfg.decode_batch)
    fuse, low, high = _pools(cfg, cpus, gpus, blocks, len(work))
    with capacity(ray, cfg.ray, _detector_resources(cfg, fuse).bundle(), high, "preprocess detector actors"):
        return _run_graph(ray, cfg, work, fuse, low, high)


def _detector_resources(cfg: PreprocessConfig, fuse: bool) -> Resources:
    det, dec = cfg.resources.detector, cfg.resources.decode
    return det.model_copy(update={"num_cpus": det.num_cpus + dec.num_cpus}) if fuse else det


def _run_graph(ray, cfg: PreprocessConfig, work: pa.Table, fuse: bool, low: int, high: int) -> tuple[int, float]:
    from ray.data import ActorPoolStrategy

    det, dec = cfg.resources.detector, cfg.resources.decode
    det_batch = cfg.faces.batch_size or (16 if det.num_gpus > 0 else 1)
    # Only keys travel through the graph; the writer joins the manifest's metadata back per shard
    # (passing metadata through would re-infer column types per batch, e.g. an all-null width).
    keys = work.select(["image_id", "uri", "shard"])
    # from_items builds its blocks in the driver; from_arrow would start remote tasks (two more
    # worker processes on a cold local Ray, ~1 s of a 128-image job) just to read block metadata.
    ds = ray.data.from_items(keys.to_pylist(), override_num_blocks=-(-len(keys) // cfg.decode_batch))
    log.info("preprocess: %s detector actors, each %s", low if low == high else f"{low}-{high}",
             _detector_resources(cfg, fuse).bundle())
    if fuse:
        # One actor per core reads, decodes and detects: half the worker processes to start (each
        # ~3 CPU-s of imports on a cold start) and no decoded images through the object store.
        ds = ds.map_batches(ReadDecodeFaceStage, fn_constructor_args=(cfg, ),
                            batch_size=cfg.decode_batch, batch_format="numpy",
                            compute=ActorPoolStrategy(size=high), **_detector_resources(cfg, fuse).options())
    else:
        cpus = cluster_counts(ray)[0]
        ds = ds.map_batches(ReadDecodeStage, fn_constructor_args=(cfg.decode, cfg.storage),
                            batch_size=cfg.decode_batch, batch_format="numpy",
                            compute=ActorPoolStrategy(min_size=1, max_size=max(2, int(cpus))), **dec.options())
        ds = ds.map_batches(FaceStage, fn_constructor_args=(_faces(cfg), cfg.torch_threads),
                            batch_size=det_batch, batch_format="numpy",
                            compute=ActorPoolStrategy(min_size=low, max_size=high), **det.options())
    ds = ds.map_batches(ShardWriter, fn_constructor_args=(cfg.out, cfg.storage, work, cfg.faces.crop_size),
                        batch_size=None, batch_format="pyarrow", num_cpus=0,  # I/O only
                        compute=ActorPoolStrategy(size=1))
    t0, rows, faces, quarantined = time.perf_counter(), 0, 0, 0
    with console.progress(total=len(work), desc="preprocess", unit="img") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for stat in batch.to_pylist():
                rows, faces, quarantined = rows + stat["rows"], faces + stat["faces"], quarantined + stat["quarantined"]
                log.debug("shard %d written: %d images, %d faces, %d quarantined", stat["shard"],
                          stat["rows"], stat["faces"], stat["quarantined"])
                bar.set_postfix(faces=faces, quarantined=quarantined, refresh=False)
                bar.update(stat["rows"])
    return rows, time.perf_counter() - t0


def _reconcile(cfg: PreprocessConfig, n_shards: int, expected_rows: int) -> dict:
    out = layout.PreprocessOutput(cfg.out, cfg.storage)
    images = out.images.read(columns=["image_id", "status", "reason", "n_faces"])
    faces = out.faces.read(columns=["image_id"])
    quarantine = out.table("quarantine").read(columns=["reason"])
    ok = int(pc.sum(pc.equal(images["status"], "ok")).as_py() or 0)
    counts = {"manifest_rows": expected_rows, "images_rows": len(images), "processed": ok,
              "quarantined": len(quarantine), "faces": len(faces),
              "images_with_faces": int(pc.sum(pc.greater(images["n_faces"], 0)).as_py() or 0),
              "shards": n_shards}
    if len(images) != expected_rows or ok + len(quarantine) != expected_rows:
        raise RuntimeError(f"counts do not reconcile: {counts}")
    if len(set(images["image_id"].to_pylist())) != len(images):
        raise RuntimeError("duplicate image_id rows in the images table")
    reasons = pc.value_counts(quarantine["reason"]).to_pylist() if len(quarantine) else []
    counts["quarantine_reasons"] = {r["values"]: r["counts"] for r in reasons}
    return counts


def run(cfg: PreprocessConfig) -> dict:
    """Run preprocessing; returns the summary written to ``summary.json``."""
    if not cfg.manifest or not cfg.out:
        raise ValueError("preprocess needs manifest= and out= (or --manifest/--out)")
    job = JobRun("preprocess", cfg, cfg.out)
    work = plan(cfg)
    n_shards = int(work["shard"][-1].as_py()) + 1
    _check_plan(cfg, fingerprint(work, cfg), n_shards)
    pending = _pending(cfg, n_shards)
    n_pending = len(pending)
    job.lap("plan")
    log.info("preprocess: %d images in %d shards, %d pending", len(work), n_shards, len(pending))
    rows, seconds = shards.run_passes(work, pending, lambda todo: _run_ray(cfg, todo),
                                      lambda: _pending(cfg, n_shards))
    job.lap("process")
    counts = _reconcile(cfg, n_shards, len(work))
    counts.update(shards_skipped=n_shards - n_pending, shards_written_now=n_pending, rows_processed_now=rows)
    job.lap("reconcile")
    throughput = round(rows / seconds, 2) if seconds else None
    return job.finish(counts, images_per_s=throughput, pipeline_s=round(seconds, 3))
