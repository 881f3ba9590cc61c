"""``artextract train similarity``: Siamese/triplet metric learning on face crops or paintings.

Batches hold P instances (or labels) x m augmented views, drawn by ``MPerClassBatchSampler`` as one
global batch that each rank slices; ``GatherLoss`` all-gathers embeddings so mining sees the global
batch, which makes N workers x B/N train exactly like 1 worker x B. The best checkpoint is exported
as ``model.pt`` in the embedding-checkpoint format that ``artextract embed --model`` loads.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from artextract.core import layout, storage
from artextract.config import SimilarityTrainConfig
from artextract.data.augment import reproduction_transform
from artextract.data.sampler import MPerClassBatchSampler
from artextract.eval.retrieval import retrieval_metrics
from artextract.losses import build_loss
from artextract.losses.distributed import GatherLoss
from artextract.models.embedding import EmbeddingNet
from artextract.core.runinfo import JobRun
from artextract.train import checkpoint as ckpt
from artextract.stages.embed import save_checkpoint
from artextract.train.launch import launch
from artextract.train.loop import Launch
from artextract.data import loaders as tdata

log = logging.getLogger(__name__)
TASK = "similarity"
JPEG = {"faces": "crop_jpeg", "images": "whole_jpeg"}


def _read_rows(uri: str, what: str, cfg: SimilarityTrainConfig) -> pa.Table:
    """(image_id, face_idx, jpeg) of one preprocess output's faces/ or ok images/, sorted."""
    files = layout.PreprocessOutput(uri, cfg.storage).table(what).require()
    cols = ["image_id", JPEG[what]] + (["face_idx"] if what == "faces" else ["status"])
    t = pa.concat_tables([storage.read_parquet(f, cfg.storage, columns=cols) for f in files])
    if what == "images":
        t = t.filter(pc.equal(t["status"], "ok"))
        t = t.append_column("face_idx", pa.array(np.full(len(t), -1, np.int16)))
    t = t.select(["image_id", "face_idx", JPEG[what]]).rename_columns(["image_id", "face_idx", "jpeg"])
    return t.sort_by([("image_id", "ascending"), ("face_idx", "ascending")])


def _instance_labels(t: pa.Table, prefix: str = "") -> pa.Table:
    return t.append_column("label", pa.array([f"{prefix}{i}/{f}" for i, f in zip(
        t["image_id"].to_pylist(), t["face_idx"].to_pylist())]))


def load_crops(cfg: SimilarityTrainConfig) -> tuple[pa.Table, dict[str, int]]:
    """Rows (image_id, face_idx, jpeg, label) of the preprocess output; counts of what was dropped."""
    d = cfg.data
    t = _read_rows(d.input, d.what, cfg)
    if d.limit:
        t = t.slice(0, d.limit)
    counts = {"crops": len(t)}
    if d.positives == "instance":
        return _instance_labels(t), counts
    if not d.label_column:
        raise ValueError("data.positives=label needs data.label_column")
    src = d.labels or d.input
    lab = tdata.load_rows(src, (d.label_column,), cfg.storage)
    by_id = dict(zip(lab["image_id"].to_pylist(), lab[d.label_column].to_pylist()))
    labels = [by_id.get(i) for i in t["image_id"].to_pylist()]
    has = np.array([v not in (None, "") for v in labels])
    vals, n = np.unique(np.array([v for v, h in zip(labels, has) if h], dtype=object), return_counts=True)
    ok = {v for v, c in zip(vals, n) if c >= d.min_per_label}
    keep = has & np.array([v in ok for v in labels])
    counts.update(unlabelled=int((~has).sum()), rare_label_rows=int((has & ~keep).sum()))
    t = t.append_column("label", pa.array([str(v) for v in labels], pa.string())).filter(pa.array(keep))
    return t, counts


def load_extra(cfg: SimilarityTrainConfig) -> pa.Table:
    """The ``data.extra_inputs`` rows as training instances; labels prefixed by source so an
    image_id present in two sources stays two instances."""
    if cfg.data.positives != "instance":
        raise ValueError("data.extra_inputs adds unlabelled instances: it needs data.positives=instance")
    return pa.concat_tables([_instance_labels(_read_rows(x.input, x.what, cfg), f"extra{k}:")
                             for k, x in enumerate(cfg.data.extra_inputs)])


def split_by_image(t: pa.Table, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: rows of held-out images (hash-ranked, so all faces of one painting stay together)."""
    ids = t["image_id"].to_pylist()
    u = tdata.stable_fraction(ids, seed)
    return u < fraction


@dataclass
class Prepared:
    train: pa.Table
    val: pa.Table
    label_ids: np.ndarray
    counts: dict[str, int]


class SimilarityTask:
    """The loop's view: EmbeddingNet, global-batch metric loss, retrieval validation."""

    name = TASK

    def __init__(self, cfg: SimilarityTrainConfig, prep: Prepared):
        self.cfg, self.prep = cfg, prep
        loss_kwargs = {"margin": cfg.loss.margin, "distance": cfg.loss.distance}
        if cfg.loss.name == "triplet":
            loss_kwargs["miner"] = cfg.loss.miner
        if cfg.loss.name == "supcon":
            loss_kwargs["temperature"] = cfg.loss.temperature
        self.loss_fn = GatherLoss(build_loss(cfg.loss.name, **loss_kwargs))
        self.train_tf = reproduction_transform(size=cfg.data.image_size)
        self.eval_tf = tdata.image_transform(cfg.data.image_size, augment=False)

    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return EmbeddingNet(backbone=m.backbone, dim=m.dim, weights=m.weights, pool=m.pool, hidden=m.hidden,
                            storage=self.cfg.storage)

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x = torch.as_tensor(batch["image"]).to(device)
        return self.loss_fn(model(x), torch.as_tensor(batch["label"]).to(device))

    def batches(self, epoch: int, start: int, rank: int, world: int) -> Iterator[dict[str, np.ndarray]]:
        d = self.cfg.data
        sampler = MPerClassBatchSampler(self.prep.label_ids, m=d.m, p=d.p, batches_per_epoch=d.batches_per_epoch,
                                        seed=d.seed, num_replicas=world, rank=rank)
        sampler.set_epoch(epoch)
        jpegs = self.prep.train["jpeg"]
        local = d.p * d.m // world
        for step, idx in enumerate(sampler):
            if step < start:
                continue
            # Seed by (epoch, step, position in the GLOBAL batch) so each view is the same whatever
            # the world size: rank r's slice starts at r*local.
            imgs = np.stack([self._view(jpegs[i].as_py(), epoch, step, rank * local + j) for j, i in enumerate(idx)])
            yield {"image": imgs, "label": self.prep.label_ids[idx]}

    def _view(self, data: bytes, epoch: int, step: int, pos: int) -> np.ndarray:
        torch.manual_seed((self.cfg.data.seed * 1_000_003 + epoch * 100_003 + step * 1_009 + pos) % (2**31 - 1))
        out = tdata.decode_images([data], self.train_tf, self.cfg.data.image_size)
        return out[0]

    @torch.no_grad()
    def _embed(self, model: nn.Module, blobs: list[bytes], tf, device: torch.device) -> np.ndarray:
        vecs = []
        for lo in range(0, len(blobs), 64):
            x = torch.from_numpy(tdata.decode_images(blobs[lo:lo + 64], tf, self.cfg.data.image_size)).to(device)
            vecs.append(model(x).float().cpu().numpy())
        return np.concatenate(vecs) if vecs else np.zeros((0, self.cfg.model.dim), np.float32)

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        val = self.prep.val
        if len(val) < 2:
            return {}
        was = model.training
        model.eval()
        blobs = val["jpeg"].to_pylist()
        orig = self._embed(model, blobs, self.eval_tf, device)
        torch.manual_seed(self.cfg.data.seed)  # the same copies at every validation
        copies = self._embed(model, blobs, self.train_tf, device)
        model.train(was)
        # Near-duplicate recall@1: does each reproduction find its own original among all originals?
        top1 = (copies @ orig.T).argmax(axis=1)
        metrics = {"copy_recall@1": float((top1 == np.arange(len(blobs))).mean())}
        if self.cfg.data.positives == "label":
            r = retrieval_metrics(orig, val["label"].to_pylist(), (1, 5), groups=val["image_id"].to_pylist())
            metrics.update({"precision@1": r["precision@1"], "map@r": r["map@r"]})
            metrics["score"] = r["map@r"]
        else:
            metrics["score"] = metrics["copy_recall@1"]
        return metrics

    def meta(self) -> dict[str, Any]:
        return {"model": self.cfg.model.model_dump(), "image_size": self.cfg.data.image_size,
                "what": self.cfg.data.what, "positives": self.cfg.data.positives, "input": self.cfg.data.input}


def _local_batches(task: SimilarityTask, epoch: int, start: int, rank: int, world: int):
    return task.batches(epoch, start, rank, world)


def prepare(cfg: SimilarityTrainConfig) -> Prepared:
    """Crops, labels and the by-image validation split."""
    t, counts = load_crops(cfg)
    held = split_by_image(t, cfg.data.val_fraction, cfg.data.seed)
    train, val = t.filter(pa.array(~held)), t.filter(pa.array(held))
    if cfg.data.extra_inputs:
        extra = load_extra(cfg)
        counts["extra_rows"] = len(extra)
        train = pa.concat_tables([train, extra.cast(train.schema)])
    _, label_ids = np.unique(np.array(train["label"].to_pylist(), dtype=object), return_inverse=True)
    counts.update(train_rows=len(train), val_rows=len(val), train_labels=int(label_ids.max() + 1) if len(train) else 0)
    if counts["train_labels"] < cfg.data.p:
        raise ValueError(f"{counts['train_labels']} training labels/instances < data.p={cfg.data.p}")
    return Prepared(train, val, label_ids.astype(np.int64), counts)


def export_embedding_model(out: str, which: str, storage_cfg) -> tuple[str, str]:
    """Write ``<out>/model.pt`` (embedding-checkpoint format) from a training checkpoint; (uri, version)."""

    state = ckpt.load(ckpt.checkpoint_uri(out, which), storage_cfg, task=TASK)
    m = state["meta"]["model"]
    model = EmbeddingNet(backbone=m["backbone"], dim=m["dim"], weights="none", pool=m["pool"], hidden=m["hidden"])
    model.load_state_dict(state["state_dict"])
    uri = storage.join(out, "model.pt")
    version = save_checkpoint(model, {k: m[k] for k in ("backbone", "dim", "pool", "hidden")}, uri, storage_cfg)
    return uri, version


def run(cfg: SimilarityTrainConfig) -> dict[str, Any]:
    """Train into ``cfg.out``; export model.pt; returns the summary."""

    if not cfg.out or not cfg.data.input:
        raise ValueError("train similarity needs out= and data.input=")
    job = JobRun("train_similarity", cfg, cfg.out)
    prep = prepare(cfg)
    job.lap("prepare")
    batch = cfg.data.p * cfg.data.m
    run_cfg = cfg.train.model_copy(update={"batch_size": batch})
    steps = cfg.data.batches_per_epoch or max(1, len(prep.train) // batch)
    spec = Launch(make_task=lambda: SimilarityTask(cfg, prep), run=run_cfg, optim=cfg.optim,
                  out=cfg.out, storage=cfg.storage, steps_per_epoch=steps, local_batches=_local_batches)
    launch(spec, "train_similarity", cfg.ray)
    job.lap("train")
    best = "best" if storage.exists(ckpt.checkpoint_uri(cfg.out, "best"), cfg.storage) else "last"
    model_uri, version = export_embedding_model(cfg.out, best, cfg.storage)
    last = ckpt.load(ckpt.checkpoint_uri(cfg.out, "last"), cfg.storage, task=TASK)
    counts = {**prep.counts, "steps": last["progress"]["step"], "epochs_completed": last["progress"]["epoch"]}
    return job.finish(counts, final=last["history"][-1] if last["history"] else {}, model=model_uri,
                      model_version=version, exported_from=best, best_epoch=last["progress"]["best_epoch"])
