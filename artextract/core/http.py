"""HTTP(S) reads with bounded retries and backoff (urllib3's Retry, as used by requests), and bounds
on what a server can make us do: redirects only to the same host (never https -> http), no
loopback/private/link-local targets unless allowed (a redirect to a cloud metadata endpoint must not
be followed), a byte cap, a deadline for the whole transfer and a capped Retry-After."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from artextract.core.schema import StorageConfig

_local = threading.local()
CHUNK = 1 << 16


class HostUnreachable(ConnectionError):
    """The host did not answer at all (DNS failure, refused, timeout): do not keep retrying."""


class RefusedTarget(OSError):
    """A URL or redirect we will not follow (another host, a downgrade, a private address)."""


@dataclass(frozen=True)
class Reply:
    """A finished GET: the final URL, its headers and its body (at most the byte cap)."""

    url: str
    status_code: int
    headers: Mapping[str, str]
    content: bytes


def _retry_class(cap_s: float) -> type[Retry]:
    class CappedRetry(Retry):
        # A server's Retry-After is honoured, but never past the cap (it could say "a day").
        def get_retry_after(self, response):  # type: ignore[override]
            after = super().get_retry_after(response)
            return None if after is None else min(after, cap_s)

    return CappedRetry


def session(cfg: StorageConfig) -> requests.Session:
    """A per-thread session that retries 429/5xx and connection resets with exponential backoff."""
    key = (cfg.http_retries, cfg.http_backoff_s, cfg.http_retry_after_max_s)
    s = getattr(_local, "sessions", {}).get(key)
    if s is None:
        retry = _retry_class(cfg.http_retry_after_max_s)(
            total=cfg.http_retries, connect=cfg.http_retries, read=cfg.http_retries, status=cfg.http_retries,
            backoff_factor=cfg.http_backoff_s, status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=("GET", "HEAD"), respect_retry_after_header=True, raise_on_status=False)
        s = requests.Session()
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.headers["User-Agent"] = "artextract/0.1 (+https://github.com/artextract)"
        _local.sessions = {**getattr(_local, "sessions", {}), key: s}
    return s


def _public_only(url: str) -> None:
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError):
        return  # unresolvable: the GET itself reports the host as unreachable
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
                or ip.is_unspecified:
            raise RefusedTarget(f"GET {parts.scheme}://{parts.netloc}: {parts.hostname} resolves to the non-public "
                                f"address {ip}; set storage.http_allow_private=true to read from it")


def _check_hop(url: str, origin: str, cfg: StorageConfig) -> None:
    new, old = urlsplit(url), urlsplit(origin)
    if new.scheme not in ("http", "https"):
        raise RefusedTarget(f"GET {origin}: redirect to a {new.scheme or 'relative'}: URL refused")
    if new.hostname != old.hostname:
        raise RefusedTarget(f"GET {origin}: redirect to another host ({new.hostname}) refused")
    if old.scheme == "https" and new.scheme == "http":
        raise RefusedTarget(f"GET {origin}: redirect from https to http refused")


def _body(resp: requests.Response, uri: str, limit: int, deadline: float) -> bytes:
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise OSError(f"GET {uri}: transfer took longer than its deadline (storage.http_deadline_s)")
        # read1: returns what one socket read brings, so a dripping server meets the deadline check.
        chunk = resp.raw.read1(CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit + 1]


def get(uri: str, cfg: StorageConfig, limit: int | None = None) -> Reply:
    """GET with retries; the body is read up to ``limit`` (+1 byte, default: fail above
    ``http_max_bytes``). Raises FileNotFoundError on 404/410, RefusedTarget for targets we will not
    read, HostUnreachable when nothing answers, OSError on other failures (bodies never quoted)."""
    deadline = time.monotonic() + cfg.http_deadline_s
    url = uri
    for _ in range(cfg.http_max_redirects + 1):
        if not cfg.http_allow_private:
            _public_only(url)
        try:
            resp = session(cfg).get(url, timeout=(cfg.connect_timeout_s, cfg.http_timeout_s), stream=True,
                                    allow_redirects=False)
        except requests.exceptions.RetryError as exc:
            raise OSError(f"GET {uri}: gave up after {cfg.http_retries} retries: {exc}") from exc
        except requests.exceptions.ConnectionError as exc:
            raise HostUnreachable(f"GET {uri}: cannot connect to {urlsplit(url).netloc}: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            raise OSError(f"GET {uri}: timed out: {exc}") from exc
        with resp:
            if resp.is_redirect:
                target = urljoin(url, resp.headers.get("Location", ""))
                _check_hop(target, url, cfg)
                url = target
                continue
            if resp.status_code in (404, 410):
                raise FileNotFoundError(f"GET {uri}: HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise OSError(f"GET {uri}: HTTP {resp.status_code}")
            body = _body(resp, uri, cfg.http_max_bytes if limit is None else limit, deadline)
            if limit is None and len(body) > cfg.http_max_bytes:
                raise OSError(f"GET {uri}: body larger than storage.http_max_bytes ({cfg.http_max_bytes})")
            return Reply(url, resp.status_code, CaseInsensitiveDict(resp.headers), body)
    raise RefusedTarget(f"GET {uri}: more than {cfg.http_max_redirects} redirects (storage.http_max_redirects)")


def get_bytes(uri: str, cfg: StorageConfig, limit: int | None = None) -> bytes:
    """The body of a GET (see get()); with ``limit``, at most ``limit + 1`` bytes are read."""
    return get(uri, cfg, limit).content


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
