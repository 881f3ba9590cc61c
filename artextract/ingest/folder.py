"""``artextract ingest folder``: any local folder or s3:// prefix of images -> manifest.

One recursive listing supplies size and mtime; dimensions come from header probes. Hidden files
and folders (names starting with '.') are never listed; other non-image files are counted and
skipped unless ``include_all_files`` (then the preprocess stage quarantines what it cannot decode).
"""
from __future__ import annotations

import logging
import posixpath
from typing import Any

import pyarrow as pa

from artextract import manifest

from artextract.core import storage
from artextract.config import IngestFolderConfig
from artextract.ingest import probe
from artextract.core.runinfo import JobRun

log = logging.getLogger(__name__)


def build_table(cfg: IngestFolderConfig) -> tuple[pa.Table, dict[str, int]]:
    """List, filter and probe the folder; returns the manifest table and its counts."""
    entries = probe.list_tree(cfg.images, cfg.storage)
    if not entries:
        raise ValueError(f"ingest folder: no files under {cfg.images!r} (the folder or prefix is "
                         "empty or does not exist)")
    exts = probe.normalize_extensions(cfg.extensions)
    keep = entries if cfg.include_all_files else [e for e in entries if probe.has_extension(e[0], exts)]
    skipped = len(entries) - len(keep)
    if not keep:
        raise ValueError(f"ingest folder: no image files under {cfg.images!r}: {skipped} other files, "
                         f"none ending in {', '.join(exts)} (set include_all_files=true to list them)")
    ids = probe.image_ids([rel for rel, _ in keep])
    loc = storage.filesystem_for(cfg.images, cfg.storage)
    dims = None
    if cfg.probe_dimensions:
        dims = probe.probe_dimensions([storage.uri_of(loc, info.path) for _, info in keep], cfg.storage)
    table = pa.table(probe.core_columns(keep, loc, ids, dims, source="folder"))
    counts = {
        "files_listed": len(entries),
        "images": len(keep),
        "skipped_other_files": skipped,
        **probe.probe_counts(dims),
        # Ids that had to keep their extension because another file shares the stem.
        "id_collisions": sum(1 for (rel, _), i in zip(keep, ids) if i != posixpath.splitext(rel)[0]),
    }
    return table, counts


def run(cfg: IngestFolderConfig) -> dict[str, Any]:
    """Ingest a folder or bucket of images into manifest shards under ``cfg.out``; returns the summary."""
    if not cfg.images:
        raise ValueError("ingest folder: images is required (--images DIR or s3://bucket/prefix)")
    if not cfg.out:
        raise ValueError("ingest folder: out is required (--out URI)")
    job = JobRun("ingest_folder", cfg, cfg.out)
    table, counts = build_table(cfg)
    job.lap("list_and_probe")
    shards = manifest.write(table, cfg.out, cfg.shard_rows, cfg.storage)
    job.lap("write")
    counts["manifest_rows"] = table.num_rows
    log.info("ingest folder: %d images from %s -> %s (%d shards)", table.num_rows, cfg.images,
             cfg.out, len(shards))
    return job.finish(counts, shards=len(shards), probed=cfg.probe_dimensions)
