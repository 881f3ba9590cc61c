"""Incremental update of a published index: add and/or remove keys, publish a new version.

Only the shards that own an added or removed id (``id % N``) change, and those normally by a small
*delta segment* (see segments.py): the new vectors go into a copy of the build's trained empty
index, removed base ids into tombstones, and the shard's large base files stay where they are (the
new version refers to them). Shards nobody touched are referred to as they are: an update writes
bytes in proportion to the change, not to the index. When a shard's delta + tombstones pass
``compact_ratio`` of its base, or ``compact=True``, the shard is compacted: base minus tombstones
plus delta is written as a new base (``merge_from`` moves the codes as they are). Adding an
existing key replaces its vector (upsert). The coarse quantizer is never retrained: new vectors go
to the existing IVF lists (rebuild when the collection drifts).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable

import faiss
import numpy as np
import pyarrow as pa

from artextract.config import StorageConfig
from artextract.index import refine as R
from artextract.index import versions as V
from artextract.index import segments as S
from artextract.index.build import ids_table, write_shard
from artextract.index.lock import DEFAULT_LEASE_S, index_lock

BASE_FIELDS = ("shard", "index", "ids", "sha256", "ids_sha256", "bytes", "home", "refine")


def _edit(index: faiss.Index, ids: pa.Table, drop: np.ndarray, add_vec: np.ndarray, add_ids: np.ndarray,
          add_image_ids: list[str], add_faces: np.ndarray) -> tuple[pa.Table, int]:
    """Remove ``drop`` ids from ``index`` and add new rows (in place); returns (new id map, rows removed)."""
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
    return ids_table(merged_ids, merged_img, merged_faces), removed


def _edit_codes(ids: np.ndarray, codes: np.ndarray | None, drop: np.ndarray, add_ids: np.ndarray,
                add_codes: np.ndarray | None) -> np.ndarray | None:
    """The refine codes matching :func:`_edit`'s new id map (same rows kept, same id order)."""
    if codes is None:
        return None
    keep = ~np.isin(ids, drop)
    merged = np.concatenate([ids[keep], add_ids])
    return np.concatenate([codes[keep], add_codes])[np.argsort(merged, kind="stable")]


def _read_codes(out_uri: str, cur: int, entry: dict[str, Any] | None, codec: faiss.Index | None,
                cfg: StorageConfig | None) -> np.ndarray | None:
    if codec is None:
        return None
    if not entry:
        return np.zeros((0, codec.sa_code_size()), np.uint8)
    return np.asarray(R.read_codes(out_uri, cur, entry["refine"], cfg, "memory"))


def _update_shard(out_uri: str, cur: int, version: int, entry: dict[str, Any], drop: np.ndarray,
                  add: tuple[np.ndarray, np.ndarray, list[str], np.ndarray], template: bytes,
                  compact: bool, compact_ratio: float, cfg: StorageConfig | None,
                  codec: faiss.Index | None = None) -> tuple[dict[str, Any], int, bool]:
    """One touched shard: (new entry, rows removed, compacted?). With a refine ``codec`` the added
    vectors are encoded for the delta and codes follow every row edit."""
    base_ids = S.load_ids(out_uri, cur, entry, cfg)
    dead = S.load_tombstones(out_uri, cur, entry, cfg)
    base_drop = np.intersect1d(drop, np.setdiff1d(base_ids["id"].to_numpy(), dead))
    dead = np.union1d(dead, base_drop)
    if entry.get("delta"):
        delta, _ = S.load_shard(out_uri, cur, entry["delta"], cfg)
        delta_ids = S.load_ids(out_uri, cur, entry["delta"], cfg)
    else:
        delta = faiss.deserialize_index(np.frombuffer(template, dtype=np.uint8))
        delta_ids = V.IDS_SCHEMA.empty_table()
    add_codes = None if codec is None else R.encode(codec, add[0])
    delta_codes = _edit_codes(delta_ids["id"].to_numpy(), _read_codes(out_uri, cur, entry.get("delta"), codec, cfg),
                              drop, add[1], add_codes)
    delta_ids, removed = _edit(delta, delta_ids, drop, *add)
    removed += len(base_drop)
    base_count = int(entry.get("base_count", entry["count"]))
    s = int(entry["shard"])
    if compact or len(delta_ids) + len(dead) > compact_ratio * max(base_count, 1):
        base, _ = S.load_shard(out_uri, cur, entry, cfg)
        live, _ = _edit(base, base_ids, dead, np.zeros((0, base.d), np.float32), np.zeros(0, np.int64), [],
                        np.zeros(0, np.int16))
        base.merge_from(delta, 0)
        table = pa.concat_tables([live, delta_ids]).sort_by("id")
        codes = None
        if codec is not None:
            live_codes = _edit_codes(base_ids["id"].to_numpy(), _read_codes(out_uri, cur, entry, codec, cfg), dead,
                                     np.zeros(0, np.int64), np.zeros((0, codec.sa_code_size()), np.uint8))
            codes = _edit_codes(live["id"].to_numpy(), live_codes, np.zeros(0, np.int64), delta_ids["id"].to_numpy(),
                                delta_codes)
        new = write_shard(out_uri, version, s, faiss.serialize_index(base).tobytes(), table, cfg, codes)
        return {**new, "home": version, "base_count": new["count"]}, removed, True
    new = {k: entry[k] for k in BASE_FIELDS if k in entry}
    new["base_count"] = base_count
    if len(delta_ids):
        new["delta"] = S.write_delta(out_uri, version, s, delta, delta_ids, cfg)
        if delta_codes is not None:
            new["delta"]["refine"] = R.write_codes(out_uri, version, R.codes_rel(s, delta=True), delta_codes, cfg)
    if len(dead):
        new["tombstones"] = S.write_tombstones(out_uri, version, s, dead, cfg)
    new["count"] = base_count - len(dead) + len(delta_ids)
    return new, removed, False


def update_index(out_uri: str, add_embeddings: pa.Table | None = None,
                 remove_keys: Iterable[tuple[str, int]] = (), storage_cfg: StorageConfig | None = None,
                 keep: int = 3, force: bool = False, lease_s: float = DEFAULT_LEASE_S, locked: bool = False,
                 extra: dict[str, Any] | None = None, before_publish: Callable[[int], None] | None = None,
                 compact_ratio: float = 0.1, compact: bool = False) -> dict[str, Any]:
    """Publish a new version = CURRENT + ``add_embeddings`` - ``remove_keys``, writing only delta
    segments of the touched shards (module doc; ``compact=True`` compacts every shard that has a
    delta or tombstones); holds ``out_uri/LOCK`` throughout (LockError if another writer holds it;
    ``force=True`` breaks a lock whose lease expired; ours is a ``lease_s`` lease renewed by a heartbeat)
    unless ``locked`` says the caller
    holds it. ``extra`` keys go into index.json; ``before_publish(version)`` may write more files
    into the new version directory before it becomes visible. Returns the new index.json."""
    if compact_ratio < 0:
        raise ValueError("compact_ratio must be >= 0")
    guard = nullcontext() if locked else index_lock(out_uri, storage_cfg, owner="update_index", force=force,
                                                    lease_s=lease_s)
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
        touched = set((add_ids % n).tolist()) | set((rm_ids % n).tolist())
        if compact:
            touched |= {int(e["shard"]) for e in old["shards"] if e.get("delta") or e.get("tombstones")}
        version = V.next_version(out_uri, storage_cfg)
        template = S.read_template(out_uri, cur, old, storage_cfg)  # small: copied into every version
        codec_blob = R.read_codec(out_uri, cur, old["refine"], storage_cfg) if old.get("refine") else None
        codec = R.load_codec(codec_blob) if codec_blob is not None else None
        entries, removed, compacted = [], 0, []
        for entry in old["shards"]:
            entry, s = S.with_home(entry, cur), int(entry["shard"])
            if s not in touched:  # referred to as it is: nothing read, nothing written
                entries.append(entry)
                continue
            mine = np.flatnonzero(add_ids % n == s)
            # Upsert: an added key that already exists is removed first.
            drop = np.union1d(rm_ids[rm_ids % n == s], add_ids[mine])
            add = (add_vec[mine], add_ids[mine], [add_img[i] for i in mine], add_faces[mine])
            new, r, c = _update_shard(out_uri, cur, version, entry, drop, add, template, compact, compact_ratio,
                                      storage_cfg, codec)
            entries.append(new)
            removed += r
            if c:
                compacted.append(s)
        manifest = {k: v for k, v in old.items() if k not in ("version", "created", "update")}
        manifest["template"] = S.write_template(out_uri, version, template, storage_cfg)
        if codec_blob is not None:
            manifest["refine"] = {**old["refine"], **R.codec_entry(out_uri, version, codec_blob, old["refine"]["codec"],
                                                                   old["refine"]["store"], storage_cfg)}
        manifest.update(
            shards=entries, counts=[e["count"] for e in entries], total=int(sum(e["count"] for e in entries)),
            model_versions=sorted(set(old.get("model_versions", [])) | set(new_models)), parent=cur,
            recall_from_version=old.get("recall_from_version", cur),
            update={"added": int(len(add_ids)), "removed_rows": removed, "remove_requested": int(len(rm_ids)),
                    "touched_shards": sorted(touched), "compacted_shards": compacted,
                    "delta_shards": sorted(touched - set(compacted)),
                    "unchanged_shards": [e["shard"] for e in entries if e["shard"] not in touched],
                    "compact_ratio": compact_ratio},
            **(extra or {}))
        if before_publish is not None:
            before_publish(version)
        V.write_manifest(out_uri, version, manifest, storage_cfg)
        V.publish(out_uri, version, storage_cfg)
        V.prune(out_uri, keep, storage_cfg)
        return V.read_manifest(out_uri, version, storage_cfg)
