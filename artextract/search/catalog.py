"""What the server knows about each indexed image besides its vectors: metadata, face boxes and
poses, and the JPEG bytes it shows -- all read through :mod:`artextract.core.storage`, never linked.

Where it comes from (first that applies, per index version; with ``discover=False`` -- the CLI --
only the explicit ``faces=`` / ``manifest=``):

- faces (preprocess output: ``faces/`` crop_jpeg, box, yaw/pitch/roll; ``images/`` whole_jpeg,
  orig_width/orig_height): ``faces=``; else the reindex snapshot (``collection.parquet`` of the
  served version; each row's ``delta`` names ``<index>/work/deltas/<delta>/preprocessed``); else
  the preprocess output recorded in the index's ``lineage`` (index.json, written at build time).
- metadata (title, artist, date, IIIF urls): ``manifest=``; else the snapshot itself; else the
  manifest recorded in the lineage.

The server's catalog returns no object-storage URI: metadata is limited to :data:`PUBLIC_COLUMNS`
(``columns``), and only ``http(s)`` IIIF links (public image servers) are passed on.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from artextract.core import layout, storage
from artextract.config import StorageConfig
from artextract.index import versions as V
from artextract.index.collection import read_snapshot

log = logging.getLogger(__name__)

PUBLIC_COLUMNS = ("title", "attribution", "artist", "displaydate", "date", "style", "genre", "relpath",
                  "iiif_thumb_url", "iiif_bounded_url", "iiif_full_url")
IIIF_COLUMNS = ("iiif_full_url", "iiif_bounded_url", "iiif_thumb_url")


def clean(v: Any) -> Any:
    """A JSON-safe metadata value: dates as ISO text, non-finite floats as None."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _round(v: float | None) -> float | None:
    return None if v is None or v != v else round(float(v), 2)


class LRU:
    """A small thread-safe LRU dict (thumbnail bytes, uploaded queries)."""

    def __init__(self, size: int):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._d:
                return None
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


class Catalog:
    """Metadata, faces and images of one index version (module docstring says where from)."""

    def __init__(self, index: str, version: int, cfg: StorageConfig, faces: str | None = None,
                 manifest: str | None = None, lineage: dict[str, Any] | None = None, discover: bool = True,
                 columns: tuple[str, ...] = PUBLIC_COLUMNS):
        self.cfg, self.columns = cfg, tuple(columns)
        self.strict = not discover  # explicit inputs only (the CLI): unreadable ones are errors
        self.default_faces: str | None = faces
        self.by_delta: dict[str, str] = {}  # image_id -> preprocess output (reindex deltas)
        lineage = lineage or {}
        meta: pa.Table | None = None
        snapshot = None
        if discover and (not faces or not manifest):
            snapshot = read_snapshot(index, version, cfg)
        if not faces and snapshot is not None and "delta" in snapshot.column_names:
            for i, d in zip(snapshot["image_id"].to_pylist(), snapshot["delta"].to_pylist()):
                if d:
                    self.by_delta[i] = storage.join(index, "work", "deltas", d, "preprocessed")
        if discover and not faces and not self.by_delta:
            self.default_faces = lineage.get("preprocess") or None
        if manifest:
            meta = self._read_meta(manifest, strict=self.strict)
        elif snapshot is not None:
            meta = snapshot
        elif discover and lineage.get("manifest"):
            meta = self._read_meta(lineage["manifest"])
        self.sources = {"faces": self.default_faces or ("reindex deltas" if self.by_delta else None),
                        "manifest": manifest or ("reindex snapshot" if snapshot is not None else
                                                 ("preprocess manifest" if meta is not None else None))}
        self.meta: dict[str, dict[str, Any]] = {}
        if meta is not None:
            cols = [c for c in self.columns if c in meta.column_names and c != "image_id"]
            for row in meta.select(["image_id"] + cols).to_pylist():
                self.meta[str(row.pop("image_id"))] = {c: clean(v) for c, v in row.items()}
        self._search_text = {i: " ".join(str(m.get(c) or "") for c in ("title", "attribution", "artist",
                                                                           "relpath", "displaydate", "date")
                                         ).lower() + " " + i.lower() for i, m in self.meta.items()}
        self._bytes = LRU(512)
        log.info("catalog v%d: faces from %s, metadata from %s (%d rows)", version, self.sources["faces"],
                 self.sources["manifest"], len(self.meta))

    def _read_meta(self, uri: str, strict: bool = False) -> pa.Table | None:
        """The manifest's metadata columns; an unreadable one is logged and skipped (a server keeps
        serving), or raised when ``strict`` (the CLI was given it explicitly)."""
        try:
            dataset = layout.Manifest(uri, self.cfg).dataset()
        except (OSError, ValueError) as exc:
            if strict:
                raise
            log.warning("metadata manifest %s unreadable: %s", uri, exc)
            return None
        cols = ["image_id"] + [c for c in self.columns if c in dataset.schema.names and c != "image_id"]
        return dataset.to_table(columns=cols)

    # ------------------------------------------------------------------ metadata

    def describe(self, image_id: str) -> dict[str, Any]:
        """Public metadata of an image: title, artist, date, iiif (an http(s) link or None)."""
        m = self.meta.get(image_id, {})
        iiif = next((m[c] for c in IIIF_COLUMNS if isinstance(m.get(c), str)
                     and m[c].startswith(("http://", "https://"))), None)
        return {"title": m.get("title") or m.get("relpath") or image_id,
                "artist": m.get("attribution") or m.get("artist"),
                "date": m.get("displaydate") or m.get("date"),
                "style": m.get("style"), "genre": m.get("genre"), "iiif": iiif}

    def find(self, text: str, indexed: set[str] | None, limit: int, offset: int = 0) -> tuple[int, list[str]]:
        """(matches, image_ids) whose title/artist/file/date contain every word of ``text``."""
        words = text.lower().split()
        pool = sorted(indexed) if indexed is not None else sorted(self.meta)
        ids = [i for i in pool if all(w in self._search_text.get(i, i.lower()) for w in words)]
        return len(ids), ids[offset:offset + limit]

    # ------------------------------------------------------------------ preprocess rows

    def _groups(self, image_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i in image_ids:
            src = self.by_delta.get(i) or self.default_faces
            if src:
                out.setdefault(src, []).append(i)
        return out

    @property
    def has_faces(self) -> bool:
        """Whether any preprocess output (boxes, crops, poses) is known."""
        return bool(self.default_faces or self.by_delta)

    def _rows(self, table: str, image_ids: list[str], columns: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for src, ids in self._groups(sorted(set(image_ids))).items():
            try:
                rows.extend(layout.PreprocessOutput(src, self.cfg).table(table).rows(
                    ids, columns, optional=True).to_pylist())
            except (OSError, ValueError) as exc:
                if self.strict:
                    raise
                log.warning("cannot read %s rows from %s: %s", table, src, exc)
        return rows

    def faces_of(self, image_id: str) -> list[dict[str, Any]]:
        """Every detected face of an image: face_idx, box (original pixels), pose (yaw, pitch, roll)."""
        rows = self._rows("faces", [image_id], ["face_idx", "box", "prob", "yaw", "pitch", "roll"])
        return sorted(({"face_idx": int(r["face_idx"]),
                        "box": [round(float(x), 1) for x in r["box"]] if r.get("box") is not None else None,
                        "pose": [_round(r.get(a)) for a in ("yaw", "pitch", "roll")]} for r in rows),
                      key=lambda f: f["face_idx"])

    def size_of(self, image_id: str) -> tuple[int, int] | None:
        """(width, height) of the original image (face boxes are in these pixels)."""
        rows = self._rows("images", [image_id], ["orig_width", "orig_height"])
        if rows and rows[0].get("orig_width", -1) > 0:
            return int(rows[0]["orig_width"]), int(rows[0]["orig_height"])
        return None

    def poses(self, keys: list[V.Key]) -> dict[V.Key, tuple[float, float, float]]:
        """(yaw, pitch, roll) of the given face keys that have one."""
        rows = self._rows("faces", [k[0] for k in keys], ["face_idx", "yaw", "pitch", "roll"])
        return {(r["image_id"], int(r["face_idx"])): (r["yaw"], r["pitch"], r["roll"]) for r in rows}

    def boxes(self, keys: list[V.Key]) -> dict[V.Key, list[float]]:
        """Face boxes (original pixels) of the given keys."""
        rows = self._rows("faces", [k[0] for k in keys], ["face_idx", "box"])
        return {(r["image_id"], int(r["face_idx"])): [round(float(x), 2) for x in r["box"]]
                for r in rows if r.get("box") is not None}

    def face_jpeg(self, image_id: str, face_idx: int) -> bytes | None:
        """The stored aligned face crop (JPEG bytes), None when unknown."""
        key = ("face", image_id, face_idx)
        hit = self._bytes.get(key)
        if hit is None:
            rows = self._rows("faces", [image_id], ["face_idx", "crop_jpeg"])
            hit = next((r["crop_jpeg"] for r in rows if int(r["face_idx"]) == face_idx and r["crop_jpeg"]), b"")
            self._bytes.put(key, hit)
        return hit or None

    def pixels(self, keys: list[V.Key]) -> tuple[dict[V.Key, bytes], dict[str, bytes]]:
        """(face crops by key, whole paintings by image_id) of ``keys``: whole paintings for
        whole-image keys and for faces without a stored crop. Cache misses are read in one bulk read
        per table, and the answer is built from what was read (the byte cache is bounded, so a large
        grid must not depend on it keeping every entry)."""
        crops: dict[V.Key, bytes] = {}
        todo = set()
        for k in (k for k in keys if k[1] >= 0):
            hit = self._bytes.get(("face", *k))
            if hit is None:
                todo.add(k[0])
            elif hit:
                crops[k] = hit
        if todo:
            got = {(r["image_id"], int(r["face_idx"])): r["crop_jpeg"]
                   for r in self._rows("faces", sorted(todo), ["face_idx", "crop_jpeg"])}
            for k in keys:
                if k[1] >= 0 and k[0] in todo:
                    self._bytes.put(("face", *k), got.get(k) or b"")
                    if got.get(k):
                        crops[k] = got[k]
        wholes: dict[str, bytes] = {}
        missing = []
        for i in sorted({k[0] for k in keys if k[1] < 0 or k not in crops}):
            hit = self._bytes.get(("image", i))
            if hit is None:
                missing.append(i)
            elif hit:
                wholes[i] = hit
        if missing:
            got = {r["image_id"]: r["whole_jpeg"] for r in self._rows("images", missing, ["whole_jpeg"])
                   if r.get("whole_jpeg")}
            for i in missing:
                self._bytes.put(("image", i), got.get(i, b""))
            wholes.update(got)
        return crops, wholes

    def image_jpeg(self, image_id: str) -> bytes | None:
        """The stored whole-painting JPEG (preprocess ``whole_jpeg``), None when unknown."""
        key = ("image", image_id)
        hit = self._bytes.get(key)
        if hit is None:
            rows = self._rows("images", [image_id], ["whole_jpeg"])
            hit = next((r["whole_jpeg"] for r in rows if r.get("whole_jpeg")), b"")
            self._bytes.put(key, hit)
        return hit or None


def indexed_ids(reader) -> set[str]:
    """Distinct image_ids the reader's version holds."""
    return set(pc.unique(pa.array(reader._image_ids, pa.string())).to_pylist())
