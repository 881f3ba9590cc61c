"""``artextract train classifier``: the CNN-RNN style/genre/artist classifier, trained with Ray Train.

The driver reads only keys and labels, fixes the split (``splits.parquet``) and the class
vocabularies, then launches N workers; images stream to them through Ray Data (or, with
``data.loader=local``, each worker slices every global batch deterministically).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from artextract.core import storage
from artextract.config import ClassifierTrainConfig
from artextract.data.mix import mix_batch
from artextract.losses.multitask import CLASS_WEIGHT_POWER, MultiTaskLoss, balanced_weights
from artextract.models.crnn import CRNNClassifier
from artextract.core.runinfo import JobRun
from artextract.data import loaders as tdata
from artextract.train.checkpoint import checkpoint_uri
from artextract.pipelines.ray_env import init_ray
from artextract.train import checkpoint as ckpt
from artextract.train.launch import launch
from artextract.train.loop import Launch

log = logging.getLogger(__name__)
TASK = "classifier"


@dataclass
class Prepared:
    """What the driver decided: key tables per split, vocabularies and label statistics."""

    tables: dict[str, pa.Table]       # split -> label_table rows
    vocab: dict[str, list[str]]
    label_fraction: dict[str, float]
    class_weights: dict[str, list[float] | None]


def prepare(cfg: ClassifierTrainConfig) -> Prepared:
    """Load keys + labels, split, build vocabularies; writes ``splits.parquet`` into the run."""
    d = cfg.data
    extra = (d.split_column,) if d.split_column else ()
    keys = tdata.load_rows(d.input, d.tasks, cfg.storage, extra=extra)
    if d.limit:
        keys = keys.slice(0, d.limit)
    split = tdata.assign_splits(keys, d)
    vocab = tdata.build_vocab(keys, d.tasks, split == "train", d.min_class_count)
    labels = tdata.encode_labels(keys, vocab)
    train = split == "train"
    fraction = {t: float((y[train] >= 0).mean()) for t, y in labels.items()}
    power = CLASS_WEIGHT_POWER[cfg.loss.class_weights]
    weights = {t: (balanced_weights(y[train], len(vocab[t]), power).tolist() if power is not None else None)
               for t, y in labels.items()}
    storage.write_parquet(storage.join(cfg.out, "splits.parquet"), pa.table({
        "image_id": keys["image_id"], "split": pa.array(split.astype(str)),
        **{t: pa.array(y) for t, y in labels.items()}}), cfg.storage)
    tables = {s: tdata.label_table(keys, labels, split == s) for s in tdata.SPLITS}
    return Prepared(tables, vocab, fraction, weights)


class ClassifierTask:
    """The loop's view of the classifier: model, masked multi-task loss, macro-F1 validation."""

    name = TASK

    def __init__(self, cfg: ClassifierTrainConfig, prep: Prepared):
        self.cfg, self.prep = cfg, prep
        self.tasks = list(cfg.data.tasks)
        self.loss_fn = MultiTaskLoss(
            self.tasks, prep.label_fraction,
            {t: torch.tensor(w) if w else None for t, w in prep.class_weights.items()},
            cfg.loss.task_weights, cfg.loss.label_smoothing)
        self._val: tdata.LocalSource | None = None
        self._train: tdata.LocalSource | None = None

    def build_model(self) -> nn.Module:
        model = CRNNClassifier.from_config(self.cfg.model, {t: len(c) for t, c in self.prep.vocab.items()},
                                           self.cfg.storage)
        # channels_last speeds up oneDNN convolutions on CPU too (per-epoch rate at 128 px: 14-26 ->
        # 25-31 img/s). Only here: the similarity model's 1-vs-2-worker weights drift further apart
        # under it (batch-size-dependent summation order), past its equivalence test's tolerance.
        return model.to(memory_format=torch.channels_last)

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x = torch.as_tensor(batch["image"]).to(device, non_blocking=True).contiguous(
            memory_format=torch.channels_last)
        ys = {t: torch.as_tensor(batch[f"y_{t}"]).to(device) for t in self.tasks}
        d = self.cfg.data
        mixed = mix_batch(x, d.mixup, d.cutmix, d.mix_prob)
        out, loss_fn = model(mixed.x), self.loss_fn.to(device)
        total, _ = loss_fn(out, ys)
        if mixed.perm is not None:
            partner, _ = loss_fn(out, {t: y[mixed.perm] for t, y in ys.items()})
            total = mixed.lam * total + (1.0 - mixed.lam) * partner
        return total

    def batches(self, epoch: int, start: int, rank: int, world: int):
        """Deterministic local batches (data.loader=local)."""
        if self._train is None:
            self._train = tdata.LocalSource(self.prep.tables["train"], self.batch_maker(True),
                                            self.cfg.train.batch_size, self.cfg.data.seed)
        return self._train.batches(epoch, rank, world, start)

    def batch_maker(self, train: bool) -> tdata.LabelledBatches:
        d = self.cfg.data
        size = d.image_size if train else (d.eval_size or d.image_size)
        return tdata.LabelledBatches(tuple(self.tasks), size, train and d.augment, self.cfg.storage, d.crop_scale)

    @torch.no_grad()
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        # Imported here: rank 0 validates, while the Ray Train controller and every worker import
        # this module (sklearn.metrics adds ~1.3 s to each process start).
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

        val = self.prep.tables["val"]
        if len(val) == 0:
            return {}
        if self._val is None:
            self._val = tdata.LocalSource(val, self.batch_maker(False), min(64, len(val)), 0, shuffle=False)
        was = model.training
        model.eval()
        preds: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        truth: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        for batch in self._val.in_order(64):
            out = model(torch.as_tensor(batch["image"]).to(device).contiguous(memory_format=torch.channels_last))
            for t in self.tasks:
                preds[t].append(out[t].argmax(1).cpu().numpy())
                truth[t].append(batch[f"y_{t}"])
        model.train(was)
        metrics, f1s = {}, []
        for t in self.tasks:
            y, p = np.concatenate(truth[t]), np.concatenate(preds[t])
            known = y >= 0
            if not known.any():
                continue
            with warnings.catch_warnings():  # small val splits predict classes they do not contain,
                # or hold one class that every prediction is (balanced accuracy is then still right)
                warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
                warnings.filterwarnings("ignore", message="A single label was found")
                metrics[f"{t}_accuracy"] = float(accuracy_score(y[known], p[known]))
                metrics[f"{t}_balanced_accuracy"] = float(balanced_accuracy_score(y[known], p[known]))
                metrics[f"{t}_macro_f1"] = float(f1_score(y[known], p[known], average="macro", zero_division=0))
            f1s.append(metrics[f"{t}_macro_f1"])
        metrics["score"] = float(np.mean(f1s)) if f1s else 0.0
        return metrics

    def meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"model": self.cfg.model.model_dump(), "vocab": self.prep.vocab, "tasks": self.tasks,
                "image_size": d.image_size, "eval_size": d.eval_size or d.image_size, "input": d.input}


def _local_batches(task: ClassifierTask, epoch: int, start: int, rank: int, world: int):
    return task.batches(epoch, start, rank, world)


def _dataset(cfg: ClassifierTrainConfig, table: pa.Table, maker: tdata.LabelledBatches):
    import ray

    # Many small key blocks so decoding spreads over tasks; block order re-randomised every epoch.
    rows = max(cfg.train.batch_size, 64)
    blocks = [table.slice(i, rows) for i in range(0, len(table), rows)]
    return (ray.data.from_arrow(blocks).randomize_block_order(seed=None)
            .map_batches(maker, batch_format="numpy", batch_size=rows, num_cpus=cfg.data.decode_cpus))


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def run(cfg: ClassifierTrainConfig) -> dict[str, Any]:
    """Train the classifier into ``cfg.out``; returns the summary (also written as summary.json)."""

    if not cfg.out or not cfg.data.input:
        raise ValueError("train classifier needs out= and data.input=")
    job = JobRun("train_classifier", cfg, cfg.out)
    prep = prepare(cfg)
    n = {s: len(t) for s, t in prep.tables.items()}
    job.lap("prepare")
    steps = n["train"] // cfg.train.batch_size
    if steps == 0:
        raise ValueError(f"{n['train']} training rows cannot fill one batch of {cfg.train.batch_size}")
    spec = Launch(make_task=lambda: ClassifierTask(cfg, prep), run=cfg.train, optim=cfg.optim,
                  out=cfg.out, storage=cfg.storage, steps_per_epoch=steps,
                  local_batches=_local_batches if cfg.data.loader == "local" else None,
                  shuffle_buffer=4 * cfg.train.batch_size)
    datasets = None
    if cfg.data.loader == "ray_data":
        init_ray(cfg.ray, quiet_workers=True)  # the same Ray the training launch attaches to
        datasets = {"train": _dataset(cfg, prep.tables["train"], ClassifierTask(cfg, prep).batch_maker(True))}
    launch(spec, "train_classifier", cfg.ray, datasets)
    job.lap("train")

    last = ckpt.load(checkpoint_uri(cfg.out, "last"), cfg.storage, task=TASK)
    counts = {"rows": sum(n.values()), **{f"{s}_rows": v for s, v in n.items()},
              "classes": {t: len(c) for t, c in prep.vocab.items()},
              "labelled_train_fraction": prep.label_fraction, "steps": last["progress"]["step"],
              "epochs_completed": last["progress"]["epoch"]}
    return job.finish(counts, final=last["history"][-1] if last["history"] else {},
                      best_epoch=last["progress"]["best_epoch"], best_val_score=_finite(last["progress"]["best_score"]),
                      checkpoints={"last": checkpoint_uri(cfg.out, "last"), "best": checkpoint_uri(cfg.out, "best")})
