"""Re-ranking stage of a compressed index: re-score the top ``k * k_factor`` candidates of the
compressed shard from finer stored codes of the same vectors.

Why not faiss's ``IndexRefine``: it addresses the refine vectors by *position* and supports neither
``add_with_ids`` nor ``remove_ids``, while every shard here holds 63-bit key ids, tombstones and delta
segments (segments.py). So the factory suffix ``,RFlat`` / ``,Refine(<codec>)`` is split off: the
shard index is the compressed part (``OPQ64,IVF4096,PQ64x4fs``: keeps ids, removal and merging), and
the refine codes are a second file per shard and per delta (``part-00003.refine.npy``), one row per
row of that segment's id map (sorted by id). The codec is any faiss flat-codes index (``Flat`` =
float32, ``SQfp16``, ``SQ8``, ...) trained once with the template (``refine.faiss``).

Where the codes live is the reader's ``store`` choice, recorded in index.json:
``memory`` (read into RAM, like IndexRefineFlat) or ``disk`` (the ``.npy`` memory-mapped from
local disk -- a copy is downloaded once from remote storage into a cache directory -- so RAM holds
only the compressed codes and each query reads ``k * k_factor`` rows).
"""
from __future__ import annotations

import io
import os
import re
import tempfile
from typing import Any

import faiss
import numpy as np

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.index import versions as V

CODEC_FILE = "refine.faiss"
STORES = ("memory", "disk")
_SUFFIX = re.compile(r",(?:RFlat|Refine\((?P<codec>[^()]+)\))$")


def split_factory(factory: str) -> tuple[str, str | None]:
    """(compressed factory, refine codec or None): ``"IVF64,PQ8x4fs,RFlat"`` -> ("IVF64,PQ8x4fs", "Flat")."""
    m = _SUFFIX.search(factory)
    if not m:
        return factory, None
    return factory[:m.start()], m.group("codec") or "Flat"


def train_codec(codec: str, dim: int, metric: int, sample: np.ndarray) -> bytes:
    """A trained, empty faiss flat-codes index for ``codec`` (serialized)."""
    index = faiss.index_factory(dim, codec, metric)
    if not isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes):
        raise ValueError(f"refine codec {codec!r} is not a flat-codes index (Flat, SQfp16, SQ8, PQ..)")
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def load_codec(blob: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))


def encode(codec: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """(n, code_size) uint8 codes of ``vectors``."""
    if len(vectors) == 0:
        return np.zeros((0, codec.sa_code_size()), np.uint8)
    return codec.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32))


def sorted_codes(ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Codes reordered to ascending id, the order of every id map (build.ids_table)."""
    return codes[np.argsort(ids, kind="stable")]


def npy_bytes(codes: np.ndarray) -> bytes:
    """``codes`` as the bytes of a .npy file (memory-mappable)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(codes), allow_pickle=False)
    return buf.getvalue()


def write_codes(out_uri: str, version: int, rel: str, codes: np.ndarray, cfg: StorageConfig | None) -> dict[str, Any]:
    """Write one segment's codes into a version; returns its entry (file, sha256, bytes, home)."""
    data = npy_bytes(codes)
    storage.write_bytes(storage.join(V.version_dir(out_uri, version), rel), data, cfg)
    return {"file": rel, "sha256": V.sha256(data), "bytes": len(data), "home": version}


def _local_copy(uri: str, entry: dict[str, Any], cfg: StorageConfig | None, cache_dir: str | None,
                verify: bool) -> str:
    """A local path of the codes file: itself when local (checked by size), else a cached copy named
    by its sha256 -- streamed to a private temp file, checked, then renamed into place, so concurrent
    loaders never see half a file; a cached copy is reused after a size check. The cache is never
    pruned by us: files of versions no longer served may be deleted whenever no reader is loading."""
    if not storage.is_remote(uri):
        path = storage.filesystem_for(uri, cfg).path
        if os.path.getsize(path) != entry["bytes"]:
            raise V.ChecksumError(f"{uri} has {os.path.getsize(path)} bytes, index.json says {entry['bytes']}")
        return path
    root = cache_dir or os.path.join(tempfile.gettempdir(), "artextract-refine")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"{entry['sha256']}.npy")
    if os.path.exists(path) and os.path.getsize(path) == entry["bytes"]:
        return path
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{entry['sha256'][:16]}-", suffix=".tmp")
    os.close(fd)
    try:
        digest = storage.download(uri, tmp, cfg)
        if verify and digest != entry["sha256"]:
            raise V.ChecksumError(f"checksum mismatch for {uri}: expected {entry['sha256']}, got {digest}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_codes(out_uri: str, version: int, entry: dict[str, Any], cfg: StorageConfig | None = None,
               store: str = "memory", verify: bool = True, cache_dir: str | None = None) -> np.ndarray:
    """One segment's codes: in RAM (``memory``, sha256 checked) or memory-mapped (``disk``; a local
    file is checked by size -- hashing it would read it all into the page cache)."""
    uri = storage.join(V.version_dir(out_uri, entry.get("home", version)), entry["file"])
    if store == "disk":
        return np.load(_local_copy(uri, entry, cfg, cache_dir, verify), mmap_mode="r")
    if store != "memory":
        raise ValueError(f"refine store must be one of {STORES}, not {store!r}")
    data = storage.read_bytes(uri, cfg)
    if verify and V.sha256(data) != entry["sha256"]:
        raise V.ChecksumError(f"checksum mismatch for {uri}: expected {entry['sha256']}, got {V.sha256(data)}")
    return np.load(io.BytesIO(data))


class RefineStore:
    """The live refine codes of one shard, addressable by id: base rows minus tombstones, plus the
    delta's rows (an upserted key's new code wins because its base row is a tombstone)."""

    def __init__(self, codec: faiss.Index, segments: list[tuple[np.ndarray, np.ndarray]]):
        self.codec = codec
        # Flat codes are the float32 vectors themselves: scored in place by faiss, no decoding copy
        self.flat = isinstance(faiss.downcast_index(codec), faiss.IndexFlat)
        ids = np.concatenate([i for i, _ in segments]) if segments else np.zeros(0, np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._ids = ids[self._order]
        self._segments = segments
        self._starts = np.cumsum([0] + [len(i) for i, _ in segments])

    @property
    def nbytes_in_memory(self) -> int:
        """Bytes of codes held in RAM (memory-mapped segments count zero)."""
        return int(sum(c.nbytes for _, c in self._segments if not isinstance(c, np.memmap)))

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment, row in it) of each id; RuntimeError when one has no codes."""
        flat = ids.reshape(-1)
        pos = np.searchsorted(self._ids, flat)
        if len(flat) and (pos.max(initial=0) >= len(self._ids) or
                          (self._ids[np.minimum(pos, len(self._ids) - 1)] != flat).any()):
            raise RuntimeError("the shard has no refine codes for some of these ids (not in the index)")
        rows = self._order[pos]
        seg = np.searchsorted(self._starts, rows, side="right") - 1
        return seg.reshape(ids.shape), (rows - self._starts[seg]).reshape(ids.shape)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Decoded (exact for Flat, approximate per the codec otherwise) vectors of ``ids``."""
        seg, rows = self._locate(ids.reshape(-1))
        codes = np.empty((len(rows), self.codec.sa_code_size()), np.uint8)
        for s in np.unique(seg):
            sel = np.flatnonzero(seg == s)
            order = np.argsort(rows[sel])  # sorted reads: sequential pages of a memory-mapped file
            codes[sel[order]] = np.asarray(self._segments[s][1][rows[sel][order]])
        return self.codec.sa_decode(codes) if len(codes) else np.zeros((0, self.codec.d), np.float32)

    def rescore(self, queries: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
        """Scores of candidate ``ids`` (q, k') for each query from the refine codes (-1 ids keep the
        worst score): inner products, or squared L2 distances. Each (query, candidate) pair is
        computed on its own (faiss ``fvec_*_by_idx`` / one row of einsum), so a score never depends
        on which other candidates or shards were in the batch."""
        worst = -np.inf if metric == "ip" else np.inf
        out = np.full(ids.shape, worst, np.float32)
        valid = ids >= 0
        if not valid.any():
            return out
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if not self.flat:
            vec, qv = self.vectors(ids[valid]), q[np.nonzero(valid)[0]]
            other = qv if metric == "ip" else vec - qv  # ip: <v, q>; l2: <v-q, v-q>
            out[valid] = np.einsum("nd,nd->n", other if metric == "l2" else vec, other)
            return out
        seg, rows = self._locate(np.where(valid, ids, self._ids[0]))
        fn = faiss.fvec_inner_products_by_idx if metric == "ip" else faiss.fvec_L2sqr_by_idx
        tmp = np.empty(ids.shape, np.float32)
        for s, (_, codes) in enumerate(self._segments):
            mine = valid & (seg == s)
            if not mine.any():
                continue
            y = codes.view(np.float32)
            idx = np.ascontiguousarray(np.where(mine, rows, -1), dtype=np.int64)
            fn(faiss.swig_ptr(tmp), faiss.swig_ptr(q), faiss.swig_ptr(y), faiss.swig_ptr(idx), q.shape[1],
               ids.shape[0], ids.shape[1])
            out = np.where(mine, tmp, out)
        return out


def codec_entry(out_uri: str, version: int, blob: bytes, codec: str, store: str,
                cfg: StorageConfig | None) -> dict[str, Any]:
    """Store the trained codec in a version; returns index.json's ``refine`` block (k_factor added by the caller)."""
    if store not in STORES:
        raise ValueError(f"refine store must be one of {STORES}, not {store!r}")
    storage.write_bytes(storage.join(V.version_dir(out_uri, version), CODEC_FILE), blob, cfg)
    return {"codec": codec, "file": CODEC_FILE, "sha256": V.sha256(blob), "bytes": len(blob), "store": store}


def read_codec(out_uri: str, version: int, refine: dict[str, Any], cfg: StorageConfig | None) -> bytes:
    data = storage.read_bytes(storage.join(V.version_dir(out_uri, refine.get("home", version)), refine["file"]), cfg)
    if V.sha256(data) != refine["sha256"]:
        raise V.ChecksumError(f"checksum mismatch for the refine codec of version {version}")
    return data


def codes_rel(shard: int, delta: bool = False) -> str:
    """Relative path of a shard's (or its delta's) refine codes."""
    rel = V.shard_files(shard)[0].replace(".faiss", ".refine.npy")
    return rel.replace("shards/", "shards/delta-") if delta else rel

