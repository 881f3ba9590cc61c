"""HTTP(S) reads with bounded retries and backoff (urllib3's Retry, as used by requests)."""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from artextract.config import StorageConfig

_local = threading.local()


class HostUnreachable(ConnectionError):
    """The host did not answer at all (DNS failure, refused, timeout): do not keep retrying."""


def session(cfg: StorageConfig) -> requests.Session:
    """A per-thread session that retries 429/5xx and connection resets with exponential backoff."""
    key = (cfg.http_retries, cfg.http_backoff_s)
    s = getattr(_local, "sessions", {}).get(key)
    if s is None:
        retry = Retry(total=cfg.http_retries, connect=cfg.http_retries, read=cfg.http_retries,
                      status=cfg.http_retries, backoff_factor=cfg.http_backoff_s,
                      status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET", "HEAD"),
                      respect_retry_after_header=True, raise_on_status=False)
        s = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.headers["User-Agent"] = "artextract/0.1 (+https://github.com/artextract)"
        _local.sessions = {**getattr(_local, "sessions", {}), key: s}
    return s


def get(uri: str, cfg: StorageConfig, stream: bool = False) -> requests.Response:
    """GET with retries; raises FileNotFoundError on 404/410, OSError on other failures."""
    try:
        resp = session(cfg).get(uri, timeout=(cfg.connect_timeout_s, cfg.http_timeout_s), stream=stream)
    except requests.exceptions.RetryError as exc:
        raise OSError(f"GET {uri}: gave up after {cfg.http_retries} retries: {exc}") from exc
    except requests.exceptions.ConnectionError as exc:
        raise HostUnreachable(f"GET {uri}: cannot connect to {urlsplit(uri).netloc}: {exc}") from exc
    except requests.exceptions.Timeout as exc:
        raise OSError(f"GET {uri}: timed out: {exc}") from exc
    if resp.status_code in (404, 410):
        raise FileNotFoundError(f"GET {uri}: HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise OSError(f"GET {uri}: HTTP {resp.status_code}")
    return resp


def get_bytes(uri: str, cfg: StorageConfig, limit: int | None = None) -> bytes:
    """The body of a GET (see get()); with ``limit``, at most ``limit + 1`` bytes are read."""
    if limit is None:
        return get(uri, cfg).content
    with get(uri, cfg, stream=True) as resp:
        chunks, size = [], 0
        for chunk in resp.iter_content(chunk_size=min(1 << 20, limit + 1)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break  # closing the response drops the rest unread
        return b"".join(chunks)[:limit + 1]


def preflight(uri: str, timeout_s: float) -> None:
    """Fail fast when the host of ``uri`` cannot be reached at all (no retries, short timeout)."""
    parts = urlsplit(uri)
    try:
        requests.head(f"{parts.scheme}://{parts.netloc}/", timeout=timeout_s, allow_redirects=False)
    except requests.exceptions.RequestException as exc:
        raise HostUnreachable(
            f"cannot reach {parts.netloc} ({type(exc).__name__}). This machine may be offline: "
            "copy the images to a local directory or an s3:// bucket and ingest them with "
            "`artextract ingest folder --images URI`, or rerun the download where the host is reachable."
        ) from exc
