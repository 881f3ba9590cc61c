"""Index keys, stable ids, embedding I/O and the versioned on-storage layout.

Layout under ``out_uri``::

    CURRENT                              {"version": n}  -- written LAST; readers resolve it first
    LOCK                                 present while an update runs (see lock.py)
    versions/v000007/index.json          the index manifest of version 7
    versions/v000007/shards/part-00000.faiss
    versions/v000007/shards/part-00000.ids.parquet   (id, image_id, face_idx)
    versions/v000007/shards/part-00000.refine.npy    re-ranking codes, one row per id-map row (refine.py)
    versions/v000007/template.faiss, refine.faiss    the trained empty index and re-ranking codec

A version may use shard files of an older version (its ``home``: the base shards under a delta
update, see segments.py); ``prune`` keeps such a version until no kept version refers to it.
"""
from __future__ import annotations

import hashlib
import re
import time
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.index.lock import check_held
from artextract.manifest import shard_name

Key = tuple[str, int]
IDS_SCHEMA = pa.schema([("id", pa.int64()), ("image_id", pa.string()), ("face_idx", pa.int16())])
_VERSION_RE = re.compile(r"^v(\d{6,})$")


class ChecksumError(RuntimeError):
    """A shard file's sha256 differs from the one recorded in index.json."""


def key_id(image_id: str, face_idx: int) -> int:
    """Stable 63-bit id of the key (image_id, face_idx): blake2b of ``f"{image_id}#{face_idx}"``."""
    digest = hashlib.blake2b(f"{image_id}#{int(face_idx)}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def key_ids(image_ids: Iterable[str], face_idxs: Iterable[int]) -> np.ndarray:
    """int64 ids of many keys."""
    return np.fromiter((key_id(i, f) for i, f in zip(image_ids, face_idxs)), dtype=np.int64)


def vectors_of(table: pa.Table) -> np.ndarray:
    """The ``vector`` column (fixed_size_list<float32>[d]) as a C-contiguous (n, d) float32 array."""
    col = table["vector"].combine_chunks()
    if len(col) == 0:
        d = col.type.list_size if pa.types.is_fixed_size_list(col.type) else 0
        return np.zeros((0, d), dtype=np.float32)
    d = col.type.list_size
    return np.ascontiguousarray(col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d))


def table_keys(table: pa.Table) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(ids int64, image_ids, face_idx int16) of an embeddings table; rejects duplicate keys."""
    image_ids = table["image_id"].to_pylist()
    faces = np.asarray(table["face_idx"].to_numpy(zero_copy_only=False), dtype=np.int16)
    ids = key_ids(image_ids, faces)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = set(uniq[counts > 1].tolist())
        bad = [(i, int(f)) for i, f, x in zip(image_ids, faces, ids) if int(x) in dup][:5]
        raise ValueError(f"{int((counts > 1).sum())} duplicated (image_id, face_idx) keys (or id hash "
                         f"collisions), e.g. {bad}")
    return ids, image_ids, faces


def model_versions(table: pa.Table) -> list[str]:
    """Sorted distinct model_version values of an embeddings table (empty when absent)."""
    if "model_version" not in table.column_names:
        return []
    return sorted({v for v in table["model_version"].to_pylist() if v is not None})


def version_dir(out_uri: str, version: int) -> str:
    """URI of version ``version``'s directory."""
    return storage.join(out_uri, "versions", f"v{version:06d}")


def shard_files(i: int) -> tuple[str, str]:
    """Relative paths (index file, id-map file) of shard ``i`` inside a version directory."""
    return f"shards/{shard_name(i, 'faiss')}", f"shards/{shard_name(i, 'ids.parquet')}"


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def current_version(out_uri: str, cfg: StorageConfig | None = None) -> int | None:
    """The published version number, or None when nothing was published yet."""
    uri = storage.join(out_uri, "CURRENT")
    if not storage.exists(uri, cfg):
        return None
    return int(storage.read_json(uri, cfg)["version"])


def list_versions(out_uri: str, cfg: StorageConfig | None = None) -> list[int]:
    """Version numbers that have a directory (published or not), ascending."""
    loc = storage.filesystem_for(storage.join(out_uri, "versions"), cfg)
    found = set()
    for info in storage.list_files(loc.uri, cfg):
        top = storage.relative(loc, info.path).split("/", 1)[0]
        m = _VERSION_RE.match(top)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def next_version(out_uri: str, cfg: StorageConfig | None = None) -> int:
    """A version number above every existing directory and the published pointer."""
    cur = current_version(out_uri, cfg) or 0
    return max([cur, *list_versions(out_uri, cfg)]) + 1


def read_manifest(out_uri: str, version: int | None = None, cfg: StorageConfig | None = None) -> dict[str, Any]:
    """index.json of ``version`` (default: the published one)."""
    if version is None:
        version = current_version(out_uri, cfg)
        if version is None:
            raise FileNotFoundError(f"no published index at {out_uri} (CURRENT is missing)")
    return storage.read_json(storage.join(version_dir(out_uri, version), "index.json"), cfg)


def write_manifest(out_uri: str, version: int, manifest: dict[str, Any], cfg: StorageConfig | None = None) -> None:
    """Write a version's index.json (before publishing it)."""
    manifest = {**manifest, "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_json(storage.join(version_dir(out_uri, version), "index.json"), manifest, cfg)


def publish(out_uri: str, version: int, cfg: StorageConfig | None = None) -> None:
    """Atomically point CURRENT at ``version`` (its index.json must already exist)."""
    if not storage.exists(storage.join(version_dir(out_uri, version), "index.json"), cfg):
        raise FileNotFoundError(f"cannot publish version {version}: its index.json is missing")
    check_held(out_uri, cfg)  # a writer whose lock was broken while it worked must not publish
    storage.write_json(storage.join(out_uri, "CURRENT"), {"version": version}, cfg)


def rollback(out_uri: str, version: int, cfg: StorageConfig | None = None) -> None:
    """Point CURRENT back at an older (still kept) version."""
    publish(out_uri, version, cfg)


def prune(out_uri: str, keep: int, cfg: StorageConfig | None = None) -> list[int]:
    """Delete all but the ``keep`` highest versions (never the published one); returns the deleted.
    A version whose files a kept version still uses (the base shards under a delta update, see
    segments.py) stays until compaction or a rebuild releases it."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    versions = list_versions(out_uri, cfg)
    cur = current_version(out_uri, cfg)
    used: set[int] = set()
    for v in {*versions[-keep:], *([cur] if cur is not None else [])}:
        if storage.exists(storage.join(version_dir(out_uri, v), "index.json"), cfg):
            used |= homes(read_manifest(out_uri, v, cfg))
    doomed = [v for v in versions[:-keep] if v != cur and v not in used]
    for v in doomed:
        loc = storage.filesystem_for(version_dir(out_uri, v), cfg)
        loc.fs.delete_dir(loc.path)
    return doomed


def remove_incomplete(out_uri: str, cfg: StorageConfig | None = None) -> list[int]:
    """Delete version directories without index.json: shards a writer wrote before it crashed.
    Call only while holding the LOCK (a live writer's version-in-progress looks the same)."""
    doomed = [v for v in list_versions(out_uri, cfg)
              if not storage.exists(storage.join(version_dir(out_uri, v), "index.json"), cfg)]
    for v in doomed:
        loc = storage.filesystem_for(version_dir(out_uri, v), cfg)
        loc.fs.delete_dir(loc.path)
    return doomed


def copy_file(src_uri: str, dst_uri: str, cfg: StorageConfig | None = None) -> None:
    """Copy one file: server-side CopyObject on S3 (atomic); atomic read+write locally."""
    src, dst = storage.filesystem_for(src_uri, cfg), storage.filesystem_for(dst_uri, cfg)
    if dst.is_s3 and src.is_s3:
        src.fs.copy_file(src.path, dst.path)
    else:
        storage.write_bytes(dst_uri, storage.read_bytes(src_uri, cfg), cfg)


def homes(manifest: dict[str, Any]) -> set[int]:
    """Versions whose directories hold files this manifest's shards use."""
    own = int(manifest["version"])
    found = set()
    for e in manifest.get("shards", []):
        found.add(int(e.get("home", own)))
        for part in ("delta", "tombstones"):
            if e.get(part):
                found.add(int(e[part].get("home", own)))
    return found
