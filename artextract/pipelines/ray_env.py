"""Attach to Ray: the given address (or RAY_ADDRESS, as inside a submitted job), else a local Ray."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from typing import Iterator

from artextract import console
from artextract.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig, quiet_workers: bool = False):
    """Initialise Ray once per process and return the ray module.

    ``quiet_workers`` (training) gives a local Ray the ``worker_process_setup_hook`` that configures
    every worker's loggers like the driver's: Ray Train's controller otherwise warns every second
    in its log file. Other jobs go without it: Ray cannot hand a job with a runtime_env the
    workers it prestarted at start-up, so every actor and task would wait for a fresh process
    (~1 s of a 128-image preprocess on 2 cores, docs/benchmarks.md). A worker's root logger is at
    WARNING either way, so the AWS SDK's DEBUG lines (credentials) are never emitted there.
    """
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    console.quiet_ray()
    # Workers' output (Ray's internal warnings in its controller and data actors) stays in Ray's log
    # files unless -v: our console is the driver's progress bars and summary.
    kwargs = dict(ignore_reinit_error=True, log_to_driver=console.verbose() or bool(address),
                  configure_logging=False)
    global _attached
    _attached = bool(address)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A single-node local Ray is never drained (spot reclaim): Ray Train's preemption watcher,
        # one more actor process per training run, has nothing to watch there.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # The Train controller polls its workers every 2 s by default, so a finished (or crashed)
        # worker group is noticed ~1 s late on average; on one node a poll is a local call.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        # A submitted job brings its own runtime_env, so the hook is only ever set for a local Ray.
        hook = {"runtime_env": {"worker_process_setup_hook": "artextract.console.worker_setup"}} if quiet_workers else {}
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, **hook, **kwargs)
    if not console.verbose():
        # One progress bar per stage is ours (artextract.console.progress); Ray Data's own would
        # print a block of operator lines every few seconds in a non-interactive console.
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    log.info("ray: %s", ", ".join(f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items())
                                  if k in ("CPU", "GPU")))
    return ray


def ray_running() -> bool:
    """Whether this process is connected to a Ray (without importing ray when it is not)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def stop_local_ray(was_running: bool) -> None:
    """Stop the local Ray a command started (``was_running``: whether one was up before it).

    Called at the end of a command rather than left to Ray's atexit hook, which first sleeps 0.5 s
    so that workers' log lines reach the console; they only do with ``-v`` or on a cluster, where
    the hook is left to run. A Ray the caller had started (a test session, a notebook) stays up.
    """
    if was_running or not ray_running() or console.verbose() or _attached:
        return
    try:
        sys.modules["ray"].shutdown()
    except Exception as exc:  # noqa: BLE001 - the command's result stands; Ray's atexit hook retries
        log.warning("stopping the local Ray failed: %s", exc)


_attached = False  # init_ray connected to an existing cluster (ray.address / RAY_ADDRESS)


def cluster_counts(ray) -> tuple[float, float]:
    """(CPUs, GPUs) the cluster has."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def gpu_pool(declared: int, gpus: float, per_actor: float) -> tuple[int, int]:
    """(smallest, largest) GPU actor pool: from 1 (what a cold cluster must launch first) to the
    declared size, else to as many as the GPUs the cluster has now hold."""
    return 1, declared or max(1, int(gpus // per_actor))


def actor_device(device: str, num_gpus: float) -> str:
    """The device a stage is built with: with a GPU declared, ``auto`` stays the actor's own
    decision (CUDA when torch sees the GPU Ray gave it, else the CPU, said so); without one, auto is
    the CPU even on a node whose GPU Ray gave to another actor."""
    return "cpu" if device == "auto" and num_gpus == 0 else device


class ResourcesUnavailable(RuntimeError):
    """A job declared resources (a GPU per actor, say) that no node has and none will join."""


def _fits(ray, bundle: dict[str, float]) -> bool:
    return any(n["Alive"] and all(n["Resources"].get(k, 0) >= v for k, v in bundle.items()) for n in ray.nodes())


def _autoscaler_limits(ray) -> tuple[bool, dict[str, float] | None]:
    """(an autoscaler is running, the most of each resource its node types can ever add or None)."""
    try:  # private API, written by autoscaler v2 and KubeRay; v1 publishes only its status
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - absent or moved in this Ray version
        limits = None
    try:
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        status = json.loads(_internal_kv_get(DEBUG_AUTOSCALING_STATUS) or b"{}")
    except Exception:  # noqa: BLE001
        status = {}
    # Every Ray runs a monitor that publishes this status. Without an autoscaling config (a local
    # ray.init, a plain `ray start --head`) it reports no autoscaler, or a read-only one whose node
    # types are the nodes themselves ("node_<id>"); a launcher or KubeRay cluster names its types.
    report = status.get("autoscaler_report") or {}
    types = set(report.get("active_nodes") or {}) | set((report.get("node_type_mapping") or {}).values())
    can_add = any(not re.fullmatch(r"node_[0-9a-f]+", t) for t in types)
    return bool(limits) or can_add, limits


def _describe(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v / 2**30:g} GiB" if k == "memory" else f"{k}: {v:g}"
                           for k, v in bundle.items()) + "}"


@contextlib.contextmanager
def capacity(ray, cfg: RayConfig, bundle: dict[str, float], count: int, what: str) -> Iterator[None]:
    """Hold until some node can host one ``bundle`` (one actor or worker of ``what``), then run the body.

    Ray would otherwise queue an actor no node fits forever: on a cluster without an autoscaler, or
    whose node types have no GPU, the job fails at once naming the request; on an autoscaling
    cluster the autoscaler is asked for ``count`` such bundles (all the pool may use, so the nodes
    launch together), and the job fails if none has joined after ``cfg.resource_wait_s``. The
    request is withdrawn when the body ends, so the nodes can scale down again.
    """
    if _fits(ray, bundle):
        yield
        return
    have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    where = "this local Ray" if not (cfg.address or os.environ.get("RAY_ADDRESS")) else "the cluster"
    advice = ("declare less (configs without _gpu ask for CPUs only) or run on a cluster whose node types "
              "provide it (cluster/aws.yaml, cluster/gcp.yaml, cluster/kuberay/raycluster.yaml)")
    autoscaler, limits = _autoscaler_limits(ray)
    short = {k: v for k, v in bundle.items() if limits is not None and limits.get(k, 0) < v}
    if not autoscaler or short:
        reason = (f"its node types can never add {_describe(short)}" if short else
                  "no node has that and no autoscaler can add one")
        raise ResourcesUnavailable(f"{what}: each asks for {_describe(bundle)} but {where} has "
                                   f"{_describe(have)} and {reason}: {advice}")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[bundle] * max(1, count))
    try:
        t0, said = time.monotonic(), 0.0
        log.info("%s: asked the autoscaler for %d x %s; waiting up to %g s for a node", what, count,
                 _describe(bundle), cfg.resource_wait_s)
        while not _fits(ray, bundle):
            waited = time.monotonic() - t0
            if waited > cfg.resource_wait_s:
                raise ResourcesUnavailable(
                    f"{what}: each asks for {_describe(bundle)}; the autoscaler was asked but no node that fits "
                    f"joined within ray.resource_wait_s={cfg.resource_wait_s:g} s (check `ray status`, the node "
                    f"type's max_workers and the cloud's GPU quota) or {advice}")
            if waited - said >= 30:
                said = waited
                log.info("%s: still waiting for a node with %s (%.0f s)", what, _describe(bundle), waited)
            time.sleep(1.0)
        log.info("%s: a node with %s joined after %.0f s", what, _describe(bundle), time.monotonic() - t0)
        yield
    finally:
        request_resources(bundles=[])
