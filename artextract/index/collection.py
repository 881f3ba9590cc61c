"""The collection snapshot stored with an index version: diff a listing against it, write the next
one (the listing itself is the reindex job's: ``artextract/jobs/reindex.py``).

A snapshot (``versions/vNNNNNN/collection.parquet``) is the manifest of exactly the images that
version was built from, plus ``delta`` (the re-index work directory whose preprocess output holds
the image's faces and crops). It lives inside the version directory, so a rollback also rolls the
snapshot back and the next re-index diffs against what is actually served.

Change detection: on S3 the listing's ETag (content hash for single-part uploads) decides when both
sides have one; otherwise size and mtime do. A copy that rewrites the same bytes with a new mtime
therefore re-embeds locally but not on S3 -- cheap and safe in that direction.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.index import versions as V
from artextract.index.segments import load_live_ids

SNAPSHOT = "collection.parquet"


@dataclass
class Diff:
    """What changed between a snapshot and the collection now (image ids, sorted)."""

    new: list[str]
    changed: list[str]
    deleted: list[str]
    unchanged: int

    @property
    def empty(self) -> bool:
        """True when nothing has to be re-embedded or removed."""
        return not (self.new or self.changed or self.deleted)

    def counts(self) -> dict[str, int]:
        """The diff as summary counts."""
        return {"new": len(self.new), "changed": len(self.changed), "deleted": len(self.deleted),
                "unchanged": self.unchanged}


def _fingerprints(table: pa.Table) -> dict[str, tuple]:
    etag = table["etag"].to_pylist()
    size = table["size"].to_pylist()
    mtime = pc.cast(table["mtime"], pa.int64()).to_pylist()
    return {i: (e, s, m) for i, e, s, m in zip(table["image_id"].to_pylist(), etag, size, mtime)}


def _same(old: tuple, new: tuple) -> bool:
    if old[0] is not None and new[0] is not None:
        return old[0] == new[0] and old[1] == new[1]
    return old[1:] == new[1:]


def diff(snapshot: pa.Table | None, now: pa.Table) -> Diff:
    """Compare by image_id: new, changed (ETag, else size/mtime), deleted."""
    cur = _fingerprints(now)
    if snapshot is None:
        return Diff(sorted(cur), [], [], 0)
    old = _fingerprints(snapshot)
    new = sorted(set(cur) - set(old))
    deleted = sorted(set(old) - set(cur))
    both = sorted(set(cur) & set(old))
    changed = [i for i in both if not _same(old[i], cur[i])]
    return Diff(new, changed, deleted, len(both) - len(changed))


def read_snapshot(index_uri: str, version: int, cfg: StorageConfig) -> pa.Table | None:
    """The snapshot stored with ``version``, None when that version has none (built by
    ``index build`` rather than ``reindex``)."""
    uri = storage.join(V.version_dir(index_uri, version), SNAPSHOT)
    if not storage.exists(uri, cfg):
        return None
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri, cfg)))


def next_snapshot(now: pa.Table, previous: pa.Table | None, redone: list[str], delta: str | None) -> pa.Table:
    """The collection now, each row tagged with the delta that processed it: ``delta`` for the
    redone images, the previous snapshot's tag for the untouched ones."""
    tags = {}
    if previous is not None and "delta" in previous.column_names:
        tags = dict(zip(previous["image_id"].to_pylist(), previous["delta"].to_pylist()))
    redo = set(redone)
    col = [delta if i in redo else tags.get(i) for i in now["image_id"].to_pylist()]
    if "delta" in now.column_names:
        now = now.drop_columns(["delta"])
    return now.append_column("delta", pa.array(col, pa.string()))


def write_snapshot(index_uri: str, version: int, table: pa.Table, cfg: StorageConfig) -> None:
    """Write the snapshot into an (unpublished) version directory."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(storage.join(V.version_dir(index_uri, version), SNAPSHOT), sink.getvalue(), cfg)


def keys_of_images(index_uri: str, version: int, image_ids: list[str], cfg: StorageConfig) -> list[V.Key]:
    """Every (image_id, face_idx) the index version holds for ``image_ids`` (from the id maps)."""
    if not image_ids:
        return []
    wanted = pa.array(sorted(set(image_ids)), pa.string())
    keys: list[V.Key] = []
    for entry in V.read_manifest(index_uri, version, cfg)["shards"]:
        ids = load_live_ids(index_uri, version, entry, cfg)
        hit = ids.filter(pc.is_in(ids["image_id"], value_set=wanted))
        keys.extend(zip(hit["image_id"].to_pylist(), np.asarray(hit["face_idx"], dtype=int).tolist()))
    return sorted(keys)
