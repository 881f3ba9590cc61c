"""Attach to Ray: the given address (or RAY_ADDRESS, as inside a submitted job), else a local Ray."""
from __future__ import annotations

import logging
import os

from artextract.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig):
    """Initialise Ray once per process and return the ray module."""
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(ignore_reinit_error=True, log_to_driver=True, configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, **kwargs)
    log.info("ray resources: %s", ray.cluster_resources())
    return ray


def cluster_counts(ray) -> tuple[float, float]:
    """(CPUs, GPUs) the cluster has."""
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))
