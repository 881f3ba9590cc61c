"""Resumable, bounded-concurrency download of NGA IIIF images. Per-image failures are recorded,
not raised; only a host that stops answering altogether aborts the run."""
from __future__ import annotations

import io
import logging
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests
from PIL import Image, UnidentifiedImageError

from artextract.core import http, storage
from artextract.config import DownloadConfig, StorageConfig

log = logging.getLogger("artextract.ingest.nga")


@dataclass(frozen=True)
class Job:
    """One image to fetch: where from, where to, and the dimensions we expect it to have."""

    image_id: str
    url: str
    dest: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Fetched:
    """The outcome for one Job: a stored file (downloaded or already present) or a failure."""

    image_id: str
    url: str
    uri: str | None = None
    size: int | None = None
    etag: str | None = None
    mtime: datetime | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    skipped: bool = False
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        """True when the image is stored at ``uri``."""
        return self.reason is None


def _image_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) read from the image header; None when the body is not an image."""
    try:
        with Image.open(io.BytesIO(body)) as img:
            return img.size
    except Image.DecompressionBombError:
        # A very large but real image: it is an image, we just do not trust PIL to size it here.
        return (0, 0)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def fetch_one(job: Job, cfg: StorageConfig) -> Fetched:
    """GET one image (http.get retries 429/5xx with backoff), check it is an image, store it."""
    try:
        resp = http.get(job.url, cfg)
        body = resp.content
    except http.HostUnreachable as exc:
        return Fetched(job.image_id, job.url, reason=f"unreachable: {exc}", unreachable=True)
    except FileNotFoundError as exc:
        return Fetched(job.image_id, job.url, reason=f"not found: {exc}")
    except OSError as exc:  # retries exhausted, 4xx/5xx, timeouts
        return Fetched(job.image_id, job.url, reason=f"http error: {exc}")
    except requests.exceptions.RequestException as exc:  # truncated/undecodable body
        return Fetched(job.image_id, job.url, reason=f"transfer error: {type(exc).__name__}: {exc}")
    size = _image_size(body)
    if size is None:
        ctype = resp.headers.get("Content-Type", "?")
        return Fetched(job.image_id, job.url,
                       reason=f"not an image: Content-Type {ctype}, {len(body)} bytes")  # never the body itself
    width, height = size if size != (0, 0) else (job.width, job.height)
    # Storage errors (disk full, bucket permissions) are not per-image problems: let them raise.
    storage.write_bytes(job.dest, body, cfg)
    return Fetched(job.image_id, job.url, uri=job.dest, size=len(body), etag=resp.headers.get("ETag"),
                   mtime=datetime.now(timezone.utc), width=width, height=height)


def _existing(images_out: str, cfg: StorageConfig) -> dict[str, tuple[int, datetime | None]]:
    """basename -> (size, mtime) of the files already under ``images_out`` (one listing)."""
    out = {}
    for info in storage.list_files(images_out, cfg, recursive=False):
        mtime = info.mtime
        if mtime is not None and mtime.tzinfo is None:
            mtime = mtime.replace(tzinfo=timezone.utc)
        out[info.base_name] = (info.size, mtime)
    return out


def download(jobs: list[Job], dl: DownloadConfig, cfg: StorageConfig,
             previous: dict[str, dict] | None = None) -> list[Fetched]:
    """Fetch every job not already stored; returns one Fetched per job, in the order of ``jobs``.

    ``previous`` maps image_id -> an earlier manifest row, used to keep the ETag and dimensions
    of files skipped because they are already present.
    """
    previous = previous or {}
    present = _existing(dl.images_out, cfg)
    results: dict[str, Fetched] = {}
    todo: list[Job] = []
    for job in jobs:
        size, mtime = present.get(posixpath.basename(job.dest.replace("\\", "/")), (0, None))
        if not size:  # absent (or an empty file, which cannot be an image): fetch it
            todo.append(job)
            continue
        prev = previous.get(job.image_id) or {}
        same = prev.get("uri") == job.dest and prev.get("size") == size
        results[job.image_id] = Fetched(
            job.image_id, job.url, uri=job.dest, size=size, skipped=True,
            etag=prev.get("etag") if same else None,
            mtime=(prev.get("mtime") if same else None) or mtime,
            width=prev.get("width") if same else job.width,
            height=prev.get("height") if same else job.height)
    log.info("download: %d images, %d already in %s, %d to fetch with %d workers",
             len(jobs), len(results), dl.images_out, len(todo), dl.concurrency)
    if todo:
        # Fail fast, with advice, when the image host cannot be reached at all (e.g. offline).
        http.preflight(todo[0].url, dl.preflight_timeout_s)
        results.update(_fetch_all(todo, dl, cfg))
    return [results[job.image_id] for job in jobs]


def _fetch_all(todo: list[Job], dl: DownloadConfig, cfg: StorageConfig) -> dict[str, Fetched]:
    """Run fetch_one over ``todo`` in a thread pool, logging progress every ~5%."""
    out: dict[str, Fetched] = {}
    step = max(1, len(todo) // 20)
    # A host that stops answering mid-run would otherwise turn every remaining image into a
    # slow "failed" row; abort instead once this many requests in a row could not connect.
    abort_after = max(10, 2 * dl.concurrency)
    consecutive_unreachable = ok = 0
    pool = ThreadPoolExecutor(max_workers=dl.concurrency, thread_name_prefix="nga-download")
    futures: list[Future] = [pool.submit(fetch_one, job, cfg) for job in todo]
    try:
        for done, fut in enumerate(as_completed(futures), 1):
            res: Fetched = fut.result()
            out[res.image_id] = res
            ok += res.ok
            consecutive_unreachable = consecutive_unreachable + 1 if res.unreachable else 0
            if consecutive_unreachable >= abort_after:
                raise http.HostUnreachable(
                    f"{urlsplit(res.url).netloc} stopped answering: {consecutive_unreachable} downloads "
                    f"in a row could not connect ({done}/{len(todo)} attempted, {ok} stored). Rerun "
                    f"to resume (stored images are skipped). Last error: {res.reason}")
            if done % step == 0 or done == len(todo):
                log.info("download: %d/%d (%.0f%%), %d stored, %d failed", done, len(todo),
                         100.0 * done / len(todo), ok, done - ok)
    finally:
        # On abort or a storage error, do not start the queued downloads.
        pool.shutdown(wait=True, cancel_futures=True)
    return out
