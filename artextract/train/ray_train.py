"""Ray Train launcher: the only module that imports ``ray.train``.

``launch`` runs :func:`artextract.train.loop.fit` in N Ray Train workers (TorchTrainer: gloo on CPU,
NCCL on GPU). Data reaches workers either as a Ray Data dataset (streamed, split equally across
workers) or through a task-provided deterministic local source. Checkpoints are written by the loop
to the run's own storage (local or S3), so a restarted worker group (FailureConfig) and a rerun of
the job both resume from ``<out>/checkpoints/last.pt``.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
from typing import Any

import ray
import ray.train
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from artextract import console

from artextract.core import storage
from artextract.config import RayConfig, Resources, StorageConfig
from artextract.pipelines.ray_env import capacity
from artextract.train.loop import Launch, WorkerContext, fit

log = logging.getLogger(__name__)


def _worker(config: dict[str, Any]) -> None:
    spec: Launch = config["launch"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if spec.run.use_gpu and not torch.cuda.is_available():
        log.warning("rank %d: given GPU %s but torch %s (CUDA %s) sees none: training on the CPU", rank,
                    os.environ.get("CUDA_VISIBLE_DEVICES", ""), torch.__version__, torch.version.cuda)
    device = ray.train.torch.get_device() if spec.run.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    task = spec.make_task()
    if spec.local_batches is None:
        shard = ray.train.get_dataset_shard("train")
        per = spec.run.batch_size // world

        def batches(epoch: int, start: int):
            it = shard.iter_torch_batches(batch_size=per, drop_last=True,
                                          local_shuffle_buffer_size=spec.shuffle_buffer or None,
                                          local_shuffle_seed=spec.run.seed + epoch if spec.shuffle_buffer else None)
            # Equal split + drop_last gives every rank the same step count; stop at the schedule's.
            return itertools.islice(it, start, spec.steps_per_epoch)
    else:
        def batches(epoch: int, start: int):
            return spec.local_batches(task, epoch, start, rank, world)

    wctx = WorkerContext(rank=rank, world=world, device=device, steps_per_epoch=spec.steps_per_epoch,
                         batches=batches, report=lambda m: ray.train.report(
                             {k: v for k, v in m.items() if isinstance(v, (int, float, bool, str))}))
    fit(task, wctx, spec.run, spec.optim, spec.out, spec.storage)


def _run_config(name: str, out: str, cfg: StorageConfig, max_failures: int) -> RunConfig:
    # Ray keeps its own run bookkeeping beside our outputs, on the same (shared) storage.
    loc = storage.filesystem_for(storage.join(out, "_ray"), cfg)
    return RunConfig(name=name, storage_path=loc.path, storage_filesystem=loc.fs,
                     failure_config=FailureConfig(max_failures=max_failures))


def launch(spec: Launch, name: str, ray_cfg: RayConfig, datasets: dict[str, Any] | None = None) -> None:
    """Run training with ``spec.run.workers`` Ray Train workers; raises if the run fails for good."""
    run = spec.run
    if run.batch_size % run.workers:
        raise ValueError(f"train.batch_size {run.batch_size} must be divisible by train.workers {run.workers}")
    # Declared, not detected: the request is what makes an autoscaling cluster launch GPU nodes.
    resources = Resources(num_cpus=run.cpus_per_worker, num_gpus=1 if run.use_gpu else 0,
                          memory_gb=run.memory_gb_per_worker)
    per_worker = resources.bundle()
    trainer = TorchTrainer(
        _worker, train_loop_config={"launch": spec},
        torch_config=TorchConfig(backend=None if run.backend == "auto" else run.backend),
        scaling_config=ScalingConfig(num_workers=run.workers, use_gpu=run.use_gpu, resources_per_worker=per_worker),
        run_config=_run_config(name, spec.out, spec.storage, run.max_failures),
        datasets=datasets or {})
    log.info("training %s on %d %s worker(s), global batch %d", name, run.workers,
             "GPU" if run.use_gpu else "CPU", run.batch_size)
    with capacity(ray, ray_cfg, per_worker, run.workers, f"{name} workers"), _epoch_progress(spec, name):
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")


@contextlib.contextmanager
def _epoch_progress(spec: Launch, name: str, every_s: float = 2.0):
    """A driver-side progress bar over epochs, fed by the ``history.jsonl`` rank 0 writes after
    each epoch: the workers' own console stays in their Ray log files."""
    uri = storage.join(spec.out, "history.jsonl")
    stop = threading.Event()
    bar = console.progress(total=spec.run.epochs, desc=name.replace("_", " "), unit="epoch")

    def poll() -> None:
        while True:
            try:
                rows = [json.loads(x) for x in storage.read_bytes(uri, spec.storage).decode().splitlines() if x.strip()]
            except (FileNotFoundError, OSError, ValueError):
                rows = []
            if rows:
                last = rows[-1]
                bar.set_postfix({k: round(v, 4) for k, v in last.items()
                                 if k in ("train_loss", "val_score") and isinstance(v, float)}, refresh=False)
                bar.update(min(len(rows), spec.run.epochs) - bar.n)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=poll, name="epoch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        bar.close()
