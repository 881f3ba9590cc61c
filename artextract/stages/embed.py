"""Batch stage (Ray-free): JPEG bytes -> L2-normalised embedding vectors with an EmbeddingNet.

Model specs
    ``untrained:<backbone>``  EmbeddingNet(backbone, dim, weights="none"), initialised from a fixed seed
    ``imagenet:<backbone>``   the backbone with torchvision's ImageNet weights, average-pooled, no
                              projection (its C-dim features + cosine: the seeds' naive method; needs
                              network or a warm torch hub cache); ``imagenet:<backbone>=<weights URI>``
                              loads the same weights from a local path or s3:// URI (offline)
    ``<uri>``                 a checkpoint (local path or s3://...) written by :func:`save_checkpoint`

Checkpoint format (version 1)
    ``torch.save({"format": "artextract.embedding/1", "config": {...}, "state_dict": {...}})`` where
    ``config`` holds the :class:`EmbeddingNet` keyword arguments (backbone, dim, pool, hidden; weights is
    always stored as "none" since the state dict carries them) and ``state_dict`` is
    ``model.state_dict()`` of the whole EmbeddingNet. It is loaded with ``torch.load(weights_only=True)``
    (plain tensors/dicts/strings only) and ``load_state_dict(strict=True)``: a missing or unexpected key
    fails with a message naming the keys.

model_version
    checkpoints: the first 16 hex digits of sha256(checkpoint bytes); ``untrained:`` specs:
    ``<spec>@seed<seed>`` plus ``/d<dim>`` so two dims never share a version; ``imagenet:`` specs
    (deterministic, no seed or dim): ``<spec>@pooled``.
"""
from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.models.embedding import EmbeddingNet
from artextract.stages.device import resolve_device

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "artextract.embedding/1"
BUILT_PREFIXES = ("untrained", "imagenet")
CONFIG_KEYS = ("backbone", "dim", "pool", "hidden")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def save_checkpoint(model: EmbeddingNet, config: dict[str, Any], uri: str,
                    storage_cfg: StorageConfig | None = None) -> str:
    """Write ``model`` as a version-1 checkpoint to ``uri``; returns its model_version."""
    unknown = set(config) - set(CONFIG_KEYS) - {"weights"}
    if unknown:
        raise ValueError(f"checkpoint config has keys EmbeddingNet does not take: {sorted(unknown)}")
    cfg = {k: v for k, v in config.items() if k in CONFIG_KEYS}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg, "state_dict": state}, buf)
    data = buf.getvalue()
    storage.write_bytes(uri, data, storage_cfg)
    return hashlib.sha256(data).hexdigest()[:16]


def load_model(spec: str, dim: int = 256, seed: int = 0,
               storage_cfg: StorageConfig | None = None) -> tuple[EmbeddingNet, str]:
    """Build or load the model named by ``spec``; returns (model in eval mode on CPU, model_version)."""
    prefix, _, backbone = spec.partition(":")
    if prefix == "imagenet" and backbone:
        name, _, uri = backbone.partition("=")
        return EmbeddingNet(backbone=name, dim=None, weights=uri or "imagenet", storage=storage_cfg).eval(), \
            model_version_of(spec)
    if prefix in BUILT_PREFIXES and backbone:
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
            torch.manual_seed(seed)
            model = EmbeddingNet(backbone=backbone, dim=dim, weights="none")
        return model.eval(), f"{spec}@seed{seed}/d{dim}"
    data = storage.read_bytes(spec, storage_cfg)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{spec}: not a loadable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) \
            or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{spec}: expected a dict with 'config' and 'state_dict' "
                         f"(see artextract.stages.embed.save_checkpoint)")
    config = {k: v for k, v in ckpt["config"].items() if k in CONFIG_KEYS}
    model = EmbeddingNet(weights="none", **config)
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    bad_shape = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(f"{spec}: state_dict does not match EmbeddingNet({config}): "
                         f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} "
                         f"({len(unexpected)}), wrong shape {bad_shape[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval(), hashlib.sha256(data).hexdigest()[:16]


def model_version_of(spec: str, dim: int = 256, seed: int = 0, storage_cfg: StorageConfig | None = None) -> str:
    """The model_version ``load_model(spec, dim, seed)`` would report, without building the model."""
    prefix, _, backbone = spec.partition(":")
    if prefix == "imagenet" and backbone:
        return f"{spec}@pooled"
    if prefix in BUILT_PREFIXES and backbone:
        return f"{spec}@seed{seed}/d{dim}"
    return hashlib.sha256(storage.read_bytes(spec, storage_cfg)).hexdigest()[:16]


def decode_square(jpeg: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> (size, size, 3) float32 RGB, ImageNet-normalised."""
    with Image.open(io.BytesIO(jpeg)) as im:
        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, np.float32) / 255.0
    return (arr - IMAGENET_MEAN) / IMAGENET_STD


def _column(batch: Any, name: str, n: int, default: Any = None) -> list:
    if isinstance(batch, pa.Table):
        return batch[name].to_pylist() if name in batch.column_names else [default] * n
    if name in batch:
        col = batch[name]
        return col.tolist() if isinstance(col, np.ndarray) else list(col)
    return [default] * n


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float32 -> fixed_size_list<float32>[d]."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])


class EmbedStage:
    """Loads the model once; ``__call__`` maps a batch (image_id, face_idx, jpeg[, yaw, pitch, roll])
    to a pyarrow table (image_id, face_idx int16, vector, model_version, yaw, pitch, roll) plus any
    ``shard`` column passed through."""

    def __init__(self, model_spec: str, image_size: int = 160, device: str = "auto", batch_size: int = 32,
                 dim: int = 256, seed: int = 0, storage_cfg: StorageConfig | None = None,
                 torch_threads: int | None = None) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(resolve_device(device, "embed"))
        self.image_size, self.batch_size = image_size, batch_size
        model, self.model_version = load_model(model_spec, dim, seed, storage_cfg)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dim = self.model.dim

    @torch.inference_mode()
    def embed(self, jpegs: list[bytes]) -> np.ndarray:
        """JPEG bytes -> (n, dim) float32 unit vectors."""
        out = np.zeros((len(jpegs), self.dim), np.float32)
        for i in range(0, len(jpegs), self.batch_size):
            arr = np.stack([decode_square(j, self.image_size) for j in jpegs[i:i + self.batch_size]])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.device)
            if self.device.type == "cuda":
                x = x.to(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    v = self.model(x)
            else:
                v = self.model(x)
            # Re-normalise in fp32: bf16 outputs are only approximately unit length.
            v = torch.nn.functional.normalize(v.float(), dim=1)
            out[i:i + len(arr)] = v.cpu().numpy()
        return out

    def __call__(self, batch: Any) -> pa.Table:
        ids = _column(batch, "image_id", 0)
        n = len(ids)
        jpegs = _column(batch, "jpeg", n)
        if any(j is None for j in jpegs):
            raise ValueError("batch has rows without jpeg bytes")
        # Rows of one ``chunk`` (when given) are embedded together and apart from other chunks, so the
        # numbers do not depend on how a scheduler grouped the rows into batches.
        chunks = _column(batch, "chunk", n, 0)
        vectors = np.zeros((n, self.dim), np.float32)
        start = 0
        for i in range(1, n + 1):
            if i == n or chunks[i] != chunks[start]:
                vectors[start:i] = self.embed(jpegs[start:i])
                start = i
        cols = {"image_id": pa.array([str(i) for i in ids], pa.string()),
                "face_idx": pa.array(_column(batch, "face_idx", n, -1), pa.int16()),
                "vector": vector_array(vectors),
                "model_version": pa.array([self.model_version] * n, pa.string())}
        for name in ("yaw", "pitch", "roll"):
            vals = [float("nan") if v is None else float(v) for v in _column(batch, name, n)]
            cols[name] = pa.array(vals, pa.float32())
        if "shard" in (batch.column_names if isinstance(batch, pa.Table) else batch):
            cols["shard"] = pa.array(_column(batch, "shard", n), pa.int64())
        return pa.table(cols)
