"""The server's side of search, web-framework free: which index version is served (reloaded when
CURRENT moves), uploads kept for follow-up queries, query vectors of stored keys, and paging. The
search itself -- hits, pose and copy re-ranking, boxes -- is :class:`artextract.search.service.SearchService`,
the same one ``artextract search`` runs.

Uploads are embedded exactly like ``search --image`` (:mod:`artextract.search.query`: same model
resolution and model_version check, same decode limits, FaceDetector + face_record crops,
EmbedStage), but from bytes in memory, with the detector and model loaded once per process.
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
from artextract.config import ServeConfig, StorageConfig
from artextract.index import versions as V
from artextract.search.catalog import LRU, Catalog, indexed_ids
from artextract.search.query import DETECTION_OFF, NO_FACE, QueryModels
from artextract.search.service import SearchService, fetch_depth
from artextract.stages import decode as D

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

    service: SearchService
    indexed: set[str]
    loaded_at: float

    @property
    def reader(self) -> Any:
        return self.service.reader

    @property
    def catalog(self) -> Catalog:
        return self.service.catalog


class Engine:
    """Index + catalog + models behind the HTTP routes (thread-safe)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._checked = 0.0
        self.uploads = LRU(cfg.upload_cache)
        self.models = QueryModels(cfg)  # kept across reloads (the model is re-resolved on a new version)
        self._retiring: list[threading.Timer] = []
        # Bounds the memory of concurrent upload decodes (each up to decode.max_pixels of RGB and more).
        self._decode_slots = threading.BoundedSemaphore(cfg.upload_decodes)
        self.served = self._load(None)

    # ------------------------------------------------------------------ index lifecycle

    def _load(self, version: int | None) -> Served:
        service = SearchService.open(self.cfg, self.cfg.parallel, version, models=self.models)
        reader = service.reader
        log.info("serving %s version %d: %d vectors", self.cfg.index, reader.version, reader.ntotal)
        return Served(service, indexed_ids(reader), time.time())

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
                    self.models.forget_model()  # a re-index may have changed the recorded model
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

    def _embedder(self, reader) -> Any:
        """The upload model; QueryError 503 when the index records none (and none was given)."""
        try:
            return self.models.embedder(reader)
        except ValueError as exc:
            if "records no embedding model" not in str(exc):
                raise
            log.warning("uploads are disabled: %s", storage.redact(str(exc)))
            raise QueryError(503, "uploads are disabled: the index records no embedding model (start the "
                                  "server with --model; details in the server log)") from None

    def warm_up(self) -> None:
        """Load the face detector and the embedding model now (else on the first upload)."""
        with self._model_lock:
            self._embedder(self.current().reader)
            self.models.warm_up(self.current().reader)

    def upload(self, data: bytes) -> Upload:
        """Decode, detect faces and embed an uploaded image; QueryError (4xx) for bad input."""
        if not self._decode_slots.acquire(timeout=self.cfg.upload_wait_s):
            raise QueryError(503, "the server is decoding other uploads: retry in a moment")
        try:
            d = D.decode(data, self.cfg.decode)
        except D.Quarantine as q:
            detail = " ".join(q.detail.split())[:160]
            raise QueryError(UPLOAD_STATUS.get(q.reason, 422), f"{q.reason}: {D.REASONS[q.reason]}"
                             + (f" ({detail})" if detail else "")) from None
        finally:
            self._decode_slots.release()
        served = self.current()
        whole = D.encode_jpeg(D.resize_long_side(d.det_image, self.cfg.decode.whole_size), self.cfg.decode.jpeg_quality)
        with self._model_lock:
            embedder = self._embedder(served.reader)
            records = self.models.faces(d.det_image, d.scale)
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
                q = self._embedder(reader).embed([jpeg])
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

    def search(self, served: Served, q: np.ndarray, pose_q: Any, offset: int, limit: int, pose: str = "off",
               copies: bool = False, query_key: V.Key | None = None, query_jpeg: bytes | None = None
               ) -> dict[str, Any]:
        """One page of hits for query vector ``q`` (1, d): the service's hits plus metadata and links.
        ``copies``: verify the shortlist against the query's pixels (``query_jpeg``, else the stored
        crop of ``query_key``)."""
        reader, cat = served.reader, served.catalog
        if q.shape[1] != reader.manifest["dim"]:
            raise QueryError(422, f"query has dim {q.shape[1]}, the index has dim {reader.manifest['dim']}")
        if copies and pose != "off":
            raise QueryError(422, "copies=true and pose= are two re-rankings: use one at a time")
        depth = min(self.cfg.max_k, offset + limit)
        if offset >= depth:
            raise QueryError(422, f"offset + limit may reach at most max_k={self.cfg.max_k}")
        # one more than the page needs, so the page knows whether a next one exists
        fetch = min(reader.ntotal, fetch_depth(depth + 1, pose, copies, self.cfg)) or 1
        ask = {"key": query_key, "pose": pose_q, "jpeg": query_jpeg}
        results, counts = served.service.search(q, [ask], depth + 1, fetch, pose, copies)
        hits = results[0]
        pose_note = None
        if pose != "off" and (pose_q is None or any(v is None or (isinstance(v, float) and math.isnan(v))
                                                    for v in pose_q)):
            pose_note = "the query has no head pose (whole painting or degenerate landmarks): order unchanged"
        page = hits[offset:depth]
        for h in page:
            h.update(cat.describe(h["image_id"]))
            h["image_url"] = image_url(h["image_id"])
            h["thumb_url"] = face_url(h["image_id"], h["face_idx"]) if h["face_idx"] >= 0 else h["image_url"]
        out = {"version": reader.version, "metric": reader.metric, "offset": offset, "limit": limit,
               "has_more": len(hits) > depth and depth < self.cfg.max_k,
               "pose": pose, "pose_note": pose_note, "hits": page}
        if copies:
            out["copies"] = {"verified_hits": sum(bool(h.get("verified")) for h in page),
                             "query_has_pixels": not counts.get("queries_without_pixels")}
        return out


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


def discover_reports(index: str, cfg: StorageConfig) -> dict[str, str]:
    """name -> directory of the demo's HTML reports beside a demo index (``<root>/similarity/index``)."""
    root = index.rstrip("/").rsplit("/", 2)[0] if index.rstrip("/").endswith("similarity/index") else None
    if not root:
        return {}
    found = {}
    for name, rel in (("classifier", "classifier/report"), ("similarity", "similarity/eval")):
        uri = storage.join(root, rel)
        if storage.exists(storage.join(uri, "summary.json"), cfg):  # a finished report run
            found[name] = uri
    return found
