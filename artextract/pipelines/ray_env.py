"""Attach to Ray: the given address (or RAY_ADDRESS, as inside a submitted job), else a local Ray."""
from __future__ import annotations

import logging
import os

from artextract import console
from artextract.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig):
    """Initialise Ray once per process and return the ray module."""
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    console.quiet_ray()
    # Workers' output (Ray's internal warnings in its controller and data actors) stays in Ray's log
    # files unless -v: our console is the driver's progress bars and summary.
    kwargs = dict(ignore_reinit_error=True, log_to_driver=console.verbose() or bool(address),
                  configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A single-node local Ray is never drained (spot reclaim): Ray Train's preemption watcher,
        # one more actor process per training run, has nothing to watch there.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # The Train controller polls its workers every 2 s by default, so a finished (or crashed)
        # worker group is noticed ~1 s late on average; on one node a poll is a local call.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        # Workers' log files as readable as the driver's (Ray's internal noise out unless -v); a
        # submitted job brings its own runtime_env, so the hook is only set for a local Ray.
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": "artextract.console.worker_setup"}, **kwargs)
    if not console.verbose():
        # One progress bar per stage is ours (artextract.console.progress); Ray Data's own would
        # print a block of operator lines every few seconds in a non-interactive console.
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    log.info("ray: %s", ", ".join(f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items())
                                  if k in ("CPU", "GPU")))
    return ray


def cluster_counts(ray) -> tuple[float, float]:
    """(CPUs, GPUs) the cluster has."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))
