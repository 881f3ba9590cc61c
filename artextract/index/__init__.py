"""Sharded FAISS index: build, versioned atomic publish, search with exact merge, incremental update.

Ray-free: the Ray task entry lives in ``artextract.index.ray_build`` and is imported on demand.
"""
from artextract.index.build import build_index, choose_factory
from artextract.index.lock import LockError
from artextract.index.exact import exact_search, torch_exact_search
from artextract.index.search import IndexReader
from artextract.index.update import update_index
from artextract.index.versions import ChecksumError, current_version, key_id, prune, rollback

__all__ = ["build_index", "choose_factory", "update_index", "IndexReader", "exact_search",
           "torch_exact_search", "rollback", "prune", "current_version", "key_id", "LockError",
           "ChecksumError"]
