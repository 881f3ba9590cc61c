"""Query an index by an image (``artextract search --image PATH``): faces in, vectors out.

The query must be embedded exactly as the indexed vectors were, or its scores mean nothing. So
every step reuses the code that made the index's inputs:

- read + decode + the whole-painting JPEG: :class:`artextract.stages.read.ReadDecodeStage` (the
  preprocess stage; local paths and ``s3://`` alike), with ``SearchConfig.decode``;
- faces: :class:`artextract.stages.faces.FaceDetector` and :func:`~artextract.stages.faces.face_record`
  (the aligned crop, box and head pose FaceStage stores), with ``SearchConfig.detect``;
- vectors: :class:`artextract.stages.embed.EmbedStage` with the model the index was built from.

Model resolution (first that applies): ``model=`` (image_size/dim/seed still from the record when
there is one); ``index.json`` key ``embed`` = {model, image_size, dim, seed}; the embed run of the
embeddings recorded in the version's ``config.resolved.yaml`` (its own ``config.resolved.yaml``).
Built specs (``untrained:``/``imagenet:``) need the same dim and seed to give the same weights,
which is why those are resolved with the model. The query's model_version must be one of the
index's ``model_versions`` (when recorded): vectors of different models are not comparable.

Each detected face is one query (``face_idx`` = its detection rank, as in preprocess); an image
without a face is queried by its whole painting (``face_idx`` -1) and its query record says so.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from artextract.core import storage
from artextract.config import ConfigError, EmbedConfig, SearchConfig, StorageConfig
from artextract.index import versions as V

log = logging.getLogger(__name__)

NO_FACE = "no face detected: whole-painting embedding"
DETECTION_OFF = "face detection disabled (detect.enabled=false): whole-painting embedding"


@dataclass(frozen=True)
class EmbedSpec:
    """How to embed a query so it is comparable with the index: EmbedStage's arguments."""

    model: str
    image_size: int
    dim: int
    seed: int
    origin: str  # where the model came from, for the results and error messages


def _resolved_config(run_uri: str, cfg: StorageConfig) -> dict[str, Any]:
    uri = storage.join(run_uri, "config.resolved.yaml")
    if not storage.exists(uri, cfg):
        return {}
    import yaml

    return yaml.safe_load(storage.read_bytes(uri, cfg)) or {}


def recorded_embeddings(reader, cfg: StorageConfig) -> str | None:
    """The ``embeddings`` URI the reader's version was built from (its config.resolved.yaml), if any."""
    return _resolved_config(V.version_dir(reader.out_uri, reader.version), cfg).get("embeddings") or None


def recorded_embed(reader, cfg: StorageConfig) -> tuple[dict[str, Any], str]:
    """(model/image_size/dim/seed as recorded for the index, where from); ({}, "") when unrecorded."""
    embed = reader.manifest.get("embed")
    if isinstance(embed, dict) and embed.get("model"):
        return embed, "index.json embed"
    emb = recorded_embeddings(reader, cfg)
    if emb:
        run = _resolved_config(emb, cfg)
        if run.get("model"):
            return {k: run[k] for k in ("model", "image_size", "dim", "seed") if k in run}, f"embed run {emb}"
    return {}, ""


def resolve_embed_spec(reader, cfg: SearchConfig) -> EmbedSpec:
    """The model and its settings for image queries (module docstring); ConfigError when unknown."""
    rec, origin = recorded_embed(reader, cfg.storage)
    if not cfg.model and not rec:
        raise ConfigError(f"the index at {cfg.index} records no embedding model (no `embed` in index.json, "
                          f"no embed run behind its embeddings): pass model=CHECKPOINT_URI or "
                          f"model=untrained:<backbone> (--model)")
    defaults = EmbedConfig()
    return EmbedSpec(model=cfg.model or rec["model"],
                     image_size=int(rec.get("image_size", defaults.image_size)),
                     dim=int(rec.get("dim", reader.manifest["dim"])), seed=int(rec.get("seed", defaults.seed)),
                     origin="model=" if cfg.model else origin)


def check_model_version(version: str, manifest: dict[str, Any], spec: EmbedSpec) -> None:
    """Refuse a query model whose vectors the index does not hold (when the index lists its models)."""
    known = list(manifest.get("model_versions") or [])
    if known and version not in known:
        raise ValueError(f"query model {spec.model!r} ({spec.origin}) has model_version {version!r}, but the "
                         f"index holds vectors of {known}: vectors of different models are not comparable "
                         f"(pass model= the index was built with)")


def read_image(uri: str, cfg: SearchConfig) -> dict[str, Any]:
    """Read and decode ``uri`` like preprocess does: {det_image, det_scale, whole_jpeg, ...}.

    Raises ValueError with a one-line reason (the quarantine reason preprocess would record)."""
    from artextract.stages.decode import REASONS
    from artextract.stages.read import ReadDecodeStage

    out = ReadDecodeStage(cfg.decode, cfg.storage, read_threads=1)(
        {"image_id": np.array(["query"], object), "uri": np.array([uri], object)})
    row = {k: v[0] for k, v in out.items()}
    if row["status"] != "ok":
        reason = str(row["reason"])
        detail = " ".join(str(row["detail"]).split())[:200]
        raise ValueError(f"cannot use {uri} as a query image: {reason} ({REASONS.get(reason, '')})"
                         + (f": {detail}" if detail else ""))
    return row


def detect_faces(row: dict[str, Any], cfg: SearchConfig) -> list[dict[str, Any]]:
    """FACE_TYPE records (aligned crop, box, landmarks, pose) of every face preprocess would keep."""
    from artextract.stages.faces import FaceDetector, face_record

    if not cfg.detect.enabled:
        return []
    image, scale = row["det_image"], float(row["det_scale"])
    faces = FaceDetector(cfg.detect).detect([image])[0]
    return [face_record(k, f, image, scale, cfg.detect) for k, f in enumerate(faces)]


def _finite(v: float, nd: int = 2) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def image_queries(reader, cfg: SearchConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(queries (q, d), per-query records) for ``cfg.image``; every record carries ``jpeg`` (the
    crop or whole painting, for the grid: pop it before writing JSON)."""
    from artextract.stages.embed import EmbedStage, model_version_of

    spec = resolve_embed_spec(reader, cfg)
    version = model_version_of(spec.model, spec.dim, spec.seed, cfg.storage)
    check_model_version(version, reader.manifest, spec)  # before the expensive steps
    row = read_image(cfg.image, cfg)
    faces = detect_faces(row, cfg)
    base = {"source": "image", "image": cfg.image, "model": spec.model, "model_version": version,
            "model_from": spec.origin}
    if faces:
        records = [{**base, "face_idx": int(f["face_idx"]), "box": [round(x, 2) for x in f["box"]],
                    "prob": _finite(f["prob"], 4), "pose": [_finite(f[a]) for a in ("yaw", "pitch", "roll")],
                    "jpeg": f["crop_jpeg"]} for f in faces]
    else:
        note = NO_FACE if cfg.detect.enabled else DETECTION_OFF
        records = [{**base, "face_idx": -1, "box": None, "pose": None, "fallback": note,
                    "jpeg": row["whole_jpeg"]}]
    stage = EmbedStage(spec.model, image_size=spec.image_size, dim=spec.dim, seed=spec.seed,
                       storage_cfg=cfg.storage)
    if stage.model_version != version:  # a checkpoint replaced between the two reads
        raise RuntimeError(f"{spec.model} changed while loading (model_version {version} -> {stage.model_version})")
    vectors = stage.embed([r["jpeg"] for r in records])
    log.info("image query %s: %d face(s), model %s (%s)", cfg.image, len(faces), spec.model, spec.origin)
    return vectors, records

