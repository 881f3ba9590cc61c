"""Listing and header probing shared by the ingest sources: one recursive listing of a folder or
bucket prefix, unique image ids from relative paths, and image dimensions read from the first
bytes of each file (a ranged GET on S3) without decoding pixels."""
from __future__ import annotations

import io
import logging
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image

from artextract.core import storage
from artextract.config import IngestFolderConfig, StorageConfig

log = logging.getLogger(__name__)

# One source of truth for "what counts as an image file": the folder ingest's default.
IMAGE_EXTENSIONS: tuple[str, ...] = IngestFolderConfig().extensions
HEAD_BYTES = 64 * 1024
# Headers that do not fit in HEAD_BYTES (large EXIF, ICC profiles, XMP) almost always fit here.
RETRY_BYTES = 1024 * 1024

Entry = tuple[str, pafs.FileInfo]


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def list_tree(uri: str, cfg: StorageConfig | None = None) -> list[Entry]:
    """All non-hidden files under a folder or s3:// prefix as sorted (relpath, FileInfo) pairs."""
    loc = storage.filesystem_for(uri, cfg)
    out = []
    for info in storage.list_files(uri, cfg, recursive=True):
        rel = storage.relative(loc, info.path)
        if not _is_hidden(rel):
            out.append((rel, info))
    return out


def normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot ('JPG' -> '.jpg')."""
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def has_extension(relpath: str, extensions: Sequence[str]) -> bool:
    """True when ``relpath`` ends with one of the (normalized) ``extensions``, case-insensitively."""
    return relpath.lower().endswith(tuple(extensions))


def list_images(uri: str, cfg: StorageConfig | None, extensions: Iterable[str] = IMAGE_EXTENSIONS,
                include_all: bool = False) -> list[Entry]:
    """Image files (by extension, or every file with ``include_all``) under a folder or prefix."""
    exts = normalize_extensions(extensions)
    entries = list_tree(uri, cfg)
    return entries if include_all else [e for e in entries if has_extension(e[0], exts)]


def image_ids(relpaths: Sequence[str]) -> list[str]:
    """Ids = relative paths without extension, except where that would collide (a.jpg + a.png):
    those keep their full relative path, which is unique by construction."""
    ids = [posixpath.splitext(r)[0] for r in relpaths]
    while True:
        counts = Counter(ids)
        dup = {i for i, n in counts.items() if n > 1}
        if not dup:
            return ids
        # Relpaths are unique, so each round turns at least one colliding id into its relpath.
        ids = [r if i in dup else i for i, r in zip(ids, relpaths)]


def _dims(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return int(im.size[0]), int(im.size[1])


def probe_one(uri: str, cfg: StorageConfig | None = None) -> tuple[int | None, int | None]:
    """(width, height) as stored (before EXIF orientation) from the file header, or (None, None)."""
    for nbytes in (HEAD_BYTES, RETRY_BYTES):
        try:
            data = storage.read_head(uri, nbytes, cfg)
        except (OSError, ValueError) as exc:
            log.debug("probe %s: read failed: %s", uri, exc)
            return None, None
        try:
            return _dims(data)
        # Image plugins raise many exception types on truncated or hostile input, and a probe
        # must never fail the ingest: an undecodable file is quarantined later, not here.
        except Exception as exc:  # noqa: BLE001
            if len(data) < nbytes:
                # The whole file was read already, so more bytes cannot help.
                log.debug("probe %s: not an image header: %s", uri, exc)
                return None, None
    return None, None


def probe_dimensions(uris: Sequence[str], cfg: StorageConfig | None = None,
                     workers: int = 16) -> list[tuple[int | None, int | None]]:
    """Header-only (width, height) per URI in order; (None, None) where unreadable. Never raises."""
    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(uris)))) as pool:
        return list(pool.map(lambda u: probe_one(u, cfg), uris))


def core_columns(entries: Sequence[Entry], loc: storage.Location, ids: Sequence[str],
                 dims: Sequence[tuple[int | None, int | None]] | None, source: str) -> dict[str, pa.Array]:
    """The manifest's core columns for listed files (etag is not exposed by the listing: null)."""
    n = len(entries)
    mtimes = [i.mtime_ns // 1_000_000 if i.mtime_ns is not None else None for _, i in entries]
    dims = dims if dims is not None else [(None, None)] * n
    return {
        "image_id": pa.array(list(ids), pa.string()),
        "uri": pa.array([storage.uri_of(loc, i.path) for _, i in entries], pa.string()),
        "size": pa.array([i.size for _, i in entries], pa.int64()),
        "etag": pa.nulls(n, pa.string()),
        "mtime": pa.array(mtimes, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "width": pa.array([d[0] for d in dims], pa.int32()),
        "height": pa.array([d[1] for d in dims], pa.int32()),
        "source": pa.array([source] * n, pa.string()),
        "relpath": pa.array([r for r, _ in entries], pa.string()),
    }


def probe_counts(dims: Sequence[tuple[int | None, int | None]] | None) -> dict[str, int]:
    """probed_ok / probe_failed counts (both 0 when probing was off)."""
    if dims is None:
        return {"probed_ok": 0, "probe_failed": 0}
    ok = sum(1 for w, _ in dims if w is not None)
    return {"probed_ok": ok, "probe_failed": len(dims) - ok}
