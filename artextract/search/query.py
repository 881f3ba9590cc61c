"""Query an index by an image (``artextract search --image PATH``, an upload to ``artextract serve``):
faces in, vectors out.

The query must be embedded exactly as the indexed vectors were, or its scores mean nothing. So
every step reuses the code that made the index's inputs:

- read + decode + the whole-painting JPEG: :class:`artextract.stages.read.ReadDecodeStage` (the
  preprocess stage; local paths and ``s3://`` alike) for a URI, :func:`artextract.stages.decode.decode`
  for uploaded bytes, with the query options' ``decode``;
- faces: :class:`artextract.stages.faces.FaceDetector` and :func:`~artextract.stages.faces.face_record`
  (the aligned crop, box and head pose FaceStage stores), with ``detect``;
- vectors: :class:`artextract.stages.embed.EmbedStage` with the model the index was built from.

:class:`QueryModels` loads the detector and the model once and keeps them (the server's lifetime,
or one CLI run).

Model resolution (first that applies): ``model=`` (image_size/dim/seed still from the record when
there is one); ``index.json`` key ``embed`` = {model, image_size, dim, seed} (reindex); the embed
run recorded in ``index.json`` ``lineage`` at build time (:func:`artextract.core.layout.lineage`).
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

from artextract.config import ConfigError, EmbedConfig
from artextract.stages.decode import REASONS
from artextract.stages.read import ReadDecodeStage

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


def lineage_of(reader) -> dict[str, Any]:
    """The lineage the reader's version recorded at build time ({} for an index built without one)."""
    return reader.manifest.get("lineage") or {}


def recorded_embeddings(reader) -> str | None:
    """The ``embeddings`` URI the reader's version was built from, if recorded."""
    return lineage_of(reader).get("embeddings") or None


def recorded_embed(reader) -> tuple[dict[str, Any], str]:
    """(model/image_size/dim/seed as recorded for the index, where from); ({}, "") when unrecorded."""
    embed = reader.manifest.get("embed")
    if isinstance(embed, dict) and embed.get("model"):
        return embed, "index.json embed"
    lin = lineage_of(reader)
    if lin.get("embed"):
        return {k: v for k, v in lin["embed"].items() if k in ("model", "image_size", "dim", "seed")}, \
            f"embed run {lin['embeddings']}"
    return {}, ""


def resolve_embed_spec(reader, cfg) -> EmbedSpec:
    """The model and its settings for image queries (module docstring; ``cfg``: search or serve
    options: model, index, storage); ConfigError when unknown."""
    rec, origin = recorded_embed(reader)
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


def read_image(uri: str, cfg) -> dict[str, Any]:
    """Read and decode ``uri`` like preprocess does: {det_image, det_scale, whole_jpeg, ...}.

    Raises ValueError with a one-line reason (the quarantine reason preprocess would record)."""
    out = ReadDecodeStage(cfg.decode, cfg.storage, read_threads=1)(
        {"image_id": np.array(["query"], object), "uri": np.array([uri], object)})
    row = {k: v[0] for k, v in out.items()}
    if row["status"] != "ok":
        reason = str(row["reason"])
        detail = " ".join(str(row["detail"]).split())[:200]
        raise ValueError(f"cannot use {uri} as a query image: {reason} ({REASONS.get(reason, '')})"
                         + (f": {detail}" if detail else ""))
    return row


def detect_faces(row: dict[str, Any], cfg, models: "QueryModels | None" = None) -> list[dict[str, Any]]:
    """FACE_TYPE records (aligned crop, box, landmarks, pose) of every face preprocess would keep."""
    return (models or QueryModels(cfg)).faces(row["det_image"], float(row["det_scale"]))


def _finite(v: float, nd: int = 2) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


class QueryModels:
    """The face detector and the embedding model of image queries, each loaded once on first use.
    ``cfg``: search or serve options (model, index, decode, detect, storage)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.spec: EmbedSpec | None = None
        self.version: str | None = None
        self._detector = None
        self._embedder = None

    def check(self, reader) -> tuple[EmbedSpec, str]:
        """(spec, model_version) for ``reader``; refuses a model whose vectors the index does not hold
        (cheap: before anything is decoded or loaded)."""
        from artextract.stages.embed import model_version_of  # lazy: torch

        if self.spec is None:
            spec = resolve_embed_spec(reader, self.cfg)
            version = model_version_of(spec.model, spec.dim, spec.seed, self.cfg.storage)
            check_model_version(version, reader.manifest, spec)
            self.spec, self.version = spec, version
        return self.spec, self.version

    def embedder(self, reader):
        """The EmbedStage of the index's model (loaded on first use)."""
        from artextract.stages.embed import EmbedStage  # lazy: torch

        if self._embedder is None:
            spec, version = self.check(reader)
            stage = EmbedStage(spec.model, image_size=spec.image_size, dim=spec.dim, seed=spec.seed,
                               device=self.cfg.detect.device, storage_cfg=self.cfg.storage)
            if stage.model_version != version:  # a checkpoint replaced between the two reads
                raise RuntimeError(f"{spec.model} changed while loading (model_version {version} -> "
                                   f"{stage.model_version})")
            self._embedder = stage
        return self._embedder

    def forget_model(self) -> None:
        """Resolve the model again on next use (a re-index may have changed the recorded one)."""
        self.spec = self.version = self._embedder = None

    def faces(self, image: np.ndarray, scale: float) -> list[dict[str, Any]]:
        """face_record dicts of every face preprocess would keep ([] with detection off)."""
        from artextract.stages.faces import FaceDetector, face_record  # lazy: the detectors' runtimes

        if not self.cfg.detect.enabled:
            return []
        if self._detector is None:
            self._detector = FaceDetector(self.cfg.detect)
        found = self._detector.detect([image])[0]
        return [face_record(k, f, image, scale, self.cfg.detect) for k, f in enumerate(found)]

    def warm_up(self, reader) -> None:
        """Load the detector and the model now (else on first use)."""
        self.embedder(reader)
        if self.cfg.detect.enabled and self._detector is None:
            from artextract.stages.faces import FaceDetector  # lazy: the detectors' runtimes

            self._detector = FaceDetector(self.cfg.detect)


def image_queries(reader, cfg, models: QueryModels | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(queries (q, d), per-query records) for ``cfg.image``; every record carries ``jpeg`` (the
    crop or whole painting, for the grid: pop it before writing JSON)."""
    models = models or QueryModels(cfg)
    spec, version = models.check(reader)  # before the expensive steps
    row = read_image(cfg.image, cfg)
    faces = detect_faces(row, cfg, models)
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
    vectors = models.embedder(reader).embed([r["jpeg"] for r in records])
    log.info("image query %s: %d face(s), model %s (%s)", cfg.image, len(faces), spec.model, spec.origin)
    return vectors, records
