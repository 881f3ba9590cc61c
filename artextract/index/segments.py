"""Shard segments: a base index, a small delta index and tombstones, possibly in older versions.

Why: with shards chosen by ``id % N``, a +1% update touches every shard, so rewriting the touched
shards costs about as much as a rebuild. Instead an update leaves each shard's *base* files where
they are (in the version that wrote them, its ``home``) and writes only

- a *delta* index holding the shard's added vectors: a copy of the build's trained empty index
  (``template.faiss``: same coarse quantizer and codebooks) with the new vectors, so searching
  base + delta with the same nprobe visits exactly the lists a rebuilt shard would;
- *tombstones*: the base ids removed (deleted, or replaced by an upsert).

A shard entry in index.json then reads::

    {"shard": 3, "index": "shards/part-00003.faiss", "ids": "...ids.parquet", "sha256": ...,
     "home": 1, "base_count": 250000, "count": 252400,          # live rows
     "delta": {"index": ..., "ids": ..., "sha256": ..., "ids_sha256": ..., "count": 2500, "home": 4},
     "tombstones": {"ids": "shards/part-00003.tomb.parquet", "ids_sha256": ..., "count": 100, "home": 4}}

With a re-ranking stage (refine.py) the base and the delta each carry a ``refine`` entry: their
codes, one row per row of their id map; tombstones need none (a removed id never comes out of the
index search, so its codes are never read).

Readers load the base, ``remove_ids`` the tombstones and ``merge_from`` the delta in memory
(:func:`load_live_index`), so every search path (CPU, GPU, Ray actors) sees one ordinary index.
When delta + tombstones exceed ``compact_ratio`` of the base, the update compacts that shard into a
new base in its own version. A file's ``home`` defaults to the version whose index.json names it;
``versions.prune`` keeps every version a kept version still references.
"""
from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.index import refine as R
from artextract.index import versions as V
from artextract.index.versions import homes  # noqa: F401 - its historic home: callers import it from here

def load_shard(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
               verify: bool = True) -> tuple[faiss.Index, bytes]:
    """Read a shard's base index file (or a delta entry's) from its home version, check its sha256,
    deserialize it."""
    uri = storage.join(V.version_dir(out_uri, entry.get("home", version)), entry["index"])
    data = storage.read_bytes(uri, cfg)
    if verify and V.sha256(data) != entry["sha256"]:
        raise V.ChecksumError(f"checksum mismatch for {uri}: expected {entry['sha256']}, got {V.sha256(data)}")
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), data


def load_ids(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
             verify: bool = True) -> pa.Table:
    """Read a shard's base id map (id, image_id, face_idx), or a delta/tombstone table, from its home
    version, checking its sha256."""
    uri = storage.join(V.version_dir(out_uri, entry.get("home", version)), entry["ids"])
    data = storage.read_bytes(uri, cfg)
    if verify and V.sha256(data) != entry["ids_sha256"]:
        raise V.ChecksumError(f"checksum mismatch for {uri}: expected {entry['ids_sha256']}, got {V.sha256(data)}")
    return pq.read_table(pa.BufferReader(data))


TEMPLATE = "template.faiss"
TOMB_SCHEMA = pa.schema([("id", pa.int64())])


def with_home(entry: dict[str, Any], version: int) -> dict[str, Any]:
    """A copy of a shard entry whose base, delta and tombstone files name their home version
    explicitly, so the entry can be carried into a later version unchanged."""
    out = {**entry, "home": int(entry.get("home", version))}
    for part in ("delta", "tombstones"):
        if out.get(part):
            out[part] = {**out[part], "home": int(out[part].get("home", version))}
    return out


def _bytes_of(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------------------ building

def build_shard(template: bytes, vectors: np.ndarray, ids: np.ndarray) -> bytes:
    """Copy the trained empty ``template`` index, add (vectors, ids), return the serialized shard."""
    index = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return faiss.serialize_index(index).tobytes()


# ------------------------------------------------------------------------------------ template

def write_template(out_uri: str, version: int, blob: bytes, cfg: StorageConfig | None) -> dict[str, Any]:
    """Store the trained empty index in a version; returns its index.json entry."""
    storage.write_bytes(storage.join(V.version_dir(out_uri, version), TEMPLATE), blob, cfg)
    return {"file": TEMPLATE, "sha256": V.sha256(blob), "bytes": len(blob)}


def read_template(out_uri: str, version: int, manifest: dict[str, Any], cfg: StorageConfig | None) -> bytes:
    """The trained empty index of a version: its template.faiss, or (indexes built before templates
    were stored) an emptied copy of its first shard, which carries the same trained state."""
    t = manifest.get("template")
    if t:
        data = storage.read_bytes(storage.join(V.version_dir(out_uri, version), t["file"]), cfg)
        if V.sha256(data) != t["sha256"]:
            raise V.ChecksumError(f"checksum mismatch for the template of version {version}")
        return data
    index, _ = load_shard(out_uri, version, manifest["shards"][0], cfg)
    index.reset()
    return faiss.serialize_index(index).tobytes()


# ------------------------------------------------------------------------------------- reading

def load_tombstones(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
                    verify: bool = True) -> np.ndarray:
    """Sorted base ids removed from a shard (empty when it has no tombstones)."""
    t = entry.get("tombstones")
    if not t:
        return np.zeros(0, np.int64)
    return np.sort(load_ids(out_uri, version, t, cfg, verify)["id"].to_numpy())


def load_live_ids(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
                  verify: bool = True) -> pa.Table:
    """The shard's live id map (id, image_id, face_idx): base minus tombstones, plus the delta."""
    base = load_ids(out_uri, version, entry, cfg, verify)
    dead = load_tombstones(out_uri, version, entry, cfg, verify)
    if len(dead):
        base = base.filter(pa.array(~np.isin(base["id"].to_numpy(), dead)))
    if entry.get("delta"):
        base = pa.concat_tables([base, load_ids(out_uri, version, entry["delta"], cfg, verify)])
    return base


def load_live_codes(out_uri: str, version: int, entry: dict[str, Any], codec: faiss.Index,
                    cfg: StorageConfig | None = None, store: str = "memory", verify: bool = True,
                    cache_dir: str | None = None) -> R.RefineStore:
    """The shard's live refine codes (refine.py), aligned with :func:`load_live_ids`' rows."""
    base_ids = load_ids(out_uri, version, entry, cfg, verify)["id"].to_numpy()
    codes = R.read_codes(out_uri, version, entry["refine"], cfg, store, verify, cache_dir)
    if len(codes) != len(base_ids):
        raise RuntimeError(f"shard {entry['shard']}: {len(codes)} refine codes for {len(base_ids)} ids")
    dead = load_tombstones(out_uri, version, entry, cfg, verify)
    segments = [(np.where(np.isin(base_ids, dead), -1, base_ids) if len(dead) else base_ids, codes)]
    if entry.get("delta"):
        d = entry["delta"]
        segments.append((load_ids(out_uri, version, d, cfg, verify)["id"].to_numpy(),
                         R.read_codes(out_uri, version, d["refine"], cfg, store, verify, cache_dir)))
    return R.RefineStore(codec, segments)


def load_live_index(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
                    verify: bool = True) -> faiss.Index:
    """The shard as one in-memory faiss index: base, tombstones removed, delta merged in (the codes
    move as they are: ``merge_from`` re-encodes nothing, so PQ codes stay bit-identical)."""
    index, _ = load_shard(out_uri, version, entry, cfg, verify)
    dead = load_tombstones(out_uri, version, entry, cfg, verify)
    if len(dead):
        removed = int(index.remove_ids(dead))
        if removed != len(dead):
            raise RuntimeError(f"shard {entry['shard']}: {len(dead)} tombstones but {removed} base rows removed")
    if entry.get("delta"):
        delta, _ = load_shard(out_uri, version, entry["delta"], cfg, verify)
        index.merge_from(delta, 0)
    return index


# ------------------------------------------------------------------------------------- writing

def write_delta(out_uri: str, version: int, shard: int, index: faiss.Index, ids: pa.Table,
                cfg: StorageConfig | None) -> dict[str, Any]:
    """Write a shard's delta index + id map into ``version``; returns its entry."""
    vdir = V.version_dir(out_uri, version)
    index_rel, ids_rel = (p.replace("shards/", "shards/delta-") for p in V.shard_files(shard))
    blob, ids_bytes = faiss.serialize_index(index).tobytes(), _bytes_of(ids)
    storage.write_bytes(storage.join(vdir, index_rel), blob, cfg)
    storage.write_bytes(storage.join(vdir, ids_rel), ids_bytes, cfg)
    return {"index": index_rel, "ids": ids_rel, "count": len(ids), "sha256": V.sha256(blob),
            "ids_sha256": V.sha256(ids_bytes), "bytes": len(blob), "home": version}


def write_tombstones(out_uri: str, version: int, shard: int, dead: np.ndarray,
                     cfg: StorageConfig | None) -> dict[str, Any]:
    """Write a shard's tombstone ids into ``version``; returns its entry."""
    rel = V.shard_files(shard)[1].replace(".ids.parquet", ".tomb.parquet")
    data = _bytes_of(pa.table({"id": pa.array(np.sort(dead), pa.int64())}, schema=TOMB_SCHEMA))
    storage.write_bytes(storage.join(V.version_dir(out_uri, version), rel), data, cfg)
    return {"ids": rel, "ids_sha256": V.sha256(data), "count": int(len(dead)), "home": version}
