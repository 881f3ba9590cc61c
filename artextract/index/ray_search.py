"""Search a published index with one Ray actor per shard: for indexes too large for one process.

The only search module that imports ray. :class:`RayIndexReader` keeps the id map (small) in the
driver and puts every shard in its own actor (``ray.remote(ShardSearcher)``), so shard memory is
spread over the cluster's nodes and queries are answered by all shards at once: one ``ray.get``
over the actors' per-shard top-k, then the same exact :func:`merge_topk` the in-process reader
uses, so both readers return identical ids and scores.

Resources: actors must all be schedulable at once, or the fan-out would wait forever for a shard
that never starts. Each actor therefore asks for a fraction of a CPU (``cpus / (2 * shards)``,
capped at 1; 4 shards on a 2-CPU local Ray take 0.25 each) and, where the cluster has GPUs, a
fraction of a GPU (``gpus / shards``, capped at 1) so every shard gets one when there are enough
and they share otherwise. Actors are named ``artextract-search-<token>-<shard>`` and killed by
:meth:`RayIndexReader.close` (or leaving the ``with`` block).
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
import ray

from artextract.config import StorageConfig
from artextract.index.search import BaseIndexReader, ShardSearcher

log = logging.getLogger(__name__)


def actor_resources(num_shards: int, cluster: dict[str, float]) -> dict[str, float]:
    """Ray resources of one shard actor for a cluster's totals (see the module docstring)."""
    n = max(1, num_shards)
    cpus = min(1.0, float(cluster.get("CPU", 1.0)) / (2 * n))
    res = {"num_cpus": max(0.0001, int(cpus * 10_000) / 10_000)}  # Ray wants multiples of 1e-4
    gpus = float(cluster.get("GPU", 0.0))
    if gpus > 0:
        res["num_gpus"] = max(0.0001, int(min(1.0, gpus / n) * 10_000) / 10_000)
    return res


class RayIndexReader(BaseIndexReader):
    """Same interface as :class:`artextract.index.search.IndexReader` (version, manifest, metric,
    nprobe, ntotal, key_of, search_ids, search, reconstruct), with the shards in Ray actors.

    Needs a Ray connection already made (``artextract.pipelines.ray_env.init_ray``)."""

    def __init__(self, out_uri: str, storage_cfg: StorageConfig | None = None, nprobe: int | None = None,
                 version: int | None = None, verify: bool = True):
        if not ray.is_initialized():
            raise RuntimeError("RayIndexReader needs Ray: call artextract.pipelines.ray_env.init_ray first")
        super().__init__(out_uri, storage_cfg, nprobe, version, verify)
        shards = self.manifest["shards"]
        res = actor_resources(len(shards), ray.cluster_resources())
        device = "auto" if "num_gpus" in res else "cpu"
        token = uuid.uuid4().hex[:8]
        remote = ray.remote(ShardSearcher)
        self.actors: list[Any] = []
        try:
            for i, entry in enumerate(shards):
                self.actors.append(remote.options(name=f"artextract-search-{token}-{i}", **res).remote(
                    out_uri, self.version, entry, storage_cfg, self.nprobe, verify, device))
            # Wait for every shard to load so bad shards (checksum, missing file) fail here, not mid-query.
            counts = self._get([a.info.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise
        self._counts = [c for c, _ in counts]
        self.backends = [b for _, b in counts]
        log.info("search fan-out over %d shard actors (%s each; backends %s)", len(shards), res,
                 sorted(set(self.backends)))

    @staticmethod
    def _get(refs: list[Any]) -> list[Any]:
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # re-raise the shard's own error (checksum, I/O)
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayActorError as exc:
            # The shard's own exception survives only as text: its last line ("ChecksumError: ...").
            lines = [ln.strip().strip("'\"") for ln in str(exc).splitlines() if ln.strip()]
            what = "failed to load" if exc.actor_init_failed else "died"
            raise RuntimeError(f"a search shard actor {what}: {lines[-1] if lines else exc!r}") from None

    @property
    def ntotal(self) -> int:
        """Vectors in the loaded version (as counted by the shard actors)."""
        return int(sum(self._counts))

    def _search_each(self, queries: np.ndarray, k: int, nprobe: int | None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        if not self.actors:
            raise RuntimeError("RayIndexReader is closed")
        q = ray.put(queries)  # one object shared by every actor instead of one copy per call
        live = [a for a, c in zip(self.actors, self._counts) if c]
        return self._get([a.search.remote(q, k, nprobe) for a in live])

    def _reconstruct_shard(self, shard: int, ids: list[int]) -> np.ndarray:
        return self._get([self.actors[shard].reconstruct.remote(ids)])[0]

    def close(self) -> None:
        """Kill the shard actors (idempotent)."""
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception as exc:  # noqa: BLE001 - already dead or Ray gone: nothing left to free
                log.debug("could not kill search actor: %s", exc)
        self.actors = []
