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
and they share otherwise. Memory is the shard's own need, from index.json: ``memory_factor`` x its
bytes in RAM (base + delta + refine codes held in memory; deserialising holds the file and the index
at once), so Ray places shards only on nodes with room for them, and ``SPREAD`` scheduling puts
them on different nodes first. A shard whose node dies is restarted elsewhere by Ray
(``max_restarts``) and reloads its files; a query that met a dead shard is retried (``retries``
times, counted in :attr:`RayIndexReader.stats`). Actors are named
``artextract-search-<token>-<shard>`` and killed by :meth:`RayIndexReader.close`.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import numpy as np
import ray

from artextract.config import StorageConfig
from artextract.index.search import BaseIndexReader
from artextract.index.shard import ShardSearcher

log = logging.getLogger(__name__)


def shard_ram_bytes(entry: dict[str, Any], refine_store: str | None) -> int:
    """Bytes a shard holds in RAM once loaded: base + delta index, and refine codes unless on disk."""
    total = int(entry.get("bytes", 0)) + int((entry.get("delta") or {}).get("bytes", 0))
    if refine_store == "memory":
        total += int((entry.get("refine") or {}).get("bytes", 0))
        total += int(((entry.get("delta") or {}).get("refine") or {}).get("bytes", 0))
    return total


def actor_resources(num_shards: int, cluster: dict[str, float], ram_bytes: int = 0,
                    memory_factor: float = 2.0) -> dict[str, float]:
    """Ray resources of one shard actor for a cluster's totals and its RAM (module docstring)."""
    n = max(1, num_shards)
    cpus = min(1.0, float(cluster.get("CPU", 1.0)) / (2 * n))
    res = {"num_cpus": max(0.0001, int(cpus * 10_000) / 10_000)}  # Ray wants multiples of 1e-4
    gpus = float(cluster.get("GPU", 0.0))
    if gpus > 0:
        res["num_gpus"] = max(0.0001, int(min(1.0, gpus / n) * 10_000) / 10_000)
    if ram_bytes > 0:
        res["memory"] = int(math.ceil(ram_bytes * memory_factor))
    return res


def _actor_error(exc: "ray.exceptions.RayActorError") -> RuntimeError:
    # The shard's own exception survives only as text: its last line ("ChecksumError: ...").
    lines = [ln.strip().strip("'\"") for ln in str(exc).splitlines() if ln.strip()]
    what = "failed to load" if getattr(exc, "actor_init_failed", False) else "died"
    return RuntimeError(f"a search shard actor {what}: {lines[-1] if lines else exc!r}")


class RayIndexReader(BaseIndexReader):
    """Same interface as :class:`artextract.index.search.IndexReader` (version, manifest, metric,
    nprobe, ntotal, key_of, search_ids, search, reconstruct), with the shards in Ray actors.

    Needs a Ray connection already made (``artextract.pipelines.ray_env.init_ray``)."""

    def __init__(self, out_uri: str, storage_cfg: StorageConfig | None = None, nprobe: int | None = None,
                 version: int | None = None, verify: bool = True, k_factor: int | None = None,
                 store: str | None = None, cache_dir: str | None = None, memory_factor: float = 2.0,
                 max_restarts: int = 3, retries: int = 2, restart_wait_s: float = 120.0,
                 place_timeout_s: float = 900.0):
        if not ray.is_initialized():
            raise RuntimeError("RayIndexReader needs Ray: call artextract.pipelines.ray_env.init_ray first")
        super().__init__(out_uri, storage_cfg, nprobe, version, verify, k_factor, store, cache_dir)
        shards = self.manifest["shards"]
        cluster = ray.cluster_resources()
        refine_store = self.store or (self.refine or {}).get("store")
        self.retries, self.restart_wait_s = retries, restart_wait_s
        self.stats = {"queries": 0, "retried": 0, "failed": 0}
        self._lost: str | None = None  # set once a shard did not come back: later queries fail at once
        device = "auto" if float(cluster.get("GPU", 0.0)) > 0 else "cpu"
        token = uuid.uuid4().hex[:8]
        remote = ray.remote(ShardSearcher)
        self.actors: list[Any] = []
        self.resources: list[dict[str, float]] = []
        try:
            for i, entry in enumerate(shards):
                res = actor_resources(len(shards), cluster, shard_ram_bytes(entry, refine_store), memory_factor)
                self.resources.append(res)
                self.actors.append(remote.options(
                    name=f"artextract-search-{token}-{i}", scheduling_strategy="SPREAD",
                    max_restarts=max_restarts, **res).remote(*self._shard_args(), entry, **self._shard_kwargs(),
                                                             device=device))
            # Wait for every shard to load so bad shards (checksum, missing file) fail here, not mid-query.
            counts = self._get([a.info.remote() for a in self.actors], place_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            nodes = sorted(n["Resources"].get("memory", 0) / 2**30 for n in ray.nodes() if n.get("Alive"))
            raise RuntimeError(f"search shard actors not placed within {place_timeout_s:.0f} s: the largest asks "
                               f"{max(self.resources, key=lambda r: r.get('memory', 0))} (memory in bytes = "
                               f"shard_memory_factor x its bytes in RAM); node memory GiB: "
                               f"{[round(m, 1) for m in nodes]}. Add nodes, use more shards, or keep the "
                               "re-ranking codes on disk (refine_store=disk)") from None
        except BaseException:
            self.close()
            raise
        self._counts = [c for c, _ in counts]
        self.backends = [b for _, b in counts]
        log.info("search fan-out over %d shard actors (%s; backends %s)", len(shards), self.resources[:1],
                 sorted(set(self.backends)))

    @staticmethod
    def _get(refs: list[Any], timeout: float | None = None) -> list[Any]:
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.RayTaskError as exc:  # re-raise the shard's own error (checksum, I/O)
            raise exc.as_instanceof_cause() from None
        except ray.exceptions.RayActorError as exc:
            raise _actor_error(exc) from None

    @property
    def ntotal(self) -> int:
        """Vectors in the loaded version (as counted by the shard actors)."""
        return int(sum(self._counts))

    def _search_each(self, queries: np.ndarray, k: int, nprobe: int | None, k_factor: int | None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        if not self.actors:
            raise RuntimeError("RayIndexReader is closed")
        if self._lost:
            self.stats["failed"] += len(queries)
            raise RuntimeError(self._lost)
        q = ray.put(queries)  # one object shared by every actor instead of one copy per call
        live = [a for a, c in zip(self.actors, self._counts) if c]
        self.stats["queries"] += len(queries)
        for attempt in range(self.retries + 1):
            try:
                return ray.get([a.search.remote(q, k, nprobe, k_factor) for a in live])
            except ray.exceptions.RayTaskError as exc:  # the shard's own error: not a lost node
                raise exc.as_instanceof_cause() from None
            except ray.exceptions.RayActorError as exc:
                if attempt == self.retries or getattr(exc, "actor_init_failed", False):
                    self.stats["failed"] += len(queries)
                    raise _actor_error(exc) from None
                log.warning("a search shard died (%s); retrying once it restarts", type(exc).__name__)
                if not self._wait_restarted(live):
                    self.stats["failed"] += len(queries)
                    self._lost = (f"a search shard did not come back within {self.restart_wait_s:.0f} s "
                                  f"(restarts used up, or no node with room): reopen the index")
                    raise RuntimeError(self._lost) from None
                self.stats["retried"] += len(queries)
        raise AssertionError("unreachable")

    def _wait_restarted(self, actors: list[Any]) -> bool:
        """Block until every actor answers again (Ray restarts it on a node with room), at most
        ``restart_wait_s``; False when one did not come back (permanently dead: restarts used up)."""
        deadline = time.monotonic() + self.restart_wait_s
        while True:
            try:
                ray.get([a.info.remote() for a in actors], timeout=max(1.0, deadline - time.monotonic()))
                return True
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # still restarting (or dead for good: the deadline decides)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

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
