"""Incremental update of a published index: add and/or remove keys, publish a new version.

Copy-on-write: only the shards that own an added or removed id (``id % N``) are deserialized,
edited (``remove_ids`` then ``add_with_ids`` on the copy) and written into the new version. The
other shards are COPIED into the new version directory (a server-side CopyObject on S3, no
download), byte-identical, checksums carried over. Copying rather than referencing the previous
directory keeps every version self-contained, so pruning or rolling back never breaks another
version. Adding an existing key replaces its vector (upsert). The coarse quantizer is not
retrained: new vectors go to the existing IVF lists (rebuild when the collection drifts).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable

import faiss
import numpy as np
import pyarrow as pa

from artextract import storage
from artextract.config import StorageConfig
from artextract.index import versions as V
from artextract.index.build import ids_table, write_shard
from artextract.index.lock import index_lock
from artextract.index.search import load_ids, load_shard


def _edit_shard(index: faiss.Index, ids: pa.Table, drop: np.ndarray, add_vec: np.ndarray, add_ids: np.ndarray,
                add_image_ids: list[str], add_faces: np.ndarray) -> tuple[bytes, pa.Table, int]:
    """Remove ``drop`` ids, add new rows; returns (serialized index, new id map, rows removed)."""
    old_ids = ids["id"].to_numpy()
    present = np.isin(old_ids, drop)
    removed = int(index.remove_ids(np.ascontiguousarray(drop, dtype=np.int64))) if len(drop) else 0
    if removed != int(present.sum()):
        raise RuntimeError(f"index and id map disagree: removed {removed} vectors for {int(present.sum())} ids")
    if len(add_ids):
        index.add_with_ids(np.ascontiguousarray(add_vec, dtype=np.float32), add_ids)
    keep = ids.filter(pa.array(~present))
    merged_ids = np.concatenate([keep["id"].to_numpy(), add_ids])
    merged_img = keep["image_id"].to_pylist() + list(add_image_ids)
    merged_faces = np.concatenate([keep["face_idx"].to_numpy(), add_faces]).astype(np.int16)
    return faiss.serialize_index(index).tobytes(), ids_table(merged_ids, merged_img, merged_faces), removed


def update_index(out_uri: str, add_embeddings: pa.Table | None = None,
                 remove_keys: Iterable[tuple[str, int]] = (), storage_cfg: StorageConfig | None = None,
                 keep: int = 3, force: bool = False, stale_after_s: float = 3600.0, locked: bool = False,
                 extra: dict[str, Any] | None = None,
                 before_publish: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Publish a new version = CURRENT + ``add_embeddings`` - ``remove_keys``, rewriting only the
    affected shards; holds ``out_uri/LOCK`` throughout (LockError if another writer holds it;
    ``force=True`` breaks a lock older than ``stale_after_s``) unless ``locked`` says the caller
    holds it. ``extra`` keys go into index.json; ``before_publish(version)`` may write more files
    into the new version directory before it becomes visible. Returns the new index.json."""
    guard = nullcontext() if locked else index_lock(out_uri, storage_cfg, owner="update_index", force=force,
                                                    stale_after_s=stale_after_s)
    with guard:
        cur = V.current_version(out_uri, storage_cfg)
        if cur is None:
            raise FileNotFoundError(f"no published index at {out_uri} to update; build it first")
        old = V.read_manifest(out_uri, cur, storage_cfg)
        n = int(old["num_shards"])
        if add_embeddings is not None and len(add_embeddings):
            add_vec = V.vectors_of(add_embeddings)
            add_ids, add_img, add_faces = V.table_keys(add_embeddings)
            if add_vec.shape[1] != old["dim"]:
                raise ValueError(f"added vectors have dim {add_vec.shape[1]}, the index has {old['dim']}")
            new_models = V.model_versions(add_embeddings)
        else:
            add_vec, add_ids, add_img = np.zeros((0, old["dim"]), np.float32), np.zeros(0, np.int64), []
            add_faces, new_models = np.zeros(0, np.int16), []
        rm = list(remove_keys)
        rm_ids = np.unique(V.key_ids([k[0] for k in rm], [k[1] for k in rm])) if rm else np.zeros(0, np.int64)
        affected = sorted(set((add_ids % n).tolist()) | set((rm_ids % n).tolist()))
        version = V.next_version(out_uri, storage_cfg)
        src_dir, dst_dir = V.version_dir(out_uri, cur), V.version_dir(out_uri, version)
        entries, removed = [], 0
        for entry in old["shards"]:
            s = int(entry["shard"])
            if s not in affected:
                for rel in (entry["index"], entry["ids"]):
                    V.copy_file(storage.join(src_dir, rel), storage.join(dst_dir, rel), storage_cfg)
                entries.append(dict(entry))
                continue
            index, _ = load_shard(out_uri, cur, entry, storage_cfg)
            ids = load_ids(out_uri, cur, entry, storage_cfg)
            mine = np.flatnonzero(add_ids % n == s)
            # Upsert: an added key that already exists is removed first.
            drop = np.union1d(rm_ids[rm_ids % n == s], add_ids[mine])
            blob, table, r = _edit_shard(index, ids, drop, add_vec[mine], add_ids[mine],
                                         [add_img[i] for i in mine], add_faces[mine])
            removed += r
            entries.append(write_shard(out_uri, version, s, blob, table, storage_cfg))
        manifest = {k: v for k, v in old.items() if k not in ("version", "created")}
        manifest.update(
            shards=entries, counts=[e["count"] for e in entries], total=int(sum(e["count"] for e in entries)),
            model_versions=sorted(set(old.get("model_versions", [])) | set(new_models)), parent=cur,
            recall_from_version=old.get("recall_from_version", cur),
            update={"added": int(len(add_ids)), "removed_rows": removed, "remove_requested": int(len(rm_ids)),
                    "rewritten_shards": affected, "copied_shards": [e["shard"] for e in entries
                                                                    if e["shard"] not in affected]},
            **(extra or {}))
        if before_publish is not None:
            before_publish(version)
        V.write_manifest(out_uri, version, manifest, storage_cfg)
        V.publish(out_uri, version, storage_cfg)
        V.prune(out_uri, keep, storage_cfg)
        return V.read_manifest(out_uri, version, storage_cfg)
