"""Ray entry for index builds: each shard's add + serialize runs as one Ray task.

Kept apart from build.py so that the index library itself never imports Ray.
"""
from __future__ import annotations

import numpy as np
import ray

from artextract.index.segments import build_shard


@ray.remote(num_cpus=1)
def _build_shard_task(template: bytes, vectors: np.ndarray, ids: np.ndarray) -> bytes:
    return build_shard(template, vectors, ids)


def build_shards_ray(template: bytes, parts: list[tuple[np.ndarray, np.ndarray]]) -> list[bytes]:
    """Build every shard as a Ray task from the shared trained ``template`` (put once in the object
    store); ``parts`` holds (vectors (n_i,d) float32, ids (n_i,) int64) per shard; returns the
    serialized shards in order. Starts a local Ray when none is running."""
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False)
    template_ref = ray.put(template)
    refs = [_build_shard_task.remote(template_ref, vec, ids) for vec, ids in parts]
    return ray.get(refs)
