"""The server's search core, web-framework free: the served index version (reloaded when CURRENT
moves), its catalog, query vectors (stored key, uploaded image, raw vector), pose filter/re-rank
and paging.

Uploads are embedded exactly like :mod:`artextract.index.query_image` does for ``search --image``
(same model resolution and model_version check, same decode limits, FaceDetector + face_record
crops, EmbedStage), but from bytes in memory and with the detector and model loaded once per
process instead of once per query.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np

from artextract.core import storage
from artextract.config import SearchConfig, ServeConfig
from artextract.index import versions as V
from artextract.serve.catalog import LRU, Catalog, indexed_ids

log = logging.getLogger(__name__)

# decode reason -> HTTP status of a rejected upload
UPLOAD_STATUS = {"too_large_file": 413, "decompression_bomb": 413, "not_an_image": 415, "empty": 400}


class QueryError(Exception):
    """A request the index cannot answer; ``status`` is the HTTP status to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    """An uploaded query image kept for follow-up searches: vectors by face_idx (-1 = whole)."""

    id: str
    width: int
    height: int
    faces: list[dict[str, Any]]
    vectors: dict[int, np.ndarray]
    jpegs: dict[int, bytes]
    note: str | None = None
    poses: dict[int, tuple[float, float, float] | None] = field(default_factory=dict)


@dataclass
class Served:
    """One loaded index version and its catalog."""

    reader: Any
    catalog: Catalog
    indexed: set[str]
    loaded_at: float


class Engine:
    """Index + catalog + models behind the HTTP routes (thread-safe)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._checked = 0.0
        self.uploads = LRU(cfg.upload_cache)
        self._detector = None
        self._embedder = None
        self._retiring: list[threading.Timer] = []
        # Bounds the memory of concurrent upload decodes (each up to decode.max_pixels of RGB and more).
        self._decode_slots = threading.BoundedSemaphore(cfg.upload_decodes)
        self.served = self._load(None)

    # ------------------------------------------------------------------ index lifecycle

    def _search_cfg(self) -> SearchConfig:
        return SearchConfig(index=self.cfg.index, model=self.cfg.model, decode=self.cfg.decode,
                            detect=self.cfg.detect, storage=self.cfg.storage, nprobe=self.cfg.nprobe)

    def _load(self, version: int | None) -> Served:
        if self.cfg.parallel == "ray":
            from artextract.index.ray_search import RayIndexReader
            from artextract.pipelines.ray_env import init_ray

            init_ray(self.cfg.ray)
            reader = RayIndexReader(self.cfg.index, self.cfg.storage, version=version, **self.cfg.reader_kwargs(),
                                    **self.cfg.ray_kwargs())
        else:
            from artextract.index.search import IndexReader

            reader = IndexReader(self.cfg.index, self.cfg.storage, version=version, **self.cfg.reader_kwargs())
        from artextract.index.query_image import recorded_embeddings

        catalog = Catalog(self.cfg.index, reader.version, self.cfg.storage, self.cfg.faces, self.cfg.manifest,
                          recorded_embeddings(reader, self.cfg.storage))
        log.info("serving %s version %d: %d vectors", self.cfg.index, reader.version, reader.ntotal)
        return Served(reader, catalog, indexed_ids(reader), time.time())

    def current(self) -> Served:
        """The served version, reloading first when CURRENT moved (checked every ``reload_s``)."""
        now = time.monotonic()
        if now - self._checked < self.cfg.reload_s:
            return self.served
        with self._lock:
            if now - self._checked < self.cfg.reload_s:
                return self.served
            self._checked = now
            try:
                latest = V.current_version(self.cfg.index, self.cfg.storage)
            except (OSError, ValueError) as exc:
                log.warning("cannot read CURRENT of %s (keep serving v%d): %s", self.cfg.index,
                            self.served.reader.version, exc)
                return self.served
            if latest is not None and latest != self.served.reader.version:
                old = self.served
                try:
                    self.served = self._load(latest)
                    self._embedder = None  # a re-index may have changed the recorded model
                except Exception as exc:  # noqa: BLE001 - a broken new version must not stop serving
                    log.error("cannot load version %s of %s (keep serving v%d): %s", latest,
                              self.cfg.index, old.reader.version, exc)
                else:
                    self._retire(old)
            return self.served

    def _retire(self, old: Served) -> None:
        # Requests that fetched ``old`` before the swap may still be searching it (with Ray, its shard
        # actors): close it only after a grace period longer than any request.
        timer = threading.Timer(self.cfg.reload_grace_s, old.reader.close)
        timer.daemon = True
        self._retiring.append(timer)
        timer.start()

    def close(self) -> None:
        """Release the reader (Ray actors, when used), and any old version still in its grace period."""
        for timer in self._retiring:
            if not timer.finished.is_set():  # still in its grace period: close it now
                timer.cancel()
                timer.function()
        self._retiring.clear()
        self.served.reader.close()

    # ------------------------------------------------------------------ models (uploads)

    def _models(self, reader) -> tuple[Any, Any]:
        from artextract.index.query_image import check_model_version, resolve_embed_spec
        from artextract.stages.embed import EmbedStage, model_version_of
        from artextract.stages.faces import FaceDetector

        if self._embedder is None:
            scfg = self._search_cfg()
            try:
                spec = resolve_embed_spec(reader, scfg)
            except ValueError as exc:  # ConfigError: the index records no model
                log.warning("uploads are disabled: %s", storage.redact(str(exc)))
                raise QueryError(503, "uploads are disabled: the index records no embedding model (start the "
                                      "server with --model; details in the server log)") from None
            version = model_version_of(spec.model, spec.dim, spec.seed, self.cfg.storage)
            check_model_version(version, reader.manifest, spec)
            self._embedder = EmbedStage(spec.model, image_size=spec.image_size, dim=spec.dim, seed=spec.seed,
                                        device=self.cfg.detect.device, storage_cfg=self.cfg.storage)
        if self._detector is None and self.cfg.detect.enabled:
            self._detector = FaceDetector(self.cfg.detect)
        return self._detector, self._embedder

    def warm_up(self) -> None:
        """Load the face detector and the embedding model now (else on the first upload)."""
        with self._model_lock:
            self._models(self.current().reader)

    def upload(self, data: bytes) -> Upload:
        """Decode, detect faces and embed an uploaded image; QueryError (4xx) for bad input."""
        from artextract.index.query_image import DETECTION_OFF, NO_FACE
        from artextract.stages.decode import REASONS, Quarantine, decode, encode_jpeg, resize_long_side
        from artextract.stages.faces import face_record

        if not self._decode_slots.acquire(timeout=self.cfg.upload_wait_s):
            raise QueryError(503, "the server is decoding other uploads: retry in a moment")
        try:
            d = decode(data, self.cfg.decode)
        except Quarantine as q:
            detail = " ".join(q.detail.split())[:160]
            raise QueryError(UPLOAD_STATUS.get(q.reason, 422), f"{q.reason}: {REASONS[q.reason]}"
                             + (f" ({detail})" if detail else "")) from None
        finally:
            self._decode_slots.release()
        served = self.current()
        whole = encode_jpeg(resize_long_side(d.det_image, self.cfg.decode.whole_size), self.cfg.decode.jpeg_quality)
        with self._model_lock:
            detector, embedder = self._models(served.reader)
            found = detector.detect([d.det_image])[0] if detector is not None else []
            records = [face_record(k, f, d.det_image, d.scale, self.cfg.detect) for k, f in enumerate(found)]
            jpegs = {-1: whole, **{int(r["face_idx"]): r["crop_jpeg"] for r in records}}
            keys = sorted(jpegs)
            vecs = embedder.embed([jpegs[k] for k in keys])
        faces = [{"face_idx": int(r["face_idx"]), "box": [round(float(x), 1) for x in r["box"]],
                  "prob": round(float(r["prob"]), 4),
                  "pose": [None if not math.isfinite(r[a]) else round(r[a], 2) for a in ("yaw", "pitch", "roll")]}
                 for r in records]
        up = Upload(uuid.uuid4().hex, d.orig_width, d.orig_height, faces, dict(zip(keys, vecs)), jpegs,
                    note=None if records else (NO_FACE if self.cfg.detect.enabled else DETECTION_OFF))
        up.poses = {f["face_idx"]: tuple(math.nan if v is None else v for v in f["pose"]) for f in faces}
        self.uploads.put(up.id, up)
        return up

    # ------------------------------------------------------------------ queries

    def stored_query(self, served: Served, image_id: str, face_idx: int) -> tuple[np.ndarray, Any]:
        """(vector (1, d), query pose) of a stored key; a whole painting not in the index is
        embedded from its stored JPEG with the upload model."""
        reader = served.reader
        if image_id not in served.indexed:
            raise QueryError(404, f"image_id {image_id!r} is not in the index (version {reader.version})")
        if reader.key_of(V.key_id(image_id, face_idx)) == (image_id, face_idx):
            try:
                q = reader.reconstruct([(image_id, face_idx)])
            except RuntimeError as exc:
                raise QueryError(409, f"this index type cannot return stored vectors: {exc}") from None
        elif face_idx == -1:
            jpeg = served.catalog.image_jpeg(image_id)
            if jpeg is None:
                raise QueryError(404, f"no stored image for {image_id!r} to embed as a whole painting")
            with self._model_lock:
                q = self._models(reader)[1].embed([jpeg])
        else:
            raise QueryError(404, f"face {face_idx} of {image_id!r} is not in the index")
        pose = served.catalog.poses([(image_id, face_idx)]).get((image_id, face_idx)) if face_idx >= 0 else None
        return q, pose

    def upload_query(self, upload_id: str, face_idx: int) -> tuple[np.ndarray, Any]:
        """(vector (1, d), pose) of a face (or -1: the whole image) of an earlier upload."""
        up = self.uploads.get(upload_id)
        if up is None:
            raise QueryError(404, "this upload has expired from the server's cache: upload the image again")
        if face_idx not in up.vectors:
            raise QueryError(404, f"the upload has no face {face_idx}")
        return up.vectors[face_idx][None, :], up.poses.get(face_idx)

    def search(self, served: Served, q: np.ndarray, pose_q: Any, offset: int, limit: int,
               pose: str = "off") -> dict[str, Any]:
        """One page of hits for query vector ``q`` (1, d): rank, score, pose distance, metadata, links."""
        from artextract.index.pose_rank import apply_pose

        reader, cat = served.reader, served.catalog
        if q.shape[1] != reader.manifest["dim"]:
            raise QueryError(422, f"query has dim {q.shape[1]}, the index has dim {reader.manifest['dim']}")
        depth = min(self.cfg.max_k, offset + limit)
        if offset >= depth:
            raise QueryError(422, f"offset + limit may reach at most max_k={self.cfg.max_k}")
        # one more than the page needs, so the page knows whether a next one exists
        fetch = min(reader.ntotal, (depth + 1) * (self.cfg.pose_oversample if pose != "off" else 1)) or 1
        scores, keys = reader.search(q, fetch, self.cfg.nprobe, self.cfg.k_factor)
        hits = [{"rank": r + 1, "image_id": k[0], "face_idx": int(k[1]), "score": round(float(s), 6)}
                for r, (s, k) in enumerate(zip(scores[0], keys[0]))]
        pose_note = None
        if pose != "off":
            if pose_q is None or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in pose_q):
                pose_note = "the query has no head pose (whole painting or degenerate landmarks): order unchanged"
            poses = cat.poses([(h["image_id"], h["face_idx"]) for h in hits if h["face_idx"] >= 0])
            qp = None if pose_q is None else tuple(math.nan if v is None else float(v) for v in pose_q)
            hits = apply_pose(hits, qp, poses, pose, depth + 1, self.cfg.pose_max_deg, self.cfg.pose_weight)
        page = hits[offset:depth]
        boxes = cat.boxes([(h["image_id"], h["face_idx"]) for h in page if h["face_idx"] >= 0])
        for h in page:
            h.update(cat.describe(h["image_id"]))
            h["box"] = boxes.get((h["image_id"], h["face_idx"]))
            h["image_url"] = image_url(h["image_id"])
            h["thumb_url"] = face_url(h["image_id"], h["face_idx"]) if h["face_idx"] >= 0 else h["image_url"]
        return {"version": reader.version, "metric": reader.metric, "offset": offset, "limit": limit,
                "has_more": len(hits) > depth and depth < self.cfg.max_k,
                "pose": pose, "pose_note": pose_note, "hits": page}


def image_url(image_id: str) -> str:
    """API path of an image's stored whole-painting JPEG."""
    from urllib.parse import quote

    return f"/api/image/{quote(image_id, safe='')}"


def face_url(image_id: str, face_idx: int) -> str:
    """API path of a stored face crop."""
    from urllib.parse import quote

    return f"/api/face/{quote(image_id, safe='')}/{int(face_idx)}"


def redactor(cfg: ServeConfig) -> Callable[[str], str]:
    """What an API response must never show: any s3:// URI, ``bucket/key`` text of every bucket the
    server reads (pyarrow names objects that way), and the S3 endpoint's URL or host."""
    buckets = {urlsplit(u).netloc for u in (cfg.index, cfg.faces, cfg.manifest, cfg.model, cfg.reports)
               if u and u.startswith("s3://")}
    patterns = [r"s3://[^\s'\"<>]*", *(re.escape(b) + r"/[^\s'\"<>]*" for b in sorted(buckets))]
    if cfg.storage.s3_endpoint:
        host = urlsplit(cfg.storage.s3_endpoint).netloc
        patterns += [r"https?://" + re.escape(host) + r"[^\s'\"<>]*", re.escape(host)]
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    return lambda text: rx.sub("<storage>", text)
