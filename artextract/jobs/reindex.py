"""``artextract reindex``: keep a sharded index in sync with a collection (folder or bucket).

One run, all under the index's writer LOCK (a concurrent run exits with LockError):

1. list the collection (folder ingest; S3 ETags) and diff it against the snapshot stored with the
   published version (index/collection.py): new, changed, deleted;
2. nothing changed -> no new version, the summary says so (unless ``compact=true``, which then
   only compacts the shards' delta segments);
3. the new + changed images go through preprocess -> embed in a *delta* work directory named by a
   fingerprint of those rows and of the settings, so a rerun after a crash finds the same
   directory and both stages skip their finished shards;
4. an update (index/update.py) removes every key of the changed and deleted images and adds the new
   vectors as delta segments + tombstones of the shards that own them (segments.py; a shard is
   compacted once they pass ``compact_ratio`` of its base); the first run, or ``rebuild=true``, builds
   the index from the whole collection instead;
5. the new snapshot is written into the version directory *before* CURRENT moves, so readers see
   the old version or the new one (with its snapshot), never a mix; the last ``keep`` versions
   stay, and delta directories no kept version refers to are deleted.

A crash anywhere before step 5's publish leaves the previous version serving and the snapshot
untouched, so the next run recomputes the same diff and resumes.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from artextract import manifest as mf
from artextract.core import storage
from artextract.config import (ConfigError, EmbedConfig, IngestFolderConfig, PreprocessConfig, ReindexConfig,
                               StorageConfig, save_resolved)
from artextract.core.runinfo import JobRun
from artextract.index import collection as C
from artextract.index import versions as V
from artextract.index.build import build_index, read_embeddings
from artextract.index.lock import index_lock
from artextract.index.update import update_index
from artextract.ingest import folder
from artextract.pipelines import embed, preprocess
from artextract.stages.embed import model_version_of

log = logging.getLogger(__name__)


def s3_etags(uri: str, cfg: StorageConfig) -> dict[str, str]:
    """``bucket/key`` -> ETag (quotes stripped) of every object under an s3:// prefix (boto3
    listing: pyarrow's FileInfo does not expose ETags)."""
    loc = storage.filesystem_for(uri, cfg)
    bucket, _, prefix = loc.path.partition("/")
    client = storage.s3_client(cfg)
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            out[f"{bucket}/{obj['Key']}"] = obj["ETag"].strip('"')
    return out


def list_collection(uri: str, extensions: tuple[str, ...], include_all_files: bool, probe_dimensions: bool,
                    cfg: StorageConfig) -> tuple[pa.Table, dict[str, int]]:
    """The collection's manifest now (folder ingest, plus ETags on S3) and the ingest counts."""
    icfg = IngestFolderConfig(images=uri, extensions=extensions, include_all_files=include_all_files,
                              probe_dimensions=probe_dimensions, storage=cfg)
    table, counts = folder.build_table(icfg)
    loc = storage.filesystem_for(uri, cfg)
    if loc.is_s3:
        etags = s3_etags(uri, cfg)
        paths = [storage.filesystem_for(u, cfg).path for u in table["uri"].to_pylist()]
        idx = table.column_names.index("etag")
        table = table.set_column(idx, "etag", pa.array([etags.get(p) for p in paths], pa.string()))
    return table.sort_by("image_id"), counts


def work_root(cfg: ReindexConfig) -> str:
    """Where the run records and delta directories live (default ``<index>/work``)."""
    return cfg.work or storage.join(cfg.index, "work")


def embed_record(cfg: ReindexConfig) -> dict[str, Any]:
    """What index.json records about the model, so later runs and ``search --image`` embed alike."""
    e = cfg.embed
    return {"model": e.model, "model_version": model_version_of(e.model, e.dim, e.seed, cfg.storage),
            "what": e.what, "image_size": e.image_size, "dim": e.dim, "seed": e.seed}


def _check_same_model(manifest: dict[str, Any], record: dict[str, Any]) -> None:
    """Vectors of two models are not comparable: refuse to mix them in one index."""
    built = manifest.get("embed")
    versions = manifest.get("model_versions") or []
    if built is not None:
        clash = [k for k in ("model_version", "what", "image_size") if built.get(k) != record[k]]
    else:
        clash = ["model_version"] if versions and record["model_version"] not in versions else []
    if clash:
        was = {k: (built or {"model_version": versions}).get(k) for k in clash}
        raise ConfigError(f"the index was built with {was}, this run would embed with "
                          f"{ {k: record[k] for k in clash} }: use the same embed settings, or rebuild=true "
                          f"to re-embed the whole collection")


def delta_id(rows: pa.Table, cfg: ReindexConfig) -> str:
    """Fingerprint of the rows to process and of every setting that shapes their outputs."""
    h = hashlib.sha256(json.dumps([cfg.preprocess.model_dump(mode="json"), cfg.embed.model_dump(mode="json")],
                                  sort_keys=True).encode())
    mtime = pc.cast(rows["mtime"], pa.int64())
    for col in (rows["image_id"], rows["uri"], rows["size"], rows["etag"], mtime):
        h.update(str(col.to_pylist()).encode())
    return h.hexdigest()[:16]


def _process(cfg: ReindexConfig, rows: pa.Table, delta_uri: str) -> tuple[pa.Table | None, dict[str, Any]]:
    """preprocess -> embed the rows inside ``delta_uri``; returns (embeddings or None, counts)."""
    man_uri, pre_uri, emb_uri = (storage.join(delta_uri, d) for d in ("manifest", "preprocessed", "embeddings"))
    mf.write(rows.drop_columns([c for c in ("delta",) if c in rows.column_names]), man_uri, 50_000, cfg.storage)
    p = cfg.preprocess
    pre = preprocess.run(PreprocessConfig(
        manifest=man_uri, out=pre_uri, shard_rows=p.shard_rows, decode=p.decode, faces=p.faces,
        resources=p.resources, detector_actors=p.detector_actors, torch_threads=p.torch_threads,
        storage=cfg.storage, ray=cfg.ray))["counts"]
    counts = {"processed": pre["processed"], "quarantined": pre["quarantined"], "faces": pre["faces"],
              "quarantine_reasons": pre.get("quarantine_reasons", {})}
    e = cfg.embed
    have = {"faces": pre["faces"], "images": pre["processed"], "both": pre["faces"] + pre["processed"]}[e.what]
    if have == 0:  # e.g. new paintings without faces: nothing to add, but they are in the snapshot
        counts["vectors"] = 0
        return None, counts
    emb = embed.run(EmbedConfig(
        input=pre_uri, out=emb_uri, model=e.model, what=e.what, image_size=e.image_size, dim=e.dim, seed=e.seed,
        batch_size=e.batch_size, shard_rows=e.shard_rows, resources=e.resources, actors=e.actors,
        torch_threads=e.torch_threads, device=e.device, storage=cfg.storage, ray=cfg.ray))["counts"]
    counts["vectors"] = emb["vectors_out"]
    return read_embeddings(emb_uri, cfg.storage), counts


def _prune_deltas(cfg: ReindexConfig, keep_id: str) -> list[str]:
    """Delete delta directories that no kept version's snapshot refers to."""
    used = {keep_id}
    for v in V.list_versions(cfg.index, cfg.storage):
        snap = C.read_snapshot(cfg.index, v, cfg.storage)
        if snap is not None and "delta" in snap.column_names:
            used |= {d for d in snap["delta"].to_pylist() if d}
    base = storage.join(work_root(cfg), "deltas")
    if not storage.exists(base, cfg.storage):
        return []
    loc = storage.filesystem_for(base, cfg.storage)
    tops = {storage.relative(loc, f.path).split("/", 1)[0] for f in storage.list_files(base, cfg.storage)}
    doomed = sorted(tops - used)
    for d in doomed:
        dl = storage.filesystem_for(storage.join(base, d), cfg.storage)
        dl.fs.delete_dir(dl.path)
    return doomed


def _publish(cfg: ReindexConfig, full: bool, added: pa.Table | None, removed: list[V.Key],
             snapshot: pa.Table, record: dict[str, Any]) -> dict[str, Any]:
    """Build or update the index with the snapshot written into the version before it is published."""
    extra = {"embed": record, "collection": cfg.collection}

    def before_publish(version: int) -> None:
        C.write_snapshot(cfg.index, version, snapshot, cfg.storage)

    if full:
        if added is None or len(added) == 0:
            raise ValueError(f"nothing to index: no {cfg.embed.what} found in {cfg.collection} "
                             "(see the quarantine counts)")
        b = cfg.build
        return build_index(added, cfg.index, shards=b.shards, storage_cfg=cfg.storage, parallel=b.parallel,
                           keep=cfg.keep, seed=b.seed, locked=True, extra=extra, before_publish=before_publish,
                           **b.build_kwargs())
    return update_index(cfg.index, added, removed, cfg.storage, keep=cfg.keep, locked=True, extra=extra,
                        before_publish=before_publish, compact_ratio=cfg.compact_ratio, compact=cfg.compact)


def run(cfg: ReindexConfig) -> dict[str, Any]:
    """Bring the index up to date with the collection; returns the summary (also summary.json)."""
    if not cfg.collection or not cfg.index:
        raise ConfigError("reindex needs collection= and index= (or --collection/--index)")
    work = work_root(cfg)
    job = JobRun("reindex", cfg, work)
    with index_lock(cfg.index, cfg.storage, owner="reindex", force=cfg.force_lock, lease_s=cfg.lock_lease_s):
        incomplete = V.remove_incomplete(cfg.index, cfg.storage)
        if incomplete:
            log.warning("reindex: removed the unpublished version(s) %s left by a crashed writer", incomplete)
        job.lap("lock")
        now, ingest_counts = list_collection(cfg.collection, cfg.extensions, cfg.include_all_files,
                                               cfg.probe_dimensions, cfg.storage)
        job.lap("list")
        cur = V.current_version(cfg.index, cfg.storage)
        record = embed_record(cfg)
        full = cur is None or cfg.rebuild
        previous = None
        if not full:
            _check_same_model(V.read_manifest(cfg.index, cur, cfg.storage), record)
            previous = C.read_snapshot(cfg.index, cur, cfg.storage)
            if previous is None:
                raise ValueError(f"index {cfg.index} version {cur} has no collection snapshot (it was built by "
                                 f"`index build`, not `reindex`): run reindex with rebuild=true once")
        d = C.diff(previous, now)
        counts: dict[str, Any] = {"listed": len(now), **d.counts(), "previous_version": cur,
                                  "incomplete_versions_removed": len(incomplete),
                                  "skipped_other_files": ingest_counts.get("skipped_other_files", 0)}
        log.info("reindex %s: %s", cfg.collection, d.counts())
        if d.empty and not full and not cfg.compact:
            log.info("reindex: nothing changed since version %s; no new version", cur)
            return job.finish({**counts, "status": "unchanged", "index_version": cur},
                              message=f"nothing changed since version {cur}")
        redo = d.new + d.changed
        rows = now.filter(pc.is_in(now["image_id"], value_set=pa.array(redo, pa.string())))
        did = delta_id(rows, cfg) if len(rows) else None
        added, pcounts = None, {}
        if did is not None:
            added, pcounts = _process(cfg, rows, storage.join(work, "deltas", did))
        job.lap("process")
        removed = [] if full else C.keys_of_images(cfg.index, cur, d.changed + d.deleted, cfg.storage)
        snapshot = C.next_snapshot(now, previous, redo, did)
        manifest = _publish(cfg, full, added, removed, snapshot, record)
        job.lap("publish")
        version = int(manifest["version"])
        pruned = _prune_deltas(cfg, did or "")
        status = "built" if full else "updated" if not d.empty else "compacted"
        counts.update(pcounts, status=status, index_version=version, delta=did,
                      compacted_shards=manifest.get("update", {}).get("compacted_shards", []),
                      vectors_added=0 if added is None else len(added), vectors_removed=len(removed),
                      index_vectors=manifest["total"], deltas_pruned=len(pruned))
        summary = job.finish(counts, version_dir=V.version_dir(cfg.index, version))
    vdir = V.version_dir(cfg.index, version)
    try:  # per-version copies of the run records (best effort: the version is already published)
        save_resolved(cfg, vdir)
        storage.write_json(storage.join(vdir, "summary.json"), summary, cfg.storage)
    except OSError as exc:  # pragma: no cover
        log.warning("could not write the run records into %s: %s", vdir, exc)
    return summary


def run_rollback(cfg: Any) -> dict[str, Any]:
    """``artextract index rollback``: point CURRENT at a kept older version (under the LOCK)."""
    if not cfg.index or cfg.version is None:
        raise ConfigError("index rollback needs index= and version=")
    with index_lock(cfg.index, cfg.storage, owner="rollback", force=cfg.force_lock):
        kept = V.list_versions(cfg.index, cfg.storage)
        if cfg.version not in kept:
            raise ValueError(f"version {cfg.version} is not kept at {cfg.index} (kept: {kept})")
        before = V.current_version(cfg.index, cfg.storage)
        V.rollback(cfg.index, cfg.version, cfg.storage)
    return {"counts": {"index": cfg.index, "from_version": before, "to_version": cfg.version}}
