"""The training loop in plain torch: one function every task and every launcher shares.

A :class:`Task` says how to build the model, compute a batch loss and validate; a
:class:`WorkerContext` says who we are (rank/world/device) and where batches come from. The loop owns
DDP wrapping, AMP, AdamW + schedule, clipping, checkpoints (last/best), resume, a time budget and
progress logs. It never imports Ray: ``ray_train.py`` builds the context inside Ray Train workers.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.distributed as dist
from torch import nn

from artextract.core import storage
from artextract.config import OptimConfig, StorageConfig, TrainRunConfig
from artextract.train import checkpoint as ckpt
from artextract.train.param_groups import param_groups, set_backbone_frozen, set_bn_eval
from artextract.train.schedule import build_scheduler

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0


class Task(Protocol):
    """What the loop needs from a training task (classifier, similarity, ...)."""

    name: str

    def build_model(self) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Loss of this rank's batch, normalised by the LOCAL batch size (DDP then averages ranks)."""

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation metrics on rank 0; ``score`` (higher is better) picks the best checkpoint."""

    def meta(self) -> dict[str, Any]:
        """Plain data stored in checkpoints to rebuild the model (config, vocabularies)."""


@dataclass
class WorkerContext:
    """This process's place in the job and its data."""

    rank: int
    world: int
    device: torch.device
    steps_per_epoch: int
    batches: Callable[[int, int], Iterable[dict[str, Any]]]  # (epoch, start_step) -> this rank's batches
    report: Callable[[dict[str, Any]], None] = field(default=lambda m: None)


@dataclass
class Launch:
    """Everything a worker needs to run :func:`fit`, whoever launches it (shipped once to Ray Train
    workers through ``train_loop_config``)."""

    make_task: Callable[[], Task]
    run: TrainRunConfig
    optim: OptimConfig
    out: str
    storage: StorageConfig
    steps_per_epoch: int
    # For the local loader: (task, epoch, start, rank, world) -> batches. None = Ray Data "train" shard.
    local_batches: Callable[[Any, int, int, int, int], Any] | None = None
    shuffle_buffer: int = 0


def fit_in_process(spec: Launch) -> dict[str, Any]:
    """``train.launcher=process``: :func:`fit` as rank 0 of 1 in this process, no Ray (the same loop,
    seeds, checkpoints and resume as one Ray Train worker). Restores torch's thread count after."""
    if spec.local_batches is None:
        raise ValueError("train.launcher=process needs a local batch source (data.loader=local)")
    use_gpu = spec.run.use_gpu and torch.cuda.is_available()
    if spec.run.use_gpu and not use_gpu:
        log.warning("train.use_gpu but torch %s (CUDA %s) sees no GPU: training on the CPU", torch.__version__,
                    torch.version.cuda)
    task, threads = spec.make_task(), torch.get_num_threads()
    ctx = WorkerContext(rank=0, world=1, device=torch.device("cuda" if use_gpu else "cpu"),
                        steps_per_epoch=spec.steps_per_epoch,
                        batches=lambda epoch, start: spec.local_batches(task, epoch, start, 0, 1))
    try:
        return fit(task, ctx, spec.run, spec.optim, spec.out, spec.storage)
    finally:
        torch.set_num_threads(threads)


def _seed_for(seed: int, *parts: int) -> int:
    # Per-step seeds make dropout/augmentation identical after a resume and across world sizes.
    h = seed
    for p in parts:
        h = (h * 1_000_003 + p) % (2**31 - 1)
    return h


def step_seed(seed: int, epoch: int, step: int, rank: int) -> None:
    """Seed torch's global RNG for (epoch, step, rank)."""
    torch.manual_seed(_seed_for(seed, epoch, step, rank))


def _is_dist(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def _agree(flag: bool, world: int) -> bool:
    """True on every rank if rank 0 says so (keeps ranks in lockstep on budget stops)."""
    if not _is_dist(world):
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(t, src=0)
    return bool(t.item())


def _mean_across(value: float, world: int) -> float:
    if not _is_dist(world):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


def _barrier(world: int) -> None:
    if _is_dist(world):
        dist.barrier()


def _cast_inputs(module: nn.Module, args: tuple) -> tuple:
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _prepare(model: nn.Module, ctx: WorkerContext, run: TrainRunConfig, freezes: bool = False) -> nn.Module:
    model = model.to(ctx.device)
    if run.dtype == "float64":
        # Batches are decoded as float32; the hook casts them (training and validation alike).
        model = model.double()
        model.register_forward_pre_hook(_cast_inputs)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        if run.sync_bn and ctx.world > 1 and not run.freeze_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if _is_dist(ctx.world):
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # A frozen warm-up leaves the backbone without gradients for a while: DDP must look for them.
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=freezes)
    return model


def _amp_dtype(ctx: WorkerContext, run: TrainRunConfig) -> torch.dtype | None:
    if not (run.amp and ctx.device.type == "cuda") or run.dtype == "float64":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class Progress:
    """Where the run is; stored in every checkpoint."""

    epoch: int = 0           # epochs fully completed
    step: int = 0            # optimizer steps taken
    batch_in_epoch: int = 0  # batches of ``epoch`` already done (non-zero after a mid-epoch stop)
    best_score: float = -math.inf
    best_epoch: int = -1


def fit(task: Task, ctx: WorkerContext, run: TrainRunConfig, optim: OptimConfig, out: str,
        storage_cfg: StorageConfig | None = None) -> dict[str, Any]:
    """Train ``task`` on this rank; returns the final metrics (all ranks) and writes checkpoints (rank 0)."""
    torch.manual_seed(run.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    if run.torch_threads:
        torch.set_num_threads(run.torch_threads)
    model = _prepare(task.build_model(), ctx, run, freezes=optim.freeze_backbone_epochs > 0)
    inner = getattr(model, "module", model)
    opt = torch.optim.AdamW(param_groups(inner, optim), lr=optim.lr)
    ema = _ema(inner, run.ema_decay)
    total = run.epochs * ctx.steps_per_epoch
    sched = build_scheduler(opt, optim, total, ctx.steps_per_epoch)
    amp = _amp_dtype(ctx, run)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    prog, history = Progress(), []
    last_uri = ckpt.checkpoint_uri(out, "last")
    if run.resume and storage.exists(last_uri, storage_cfg):
        state = ckpt.load(last_uri, storage_cfg, task=task.name)
        # With EMA, state_dict holds the averaged weights and train_state_dict the optimised ones.
        inner.load_state_dict(state.get("train_state_dict", state["state_dict"]))
        if ema is not None:
            ema.module.load_state_dict(state["state_dict"])
            ema.n_averaged.fill_(max(1, state["progress"]["step"]))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        prog, history = Progress(**state["progress"]), list(state["history"])
        if ctx.rank == 0:
            log.info("resumed %s from %s at epoch %d step %d", task.name, last_uri, prog.epoch, prog.step)
    started = time.monotonic()
    metrics: dict[str, Any] = history[-1] if history else {}
    stop = prog.step >= total or (run.max_steps is not None and prog.step >= run.max_steps)
    while prog.epoch < run.epochs and not stop:
        epoch, t_epoch, seen, loss_sum, n_loss = prog.epoch, time.monotonic(), 0, 0.0, 0
        model.train()
        if run.freeze_bn:
            set_bn_eval(model)
        if optim.freeze_backbone_epochs:
            set_backbone_frozen(inner, epoch < optim.freeze_backbone_epochs)
        last_log = time.monotonic()
        for batch in ctx.batches(epoch, prog.batch_in_epoch):
            step_seed(run.seed, epoch, prog.batch_in_epoch, ctx.rank)
            with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
                loss = task.loss(model, batch, ctx.device)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if optim.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update_parameters(inner)
            prog.step += 1
            prog.batch_in_epoch += 1
            loss_sum, n_loss = loss_sum + float(loss.detach()), n_loss + 1
            seen += len(next(iter(batch.values())))
            if ctx.rank == 0 and time.monotonic() - last_log > LOG_EVERY_S:
                last_log = time.monotonic()
                rate = seen * ctx.world / (last_log - t_epoch)
                log.info("%s epoch %d/%d step %d/%d loss %.4f lr %.2e %.1f img/s", task.name, epoch + 1,
                         run.epochs, prog.batch_in_epoch, ctx.steps_per_epoch, loss_sum / n_loss,
                         sched.get_last_lr()[0], rate)
            over_budget = run.time_budget_s is not None and time.monotonic() - started > run.time_budget_s
            if _agree(over_budget or (run.max_steps is not None and prog.step >= run.max_steps), ctx.world):
                stop = True
                break
        finished_epoch = prog.batch_in_epoch >= ctx.steps_per_epoch
        if finished_epoch:
            prog.epoch, prog.batch_in_epoch = epoch + 1, 0
        metrics = {"epoch": epoch + 1, "epoch_complete": finished_epoch, "step": prog.step,
                   "train_loss": _mean_across(loss_sum / max(n_loss, 1), ctx.world),
                   "lr": sched.get_last_lr()[0], "seconds": round(time.monotonic() - t_epoch, 3),
                   "images_per_s": round(seen * ctx.world / max(time.monotonic() - t_epoch, 1e-9), 2)}
        validate = stop or prog.epoch >= run.epochs or (finished_epoch and prog.epoch % run.eval_every == 0)
        if validate and ctx.rank == 0:
            evaluated = inner if ema is None else ema.module
            metrics.update({f"val_{k}": v for k, v in task.validate(evaluated, ctx.device).items()})
        if ctx.rank == 0:
            history.append(metrics)
            _save(task, inner, ema, opt, sched, scaler, prog, history, metrics, out, storage_cfg)
            log.info("%s epoch %d: %s", task.name, epoch + 1, json.dumps(
                {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
        _barrier(ctx.world)
        ctx.report(metrics)
        _maybe_inject_fault(run, epoch + 1, out, storage_cfg, ctx.rank, ctx.world)
    return {"progress": vars(prog), "final": metrics, "history": history}


def _ema(model: nn.Module, decay: float | None) -> torch.optim.swa_utils.AveragedModel | None:
    if decay is None:
        return None

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        # Warm-up (as in TF's ExponentialMovingAverage with num_updates): early on the average would
        # be mostly the initial weights, so the effective decay grows from 0.1 towards ``decay``.
        if not averaged[0].is_floating_point():  # tensors come grouped by dtype; BN's step counters
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    # use_buffers: BatchNorm statistics are averaged with the weights, so the EMA model is usable as is.
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _save(task: Task, model: nn.Module, ema: Any, opt: torch.optim.Optimizer, sched: Any, scaler: Any, prog: Progress,
          history: list[dict], metrics: dict, out: str, storage_cfg: StorageConfig | None) -> None:
    score = metrics.get("val_score")
    best = score is not None and score > prog.best_score
    if best:
        prog.best_score, prog.best_epoch = float(score), int(metrics["epoch"])
    # state_dict is what evaluation/embedding load: the averaged weights when EMA is on.
    payload = {"task": task.name, "meta": task.meta(),
               "state_dict": ckpt.cpu_state(model if ema is None else ema.module),
               **({} if ema is None else {"train_state_dict": ckpt.cpu_state(model)}),
               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
               "progress": vars(prog), "history": history}
    # best first: a crash between the two leaves last.pt older, never a best.pt missing its epoch.
    if best:
        ckpt.save(ckpt.checkpoint_uri(out, "best"), payload, storage_cfg)
    ckpt.save(ckpt.checkpoint_uri(out, "last"), payload, storage_cfg)
    storage.write_text(storage.join(out, "history.jsonl"),
                       "".join(json.dumps(h, default=float) + "\n" for h in history), storage_cfg)


def _maybe_inject_fault(run: TrainRunConfig, epoch: int, out: str, storage_cfg: StorageConfig | None,
                        rank: int, world: int) -> None:
    # Chaos hook: crash once after checkpointing epoch k; the marker stops the retried attempt crashing too.
    if run.fault_after_epoch != epoch:
        return
    marker = storage.join(out, "checkpoints", f"fault-injected-epoch{epoch}")
    if storage.exists(marker, storage_cfg):
        return
    _barrier(world)
    if rank == 0:
        storage.write_text(marker, "injected\n", storage_cfg)
    _barrier(world)
    raise RuntimeError(f"injected fault after epoch {epoch} (train.fault_after_epoch)")
