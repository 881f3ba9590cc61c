"""Search a published sharded index: fan out to every shard, merge the per-shard top-k exactly.

Scores are inner products (metric "ip", higher is better) or squared L2 distances (metric "l2",
lower is better). Ties are broken by ascending id so results are deterministic across shardings.
"""
from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from typing import Any

import faiss
import numpy as np

from artextract.config import StorageConfig
from artextract.index import versions as V
# load_shard / load_ids are re-exported: callers read base files through this module.
from artextract.index.segments import load_ids, load_live_ids, load_live_index, load_shard  # noqa: F401

log = logging.getLogger(__name__)
ChecksumError = V.ChecksumError
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")


def _as_f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def torch_exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, device: str = "cpu",
                       chunk: int = 65536, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of (q,d) queries over (n,d) vectors with torch (matmul + topk over database
    chunks of ``chunk`` rows); returns (scores (q,k) float32, row positions (q,k) int64, -1 = none)."""
    import torch

    _check_metric(metric)
    q = torch.from_numpy(_as_f32(queries)).to(device)
    best_s = torch.empty((q.shape[0], 0), dtype=torch.float32, device=device)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.int64, device=device)
    largest = metric == "ip"
    for start in range(0, len(vectors), chunk):
        x = torch.from_numpy(_as_f32(vectors[start:start + chunk])).to(device)
        s = q @ x.T
        if metric == "l2":  # ||q-x||^2 = |q|^2 + |x|^2 - 2 q.x
            s = (q * q).sum(1, keepdim=True) + (x * x).sum(1)[None, :] - 2 * s
        ts, ti = torch.topk(s, min(k, s.shape[1]), dim=1, largest=largest)
        best_s = torch.cat([best_s, ts], 1)
        best_i = torch.cat([best_i, ti + start], 1)
        best_s, order = torch.topk(best_s, min(k, best_s.shape[1]), dim=1, largest=largest)
        best_i = torch.gather(best_i, 1, order)
    scores, idx = best_s.cpu().numpy(), best_i.cpu().numpy()
    if scores.shape[1] < k:  # fewer vectors than k
        pad = k - scores.shape[1]
        fill = -np.inf if largest else np.inf
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=fill)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32), idx.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _use_torch() -> bool:
    # Importing torch costs seconds: checked once per process, only when backend='auto'.
    if hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip",
                 backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact reference top-k: (scores (q,k), row positions (q,k)). backend "auto" uses torch on CUDA
    when faiss has no GPU support, else faiss IndexFlatIP / IndexFlatL2 on CPU."""
    _check_metric(metric)
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', not {backend!r}")
    if backend == "torch" or (backend == "auto" and _use_torch()):
        return torch_exact_search(vectors, queries, k, device="cuda" if backend == "auto" else "cpu",
                                  metric=metric)
    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    index.add(_as_f32(vectors))
    scores, idx = index.search(_as_f32(queries), k)
    return scores, idx


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    """Set nprobe on an IVF index (a no-op for other types)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(min(nprobe, ivf.nlist))


def merge_topk(scores: list[np.ndarray], ids: list[np.ndarray], k: int,
               metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of per-shard (q,k_i) results into (q,k): best score first, ties by ascending id;
    missing results have id -1."""
    s = np.concatenate(scores, axis=1).astype(np.float32)
    i = np.concatenate(ids, axis=1).astype(np.int64)
    bad = i < 0
    worst = -np.inf if metric == "ip" else np.inf
    s = np.where(bad, worst, s)
    tie = np.where(bad, np.iinfo(np.int64).max, i)
    primary = -s if metric == "ip" else s
    order = np.lexsort((tie, primary), axis=-1)[:, :k]
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(np.where(bad, -1, i), order, 1)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=worst)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return s, i


def search_shards(indexes: list[faiss.Index], queries: np.ndarray, k: int, metric: str = "ip",
                  nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard for top-k and merge: (scores (q,k), ids (q,k) int64)."""
    q = _as_f32(queries)
    per_s, per_i = [], []
    for index in indexes:
        if index.ntotal == 0:
            continue
        set_nprobe(index, nprobe)
        s, i = index.search(q, k)
        per_s.append(s)
        per_i.append(i)
    if not per_s:
        worst = -np.inf if metric == "ip" else np.inf
        return np.full((len(q), k), worst, np.float32), np.full((len(q), k), -1, np.int64)
    return merge_topk(per_s, per_i, k, metric)


def reconstruct_ids(index: faiss.Index, ids: list[int]) -> np.ndarray:
    """Stored vectors of ``ids`` from one shard (IVF gets a hashtable direct map first); raises
    RuntimeError where the index type cannot reconstruct."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return np.vstack([index.reconstruct(int(i)) for i in ids]).astype(np.float32)


def _gpu_faiss() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class ShardSearcher:
    """One shard of a published version, ready to search (Ray-free: ``ray_search`` wraps it in an
    actor, ``IndexReader`` holds one per shard in-process, so both search the very same code).

    ``device="auto"`` moves the shard to a GPU when one is visible: with faiss-gpu by cloning the
    index; else, for Flat shards and CUDA torch, by exact torch top-k over its reconstructed vectors
    (IVF shards then stay on the CPU: a torch scan would ignore nprobe and change the results).
    """

    def __init__(self, out_uri: str, version: int, entry: dict[str, Any], storage_cfg: StorageConfig | None = None,
                 nprobe: int | None = None, verify: bool = True, device: str = "cpu"):
        if device not in ("cpu", "auto"):
            raise ValueError(f"device must be 'cpu' or 'auto', not {device!r}")
        self.index = load_live_index(out_uri, version, entry, storage_cfg, verify)
        self.metric = "ip" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        self.nprobe = nprobe
        set_nprobe(self.index, nprobe)
        self.backend, self._search_index, self._torch = "faiss-cpu", self.index, None
        if device == "auto" and self.index.ntotal:
            self._to_gpu()

    def _to_gpu(self) -> None:
        if _gpu_faiss():
            try:
                self._res = faiss.StandardGpuResources()
                self._search_index = faiss.index_cpu_to_gpu(self._res, 0, self.index)
                self.backend = "faiss-gpu"
            except RuntimeError as exc:  # an index type without a GPU implementation: stay on the CPU
                log.warning("shard stays on the CPU: %s", exc)
            return
        if faiss.try_extract_index_ivf(self.index) is None and _use_torch():
            flat = faiss.downcast_index(self.index.index) if hasattr(self.index, "id_map") else self.index
            ids = faiss.vector_to_array(self.index.id_map) if hasattr(self.index, "id_map") \
                else np.arange(self.index.ntotal, dtype=np.int64)
            self._torch = (flat.reconstruct_n(0, flat.ntotal), ids.astype(np.int64))
            self.backend = "torch-cuda"

    @property
    def ntotal(self) -> int:
        """Vectors in this shard."""
        return int(self.index.ntotal)

    def info(self) -> tuple[int, str]:
        """(ntotal, backend): what a remote caller can ask of an actor (properties are not remote)."""
        return self.ntotal, self.backend

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard: (scores (q,k) float32, ids (q,k) int64, -1 = none)."""
        q = _as_f32(queries)
        if self.ntotal == 0:
            worst = -np.inf if self.metric == "ip" else np.inf
            return np.full((len(q), k), worst, np.float32), np.full((len(q), k), -1, np.int64)
        if self._torch is not None:
            vectors, ids = self._torch
            scores, pos = torch_exact_search(vectors, q, k, device="cuda", metric=self.metric)
            return scores, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
        if self.backend == "faiss-gpu":
            if (nprobe or self.nprobe) and faiss.try_extract_index_ivf(self.index) is not None:
                faiss.GpuParameterSpace().set_index_parameter(self._search_index, "nprobe",
                                                              int(nprobe or self.nprobe))
        else:
            set_nprobe(self.index, nprobe or self.nprobe)
        scores, ids = self._search_index.search(q, k)
        return scores.astype(np.float32), ids.astype(np.int64)

    def reconstruct(self, ids: list[int]) -> np.ndarray:
        """Stored vectors of ``ids`` (all of this shard): see :func:`reconstruct_ids`."""
        return reconstruct_ids(self.index, ids)


class BaseIndexReader(ABC):
    """The published version's manifest and id map (id -> (image_id, face_idx)), without the faiss
    shards: subclasses decide where the shards live (this process, or Ray actors) and only
    implement ``_search_each`` and ``_reconstruct_shard``; merging and key lookup are shared."""

    def __init__(self, out_uri: str, storage_cfg: StorageConfig | None = None, nprobe: int | None = None,
                 version: int | None = None, verify: bool = True):
        self.out_uri, self.cfg, self.verify = out_uri, storage_cfg, verify
        self.version = version if version is not None else V.current_version(out_uri, storage_cfg)
        if self.version is None:
            raise FileNotFoundError(f"no published index at {out_uri} (CURRENT is missing)")
        self.manifest = V.read_manifest(out_uri, self.version, storage_cfg)
        self.metric = self.manifest["metric"]
        self.nprobe = nprobe if nprobe is not None else self.manifest.get("nprobe")
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

    @abstractmethod
    def _search_each(self, queries: np.ndarray, k: int, nprobe: int | None
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

    def search_ids(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over all shards: (scores (q,k), ids (q,k) int64, -1 = none)."""
        per = self._search_each(_as_f32(queries), k, nprobe or self.nprobe)
        if not per:
            worst = -np.inf if self.metric == "ip" else np.inf
            return np.full((len(queries), k), worst, np.float32), np.full((len(queries), k), -1, np.int64)
        return merge_topk([s for s, _ in per], [i for _, i in per], k, self.metric)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None
               ) -> tuple[np.ndarray, list[list[V.Key]]]:
        """Top-k over all shards: (scores (q,k), keys [[(image_id, face_idx), ...] per query])."""
        scores, ids = self.search_ids(queries, k, nprobe)
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
                 version: int | None = None, verify: bool = True):
        super().__init__(out_uri, storage_cfg, nprobe, version, verify)
        self.searchers = [ShardSearcher(out_uri, self.version, e, storage_cfg, self.nprobe, verify)
                          for e in self.manifest["shards"]]

    @property
    def indexes(self) -> list[faiss.Index]:
        """The shards' faiss indexes, in shard order."""
        return [s.index for s in self.searchers]

    @property
    def ntotal(self) -> int:
        """Vectors in the loaded version."""
        return int(sum(s.ntotal for s in self.searchers))

    def _search_each(self, queries: np.ndarray, k: int, nprobe: int | None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        return [s.search(queries, k, nprobe) for s in self.searchers if s.ntotal]

    def _reconstruct_shard(self, shard: int, ids: list[int]) -> np.ndarray:
        return self.searchers[shard].reconstruct(ids)
