"""Where a training run's loop runs: Ray Train workers (``train.launcher=ray``, the default: DDP,
restarts, a cluster's GPUs) or this process (``process``: one worker, no Ray). A registry, so the
tasks (classifier, similarity) never branch on the launcher."""
from __future__ import annotations

from typing import Any, Callable

from artextract.config import RayConfig
from artextract.pipelines.ray_env import init_ray
from artextract.train.loop import Launch, fit_in_process


def _ray(spec: Launch, name: str, ray_cfg: RayConfig, datasets: dict[str, Any] | None) -> None:
    from artextract.train import ray_train  # the only ray.train user

    init_ray(ray_cfg, quiet_workers=True)  # Ray Train: its controller is noisy
    ray_train.launch(spec, name, ray_cfg, datasets)


def _process(spec: Launch, name: str, ray_cfg: RayConfig, datasets: dict[str, Any] | None) -> None:
    if datasets:
        raise ValueError(f"{name}: train.launcher=process reads batches locally, not from Ray Data datasets")
    fit_in_process(spec)


LAUNCHERS: dict[str, Callable[[Launch, str, RayConfig, dict[str, Any] | None], None]] = {
    "ray": _ray, "process": _process}


def launch(spec: Launch, name: str, ray_cfg: RayConfig, datasets: dict[str, Any] | None = None) -> None:
    """Run ``spec`` with the launcher its ``run.launcher`` names; raises if training fails."""
    LAUNCHERS[spec.run.launcher](spec, name, ray_cfg, datasets)
