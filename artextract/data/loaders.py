"""Labelled image rows for training (Ray-free): key table, splits, class vocabularies, byte fetch,
decode + augmentation, and a deterministic in-process batch source.

The driver only ever holds *keys* (image_id, labels, where the bytes live); bytes are fetched per
batch by whoever decodes (a Ray Data task or a worker), so the driver stays small at any scale.
A row's bytes live either in a preprocess output (``src`` = images/part-N.parquet, ``src_row``) or
at the manifest's ``uri`` (``src_row`` = -1).
"""
from __future__ import annotations

import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torchvision.transforms import v2

from artextract.core import layout, storage
from artextract.config import ClassifierDataConfig, StorageConfig
from artextract.data.augment import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)
UNKNOWN = -1
SPLITS = ("train", "val", "test")


def part_files(base: str, cfg: StorageConfig | None) -> list[str]:
    """Sorted URIs of the committed ``part-*.parquet`` shards of ``base`` (core/layout.py)."""
    return layout.Parts(base, cfg).files()


def load_rows(uri: str, tasks: tuple[str, ...], cfg: StorageConfig, extra: tuple[str, ...] = (),
              require_labels: bool = True) -> pa.Table:
    """Key table (image_id, src, src_row, <tasks>, <extra>) of a preprocess output or a manifest;
    without ``require_labels`` an absent label column becomes all-unknown (a new collection)."""
    kind, rows_of = layout.labelled_rows(uri, cfg)
    pre = kind == "preprocess"
    files = rows_of.files()
    if not files:
        raise FileNotFoundError(f"{uri}: neither a preprocess output (images/part-*.parquet) nor a manifest "
                                "(part-*.parquet)")
    parts = []
    for f in files:
        loc = storage.filesystem_for(f, cfg)
        have = pq.read_schema(loc.path, filesystem=loc.fs).names
        missing = [c for c in tasks if c not in have]
        if missing and require_labels:
            raise ValueError(f"{f}: label columns {missing} are not in the data (have {have})")
        # Never pull the image bytes into the driver: keys and labels only.
        wanted = ["image_id", "status" if pre else "uri", *(t for t in tasks if t in have),
                  *(e for e in extra if e in have and e not in tasks)]
        t = storage.read_parquet(f, cfg, columns=wanted)
        n = len(t)
        if pre:
            keep = np.flatnonzero(pc.equal(t["status"], "ok").to_numpy(zero_copy_only=False))
            src, rows = pa.array([f] * len(keep), pa.string()), pa.array(keep, pa.int64())
        else:
            keep = np.arange(n)
            src, rows = t["uri"], pa.array(np.full(n, -1), pa.int64())
        t = t.take(pa.array(keep))
        cols = {"image_id": t["image_id"], "src": src, "src_row": rows}
        for c in tasks + tuple(e for e in extra if e in t.column_names and e not in tasks):
            cols[c] = pc.cast(t[c], pa.string()) if c in t.column_names else pa.nulls(len(t), pa.string())
        parts.append(pa.table(cols))
    table = pa.concat_tables(parts, promote_options="default").combine_chunks()
    return table.sort_by("image_id")


def build_vocab(table: pa.Table, tasks: tuple[str, ...], train_mask: np.ndarray, min_count: int) -> dict[str, list[str]]:
    """Per task: sorted class names with >= ``min_count`` labelled training rows."""
    vocab = {}
    for task in tasks:
        values = np.asarray(table[task].to_pylist(), dtype=object)[train_mask]
        names, counts = np.unique([v for v in values if v not in (None, "")], return_counts=True)
        vocab[task] = sorted(str(n) for n, c in zip(names, counts) if c >= min_count)
        if not vocab[task]:
            raise ValueError(f"task {task!r} has no class with >= {min_count} labelled training rows")
    return vocab


def encode_labels(table: pa.Table, vocab: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per task: (N,) int64 class indices, -1 where unknown or outside the vocabulary."""
    out = {}
    for task, classes in vocab.items():
        index = {c: i for i, c in enumerate(classes)}
        out[task] = np.array([index.get(v, UNKNOWN) for v in table[task].to_pylist()], np.int64)
    return out


def stable_fraction(ids: list[str], seed: int) -> np.ndarray:
    """(N,) uniform [0, 1) value per id from a hash of (seed, id)."""
    # Hash-based uniform [0,1) per id: a row keeps its split when other rows come or go.
    return np.array([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:12], 16) / 16**12 for i in ids])


def assign_splits(table: pa.Table, cfg: ClassifierDataConfig) -> np.ndarray:
    """(N,) array of 'train' / 'val' / 'test': from ``split_column`` or stratified by hash rank."""
    if cfg.split_column:
        values = np.array([str(v or "") for v in table[cfg.split_column].to_pylist()], dtype=object)
        bad = set(values) - set(SPLITS)
        if bad:
            raise ValueError(f"split column {cfg.split_column!r} has values {sorted(bad)[:5]} (want {SPLITS})")
        return values
    u = stable_fraction(table["image_id"].to_pylist(), cfg.seed)
    strata = (np.array([str(v) for v in table[cfg.stratify].to_pylist()], dtype=object)
              if cfg.stratify else np.zeros(len(table), dtype=object))
    split = np.full(len(table), "train", dtype=object)
    # Within each stratum, rank rows by their hash and cut at the fractions: an exact stratified
    # split that is deterministic and stable under additions.
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        order = idx[np.argsort(u[idx], kind="stable")]
        n_test = int(round(len(order) * cfg.test_fraction))
        n_val = int(round((len(order) - n_test) * cfg.val_fraction))
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_val]] = "val"
    return split


def fetch_bytes(srcs: list[str], rows: list[int], cfg: StorageConfig, threads: int = 8) -> list[bytes]:
    """Image bytes for each (src, src_row): a preprocess shard row's whole_jpeg, or the file at src."""
    out: list[bytes | None] = [None] * len(srcs)
    shard_rows: dict[str, list[int]] = {}
    direct = []
    for i, (s, r) in enumerate(zip(srcs, rows)):
        (shard_rows.setdefault(s, []).append(i) if r >= 0 else direct.append(i))
    for src, idx in shard_rows.items():
        col = storage.read_parquet(src, cfg, columns=["whole_jpeg"]).column(0)
        for i, data in zip(idx, col.take(pa.array([rows[i] for i in idx])).to_pylist()):
            out[i] = data
    if direct:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for i, data in zip(direct, pool.map(lambda i: storage.read_bytes(srcs[i], cfg), direct)):
                out[i] = data
    return out  # type: ignore[return-value]


def image_transform(size: int, augment: bool, crop_scale: tuple[float, float] = (0.35, 1.0)) -> v2.Compose:
    """PIL image -> float32 (3, size, size), ImageNet-normalised; ``augment`` adds train-time noise."""
    if augment:
        # Mild colour jitter only: palette is a strong style cue, so hue shifts would erase signal.
        geo = [v2.RandomResizedCrop(size, scale=crop_scale, ratio=(3 / 4, 4 / 3), antialias=True),
               v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.1)], p=0.5)]
    else:
        geo = [v2.Resize((size, size), antialias=True)]
    return v2.Compose([v2.ToImage(), *geo, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def decode_images(blobs: list[bytes], transform: v2.Compose, size: int) -> np.ndarray:
    """(B, 3, size, size) float32 from encoded images; undecodable ones become zeros (logged)."""
    out = np.zeros((len(blobs), 3, size, size), np.float32)
    for i, data in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(data)) as im:
                out[i] = transform(im.convert("RGB")).numpy()
        except Exception as exc:  # preprocess already quarantines bad files; a manifest may not have
            log.warning("could not decode image %d of batch (%s); using a blank image", i, exc)
    return out


class LabelledBatches:
    """Turn key rows into model batches: fetch bytes, decode, augment. Picklable (Ray Data callable)."""

    def __init__(self, tasks: tuple[str, ...], size: int, augment: bool, storage_cfg: StorageConfig,
                 crop_scale: tuple[float, float] = (0.35, 1.0)):
        self.tasks, self.size, self.augment, self.storage_cfg = tasks, size, augment, storage_cfg
        self.crop_scale = crop_scale
        self._transform: v2.Compose | None = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        if self._transform is None:
            self._transform = image_transform(self.size, self.augment, self.crop_scale)
        blobs = batch["jpeg"] if "jpeg" in batch else fetch_bytes(
            [str(s) for s in batch["src"]], [int(r) for r in batch["src_row"]], self.storage_cfg)
        out = {"image": decode_images(list(blobs), self._transform, self.size)}
        for task in self.tasks:
            out[f"y_{task}"] = np.asarray(batch[f"y_{task}"], np.int64)
        return out


def label_table(keys: pa.Table, labels: dict[str, np.ndarray], mask: np.ndarray) -> pa.Table:
    """Key rows selected by ``mask`` with ``y_<task>`` int columns (what the batch makers consume)."""
    idx = pa.array(np.flatnonzero(mask))
    cols = {c: keys[c].take(idx) for c in ("image_id", "src", "src_row")}
    cols.update({f"y_{t}": pa.array(y[mask]) for t, y in labels.items()})
    return pa.table(cols)


class LocalSource:
    """Deterministic batches for one worker: every global batch of ``global_batch`` rows is the same
    whatever the world size, and rank r takes its r-th slice of it. Bytes are fetched once."""

    def __init__(self, table: pa.Table, make: LabelledBatches, global_batch: int, seed: int,
                 shuffle: bool = True):
        if len(table) < global_batch:
            raise ValueError(f"{len(table)} rows cannot fill one batch of {global_batch}")
        self.table, self.make, self.global_batch, self.seed, self.shuffle = table, make, global_batch, seed, shuffle
        self.blobs = fetch_bytes(table["src"].to_pylist(), table["src_row"].to_pylist(), make.storage_cfg)
        self.labels = {t: table[f"y_{t}"].to_numpy() for t in make.tasks}

    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder is dropped so every rank steps alike)."""
        return len(self.table) // self.global_batch

    def in_order(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Every row once, in table order, the last partial batch included (for evaluation)."""
        for lo in range(0, len(self.table), batch_size):
            idx = np.arange(lo, min(len(self.table), lo + batch_size))
            yield self.make({"jpeg": [self.blobs[i] for i in idx],
                             **{f"y_{t}": y[idx] for t, y in self.labels.items()}})

    def batches(self, epoch: int, rank: int, world: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This rank's slices of each global batch of ``epoch``, from batch ``start`` on."""
        if self.global_batch % world:
            raise ValueError(f"batch_size {self.global_batch} is not divisible by {world} workers")
        n = len(self.table)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        per = self.global_batch // world
        for step in range(start, self.steps_per_epoch()):
            # Augmentation draws from torch's RNG: seed it per (epoch, step, rank) so a resumed run
            # and a run with another world size see exactly the same crops.
            torch.manual_seed((self.seed * 1_000_003 + epoch * 100_003 + step * 101 + rank) % (2**31 - 1))
            idx = order[step * self.global_batch + rank * per: step * self.global_batch + (rank + 1) * per]
            batch = {"jpeg": [self.blobs[i] for i in idx], **{f"y_{t}": y[idx] for t, y in self.labels.items()}}
            yield self.make(batch)
