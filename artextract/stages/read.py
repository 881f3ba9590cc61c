"""Batch stage: read each row's bytes from storage (local, S3 or http) and decode/validate them.
Failures become quarantined rows with a reason; nothing in a batch can fail the batch."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from artextract.core import storage
from artextract.config import DecodeConfig, StorageConfig
from artextract.stages.decode import Quarantine, configure_pil, decode, encode_jpeg, resize_long_side

_EMPTY = np.zeros((1, 1, 3), np.uint8)  # placeholder pixels for quarantined rows


class ReadDecodeStage:
    """(image_id, uri, ...) -> + status, reason, detail, original facts, det_image, whole_jpeg."""

    def __init__(self, decode_cfg: DecodeConfig, storage_cfg: StorageConfig, read_threads: int = 8):
        self.cfg, self.storage_cfg, self.read_threads = decode_cfg, storage_cfg, read_threads
        configure_pil(decode_cfg)

    def _read(self, uri: str) -> bytes | Quarantine:
        try:
            # Never more than max_bytes + 1: a huge file is quarantined as too large, not held first.
            return storage.read_bytes(uri, self.storage_cfg, limit=self.cfg.max_bytes)
        except FileNotFoundError as exc:
            return Quarantine("missing", storage.redact(str(exc)))
        except storage.StorageAccessError as exc:  # a row pointing outside storage.local_root
            return Quarantine("outside_root", storage.redact(str(exc)))
        except (OSError, ValueError) as exc:  # transport errors after the retries ran out
            return Quarantine("read_error", storage.redact(f"{type(exc).__name__}: {exc}"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        uris = [str(u) for u in batch["uri"]]
        # Object-store latency dominates small reads: fetch a batch's objects concurrently.
        with ThreadPoolExecutor(max_workers=min(self.read_threads, max(1, len(uris)))) as pool:
            payloads = list(pool.map(self._read, uris))
        rows = [self._one(p) for p in payloads]
        out = {k: v for k, v in batch.items()}
        for key in rows[0]:
            values = [r[key] for r in rows]
            out[key] = np.empty(len(values), dtype=object) if key in ("det_image", "whole_jpeg") else np.array(values)
            if key in ("det_image", "whole_jpeg"):
                out[key][:] = values
        return out

    def _one(self, payload: bytes | Quarantine) -> dict:
        row = dict(status="ok", reason="", detail="", bytes=-1, orig_width=-1, orig_height=-1,
                   orig_mode="", orig_format="", n_frames=0, det_scale=0.0, det_image=_EMPTY,
                   whole_jpeg=b"", whole_width=0, whole_height=0)
        try:
            if isinstance(payload, Quarantine):
                raise payload
            row["bytes"] = len(payload)
            d = decode(payload, self.cfg)
        except Quarantine as q:
            row.update(status="quarantined", reason=q.reason, detail=q.detail[:500])
            return row
        whole = resize_long_side(d.det_image, self.cfg.whole_size)
        row.update(orig_width=d.orig_width, orig_height=d.orig_height, orig_mode=d.orig_mode,
                   orig_format=d.orig_format, n_frames=d.n_frames, det_scale=d.scale,
                   det_image=d.det_image, whole_jpeg=encode_jpeg(whole, self.cfg.jpeg_quality),
                   whole_width=whole.shape[1], whole_height=whole.shape[0])
        return row
