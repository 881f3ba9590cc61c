"""One shard of a published version, ready to search: the faiss index (base + delta - tombstones),
its re-ranking codes, and the device it runs on. Ray-free: ``IndexReader`` holds one per shard
in-process and ``ray_search`` wraps it in an actor, so both search the very same code."""
from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

from artextract.config import StorageConfig
from artextract.index import fastscan as FS
from artextract.index import refine as R
from artextract.index.exact import as_f32, merge_topk, torch_exact_search, use_torch
from artextract.index.segments import load_live_codes, load_live_index

log = logging.getLogger(__name__)


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    """Set nprobe on an IVF index (a no-op for other types)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(min(nprobe, ivf.nlist))


def search_shards(searchers: list["ShardSearcher"], queries: np.ndarray, k: int, metric: str = "ip",
                  nprobe: int | None = None, k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard for top-k and merge: (scores (q,k), ids (q,k) int64)."""
    q = as_f32(queries)
    per = [s.search(q, k, nprobe, k_factor) for s in searchers if s.ntotal]
    if not per:
        worst = -np.inf if metric == "ip" else np.inf
        return np.full((len(q), k), worst, np.float32), np.full((len(q), k), -1, np.int64)
    return merge_topk([s for s, _ in per], [i for _, i in per], k, metric)


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
                 nprobe: int | None = None, verify: bool = True, device: str = "cpu",
                 refine: dict[str, Any] | None = None, k_factor: int | None = None, store: str | None = None,
                 cache_dir: str | None = None, fast_scan: bool = False):
        if device not in ("cpu", "auto"):
            raise ValueError(f"device must be 'cpu' or 'auto', not {device!r}")
        index = load_live_index(out_uri, version, entry, storage_cfg, verify)
        codes = None
        if refine:  # the manifest's refine block: codec + where the codes live (refine.py)
            codec = R.load_codec(R.read_codec(out_uri, version, refine, storage_cfg))
            codes = load_live_codes(out_uri, version, entry, codec, storage_cfg, store or refine["store"], verify,
                                    cache_dir)
        self._setup(index, codes, nprobe, k_factor or (refine or {}).get("k_factor"), fast_scan)
        if device == "auto" and self.index.ntotal:
            self._to_gpu()

    @classmethod
    def of(cls, index: faiss.Index, codes: R.RefineStore | None = None, nprobe: int | None = None,
           k_factor: int | None = None, fast_scan: bool = False) -> "ShardSearcher":
        """A searcher over an index (and refine codes) already in memory: what a build measures."""
        self = cls.__new__(cls)
        self._setup(index, codes, nprobe, k_factor, fast_scan)
        return self

    def _setup(self, index: faiss.Index, codes: R.RefineStore | None, nprobe: int | None,
               k_factor: int | None, fast_scan: bool = False) -> None:
        # fast-scan shards are stored as 4-bit PQ and packed into fast-scan blocks here (fastscan.py)
        self.index = FS.to_fast_scan(index) if fast_scan and index.ntotal else index
        self.refine, self.k_factor = codes, int(k_factor or 1)
        self.metric = "ip" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        self.nprobe = nprobe
        set_nprobe(self.index, nprobe)
        self.backend, self._search_index, self._torch = "faiss-cpu", self.index, None

    def _to_gpu(self) -> None:
        if _gpu_faiss():
            try:
                self._res = faiss.StandardGpuResources()
                self._search_index = faiss.index_cpu_to_gpu(self._res, 0, self.index)
                self.backend = "faiss-gpu"
            except RuntimeError as exc:  # an index type without a GPU implementation: stay on the CPU
                log.warning("shard stays on the CPU: %s", exc)
            return
        if faiss.try_extract_index_ivf(self.index) is None and self.refine is None and use_torch():
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

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard: (scores (q,k) float32, ids (q,k) int64, -1 = none). With refine codes
        the compressed index proposes ``k * k_factor`` candidates and their refine codes rank them."""
        q = as_f32(queries)
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
        fetch = k * int(k_factor or self.k_factor) if self.refine is not None else k
        scores, ids = self._search_index.search(q, min(fetch, max(k, self.ntotal)))
        ids = ids.astype(np.int64)
        if self.refine is not None:
            scores = self.refine.rescore(q, ids, self.metric)
            return merge_topk([scores], [ids], k, self.metric)
        return scores.astype(np.float32), ids

    def reconstruct(self, ids: list[int]) -> np.ndarray:
        """Stored vectors of ``ids`` (all of this shard): from the refine codes where there are
        some (finer than the compressed index), else :func:`reconstruct_ids`."""
        if self.refine is not None:
            return self.refine.vectors(np.asarray(ids, np.int64)).astype(np.float32)
        return reconstruct_ids(self.index, ids)
