"""Search a published sharded index: fan out to every shard, merge the per-shard top-k exactly.

Scores are inner products (metric "ip", higher is better) or squared L2 distances (metric "l2",
lower is better). Ties are broken by ascending id so results are deterministic across shardings.
"""
from __future__ import annotations

import functools
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artextract import storage
from artextract.config import StorageConfig
from artextract.index import versions as V

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


def load_shard(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
               verify: bool = True) -> tuple[faiss.Index, bytes]:
    """Read one shard's index file (checking its sha256) and deserialize it."""
    uri = storage.join(V.version_dir(out_uri, version), entry["index"])
    data = storage.read_bytes(uri, cfg)
    if verify and V.sha256(data) != entry["sha256"]:
        raise ChecksumError(f"checksum mismatch for {uri}: expected {entry['sha256']}, got {V.sha256(data)}")
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), data


def load_ids(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
             verify: bool = True) -> pa.Table:
    """Read one shard's id map table (id, image_id, face_idx), checking its sha256."""
    uri = storage.join(V.version_dir(out_uri, version), entry["ids"])
    data = storage.read_bytes(uri, cfg)
    if verify and V.sha256(data) != entry["ids_sha256"]:
        raise ChecksumError(f"checksum mismatch for {uri}: expected {entry['ids_sha256']}, got {V.sha256(data)}")
    return pq.read_table(pa.BufferReader(data))



class IndexReader:
    """Loads the published version (resolving CURRENT once) and answers k-NN queries by key."""

    def __init__(self, out_uri: str, storage_cfg: StorageConfig | None = None, nprobe: int | None = None,
                 version: int | None = None, verify: bool = True):
        self.out_uri, self.cfg = out_uri, storage_cfg
        self.version = version if version is not None else V.current_version(out_uri, storage_cfg)
        if self.version is None:
            raise FileNotFoundError(f"no published index at {out_uri} (CURRENT is missing)")
        self.manifest = V.read_manifest(out_uri, self.version, storage_cfg)
        self.metric = self.manifest["metric"]
        self.nprobe = nprobe if nprobe is not None else self.manifest.get("nprobe")
        self.indexes = [load_shard(out_uri, self.version, e, storage_cfg, verify)[0]
                        for e in self.manifest["shards"]]
        ids, image_ids, faces = [], [], []
        for e in self.manifest["shards"]:
            t = load_ids(out_uri, self.version, e, storage_cfg, verify)
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
        """Vectors in the loaded version."""
        return int(sum(ix.ntotal for ix in self.indexes))

    def key_of(self, id_: int) -> V.Key | None:
        """(image_id, face_idx) of an index id, None when unknown."""
        pos = int(np.searchsorted(self._ids, id_))
        if pos >= len(self._ids) or self._ids[pos] != id_:
            return None
        row = int(self._order[pos])
        return self._image_ids[row], int(self._faces[row])

    def search_ids(self, queries: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over all shards: (scores (q,k), ids (q,k) int64, -1 = none)."""
        return search_shards(self.indexes, queries, k, self.metric, nprobe or self.nprobe)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None
               ) -> tuple[np.ndarray, list[list[V.Key]]]:
        """Top-k over all shards: (scores (q,k), keys [[(image_id, face_idx), ...] per query])."""
        scores, ids = self.search_ids(queries, k, nprobe)
        keys = [[self.key_of(int(x)) for x in row if x >= 0] for row in ids]
        return scores, keys
