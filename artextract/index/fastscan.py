"""PQ fast-scan (``PQ..x4fs``): stored as plain 4-bit PQ, converted to fast-scan when a shard loads.

Why: faiss 1.15's fast-scan indexes keep their codes in ``BlockInvertedLists``, whose ``merge_from``
copies codes with the generic code size (-1 there) and corrupts the heap -- and merging the delta
into the base is how every shard with a delta loads (segments.py). A 4-bit ``IndexIVFPQ`` holds the
very same codes in ordinary lists (add, remove_ids and merge_from work), and
``IndexIVFPQFastScan(ivfpq)`` packs them into fast-scan blocks, so searches are those of an index
built as fast-scan. The shard files therefore hold ``IVF..,PQ..x4np`` and index.json records
``fast_scan: true``.
"""
from __future__ import annotations

import re

import faiss

_FS = re.compile(r"\bPQ(\d+)x4fs\b")


def stored_factory(factory: str) -> tuple[str, bool]:
    """(factory the shard files are built with, converted to fast-scan on load?)."""
    stored, n = _FS.subn(r"PQ\1x4np", factory)
    return stored, n > 0


def to_fast_scan(index: faiss.Index) -> faiss.Index:
    """The fast-scan equivalent of a loaded 4-bit PQ index (IVF or flat, under OPQ / IDMap2 wrappers)."""
    w = faiss.downcast_index(index)  # a second, non-owning handle: the caller's keeps the object alive
    if isinstance(w, (faiss.IndexPreTransform, faiss.IndexIDMap2)):  # OPQ / id-map wrappers: swap inside
        old = faiss.downcast_index(w.index)
        new = to_fast_scan(old)
        w.own_fields = False  # the wrapper must not free ``old`` while it is swapped out
        old.this.own(True)  # Python frees the 4-bit index (and its codes) once ``old`` goes
        new.this.disown()  # the wrapper owns the fast-scan index from here on
        w.index = new
        w.own_fields = True
        return index
    index = w
    if isinstance(index, faiss.IndexIVFPQ):
        fs = faiss.IndexIVFPQFastScan(index)
        fs.nprobe = index.nprobe
        # the coarse quantizer is shared, not copied: hand its ownership over so the 4-bit index
        # (and its codes, now duplicated in fast-scan blocks) can be freed
        index.own_fields, fs.own_fields = False, True
        # faiss's Python constructor keeps ``index`` alive inside ``fs`` (referenced_objects): drop it,
        # or every shard would hold its codes twice; orig_invlists would dangle (debug search modes only)
        fs.referenced_objects = []
        fs.orig_invlists = None
        return fs
    if isinstance(index, faiss.IndexPQ):
        fs = faiss.IndexPQFastScan(index)  # copies the codebook and packs the codes
        fs.referenced_objects = []
        return fs
    raise ValueError(f"no fast-scan form of {type(index).__name__}")

