"""Search a published sharded index: fan out to every shard, merge the per-shard top-k exactly
(exact.merge_topk). :class:`BaseIndexReader` holds the manifest and the id map; :class:`IndexReader`
keeps every shard (shard.ShardSearcher) in this process, ``ray_search.RayIndexReader`` in Ray actors.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import faiss
import numpy as np

from artextract.config import StorageConfig
from artextract.index import versions as V
from artextract.index.exact import as_f32, merge_topk
from artextract.index.shard import ShardSearcher
from artextract.index.segments import load_live_ids

log = logging.getLogger(__name__)
ChecksumError = V.ChecksumError


class BaseIndexReader(ABC):
    """The published version's manifest and id map (id -> (image_id, face_idx)), without the faiss
    shards: subclasses decide where the shards live (this process, or Ray actors) and only
    implement ``_search_each`` and ``_reconstruct_shard``; merging and key lookup are shared."""

    def __init__(self, out_uri: str, storage_cfg: StorageConfig | None = None, nprobe: int | None = None,
                 version: int | None = None, verify: bool = True, k_factor: int | None = None,
                 store: str | None = None, cache_dir: str | None = None):
        self.out_uri, self.cfg, self.verify = out_uri, storage_cfg, verify
        self.store, self.cache_dir = store, cache_dir
        self.version = version if version is not None else V.current_version(out_uri, storage_cfg)
        if self.version is None:
            raise FileNotFoundError(f"no published index at {out_uri} (CURRENT is missing)")
        self.manifest = V.read_manifest(out_uri, self.version, storage_cfg)
        self.metric = self.manifest["metric"]
        self.nprobe = nprobe if nprobe is not None else self.manifest.get("nprobe")
        self.refine = self.manifest.get("refine")
        self.k_factor = k_factor or (self.refine or {}).get("k_factor")
        ids, image_ids, faces = [], [], []
        for e in self.manifest["shards"]:
            t = load_live_ids(out_uri, self.version, e, storage_cfg, verify)
            ids.append(t["id"].to_numpy())
            image_ids.extend(t["image_id"].to_pylist())
            faces.append(t["face_idx"].to_numpy())
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self._order = np.argsort(all_ids, kind="stable")
        self._ids = all_ids[self._order]
        self._image_ids = image_ids
        self._faces = np.concatenate(faces) if faces else np.zeros(0, np.int16)

    @property
    def ntotal(self) -> int:
        """Vectors in the loaded version (rows of its id map)."""
        return int(len(self._ids))

    def _shard_args(self) -> tuple[Any, ...]:
        """Everything but the shard entry a :class:`ShardSearcher` of this version takes."""
        return (self.out_uri, self.version)

    def _shard_kwargs(self) -> dict[str, Any]:
        return {"storage_cfg": self.cfg, "nprobe": self.nprobe, "verify": self.verify, "refine": self.refine,
                "k_factor": self.k_factor, "store": self.store, "cache_dir": self.cache_dir,
                "fast_scan": bool(self.manifest.get("fast_scan"))}

    @abstractmethod
    def _search_each(self, queries: np.ndarray, k: int, nprobe: int | None, k_factor: int | None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-shard (scores, ids) top-k."""

    @abstractmethod
    def _reconstruct_shard(self, shard: int, ids: list[int]) -> np.ndarray:
        """Stored vectors of ``ids``, all in shard number ``shard``."""

    def key_of(self, id_: int) -> V.Key | None:
        """(image_id, face_idx) of an index id, None when unknown."""
        pos = int(np.searchsorted(self._ids, id_))
        if pos >= len(self._ids) or self._ids[pos] != id_:
            return None
        row = int(self._order[pos])
        return self._image_ids[row], int(self._faces[row])

    def keys_of_image(self, image_id: str) -> list[V.Key]:
        """Every stored key of ``image_id``, sorted by face_idx."""
        rows = np.flatnonzero(np.asarray(self._image_ids, dtype=object) == image_id)
        return sorted((image_id, int(self._faces[r])) for r in rows)

    def search_ids(self, queries: np.ndarray, k: int, nprobe: int | None = None,
                   k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over all shards: (scores (q,k), ids (q,k) int64, -1 = none)."""
        per = self._search_each(as_f32(queries), k, nprobe or self.nprobe, k_factor or self.k_factor)
        if not per:
            worst = -np.inf if self.metric == "ip" else np.inf
            return np.full((len(queries), k), worst, np.float32), np.full((len(queries), k), -1, np.int64)
        return merge_topk([s for s, _ in per], [i for _, i in per], k, self.metric)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, k_factor: int | None = None
               ) -> tuple[np.ndarray, list[list[V.Key]]]:
        """Top-k over all shards: (scores (q,k), keys [[(image_id, face_idx), ...] per query])."""
        scores, ids = self.search_ids(queries, k, nprobe, k_factor)
        keys = [[self.key_of(int(x)) for x in row if x >= 0] for row in ids]
        return scores, keys

    def reconstruct(self, keys: list[V.Key]) -> np.ndarray:
        """Stored vectors of ``keys`` (q, d), each from the shard owning its id (``id % num_shards``)."""
        ids = [V.key_id(*k) for k in keys]
        n = len(self.manifest["shards"])
        out = np.zeros((len(ids), int(self.manifest["dim"])), np.float32)
        for shard in sorted({i % n for i in ids}):
            rows = [r for r, i in enumerate(ids) if i % n == shard]
            out[rows] = self._reconstruct_shard(shard, [ids[r] for r in rows])
        return out

    def close(self) -> None:
        """Release the shards (a no-op where they are plain memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexReader(BaseIndexReader):
    """Loads the published version (resolving CURRENT once) and answers k-NN queries by key, with
    every shard in this process (:class:`ShardSearcher`, CPU)."""

    def __init__(self, out_uri: str, storage_cfg: StorageConfig | None = None, nprobe: int | None = None,
                 version: int | None = None, verify: bool = True, k_factor: int | None = None,
                 store: str | None = None, cache_dir: str | None = None):
        super().__init__(out_uri, storage_cfg, nprobe, version, verify, k_factor, store, cache_dir)
        self.searchers = [ShardSearcher(*self._shard_args(), e, **self._shard_kwargs())
                          for e in self.manifest["shards"]]

    @property
    def indexes(self) -> list[faiss.Index]:
        """The shards' faiss indexes, in shard order."""
        return [s.index for s in self.searchers]

    @property
    def ntotal(self) -> int:
        """Vectors in the loaded version."""
        return int(sum(s.ntotal for s in self.searchers))

    def _search_each(self, queries: np.ndarray, k: int, nprobe: int | None, k_factor: int | None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        return [s.search(queries, k, nprobe, k_factor) for s in self.searchers if s.ntotal]

    def _reconstruct_shard(self, shard: int, ids: list[int]) -> np.ndarray:
        return self.searchers[shard].reconstruct(ids)
