"""Every input and output is a URI: a local path, ``file://``, ``s3://bucket/prefix`` or (read-only)
``http(s)://``. Filesystems come from pyarrow.fs; S3 credentials come from the standard AWS chain
(environment, profile, instance role) and are never stored in our configs or outputs.

Writes are atomic: local files are written under a temporary name and renamed; S3 objects are
uploaded from one in-memory buffer, and an S3 object only becomes visible when its upload
completes, so a crash never leaves a half-written file visible under its final name.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from artextract.core.schema import StorageConfig
from artextract.core.http import get_bytes

HTTP_SCHEMES = ("http://", "https://")
# The AWS SDK retries failed requests, but not a response whose body breaks off mid-stream or an
# error body that does not fit a small ranged read ("Failed to flush response stream", measured
# with the fault proxy of bench/reliability.py). Whole-object operations are idempotent, so we
# retry those a few more times; missing keys and denied access are final at once.
_S3_OUTER_ATTEMPTS = 5
# An endpoint that cannot be reached at all (curl 6: host not resolved, 7: connection refused) has
# had the SDK's own retries already; five more rounds of backoff would only delay the error by 17 s.
_S3_FINAL = ("NO_SUCH_KEY", "NoSuchKey", "NO_SUCH_BUCKET", "NoSuchBucket", "ACCESS_DENIED", "AccessDenied",
             "Forbidden", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH", "curlCode: 6,", "curlCode: 7,")


def _transient_s3(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    msg = str(exc)
    return isinstance(exc, OSError) and "AWS Error" in msg and not any(f in msg for f in _S3_FINAL)


def _s3_retry(fn):
    """Retry an idempotent whole-object operation on an s3:// URI after a transient SDK failure."""
    @functools.wraps(fn)
    def wrapper(uri: str, *args: Any, **kwargs: Any):
        if not uri.startswith("s3://"):
            return fn(uri, *args, **kwargs)
        for attempt in range(_S3_OUTER_ATTEMPTS):
            try:
                return fn(uri, *args, **kwargs)
            except OSError as exc:
                if attempt == _S3_OUTER_ATTEMPTS - 1 or not _transient_s3(exc):
                    raise
                time.sleep(0.2 * 4 ** attempt)
    return wrapper


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem and the path inside it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


def is_remote(uri: str) -> bool:
    """True for URIs that do not name a local path."""
    return uri.startswith(("s3://",) + HTTP_SCHEMES)


def join(base: str, *parts: str) -> str:
    """Join URI path segments with '/', keeping the scheme of ``base``."""
    if is_remote(base) or base.startswith("file://"):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def _endpoint(cfg: StorageConfig) -> str | None:
    # The AWS SDKs read AWS_ENDPOINT_URL(_S3); honour it too so MinIO/Ceph work without a config.
    return cfg.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


@functools.lru_cache(maxsize=16)
def _s3_filesystem(endpoint: str | None, region: str | None, max_attempts: int, anonymous: bool,
                   connect_timeout: float, request_timeout: float) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = dict(
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        anonymous=anonymous,
    )
    if region:
        kwargs["region"] = region
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host or scheme
        kwargs["scheme"] = scheme if host else "https"
        # S3-compatible stores (MinIO, Ceph, moto) address buckets by path.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


class StorageAccessError(ValueError):
    """A local path that resolves outside ``StorageConfig.local_root``. A ValueError, so the CLI
    reports it in one line and the read stage can quarantine the row instead of failing the job."""


def confine(path: str, root: str) -> str:
    """The real path of ``path`` (relative paths are taken relative to ``root``), or
    StorageAccessError when it is not inside ``root``.

    Both sides go through ``realpath``, so '..' segments and symlinks (anywhere in the path) are
    resolved before the comparison: a link inside the root that points out of it is refused. The
    caller then opens the resolved path, not the original one, so the link is not followed again.
    """
    real_root = os.path.realpath(os.path.expanduser(root))
    real = os.path.realpath(os.path.join(real_root, os.path.expanduser(path)))  # join keeps absolute paths
    if os.path.commonpath([real, real_root]) != real_root:
        raise StorageAccessError(f"{path!r} resolves to {real!r}, outside storage.local_root {real_root!r}")
    return real


def s3_client(cfg: StorageConfig | None = None):
    """A boto3 S3 client for what pyarrow.fs cannot do (conditional puts, ETag listings), with the
    same endpoint, region and standard-mode retries as the pyarrow filesystem."""
    import boto3
    from botocore.config import Config

    cfg = cfg or StorageConfig()
    return boto3.client("s3", endpoint_url=_endpoint(cfg), region_name=cfg.s3_region,
                        config=Config(retries={"max_attempts": cfg.s3_max_attempts, "mode": "standard"}))


def filesystem_for(uri: str, cfg: StorageConfig | None = None) -> Location:
    """Resolve ``uri`` to a pyarrow filesystem and path. HTTP URIs cannot be resolved (read-only).

    Every local path of every job passes through here, which makes it the one place that enforces
    ``cfg.local_root`` (StorageAccessError for paths that escape it)."""
    cfg = cfg or StorageConfig()
    if uri.startswith(HTTP_SCHEMES):
        raise ValueError(f"{uri!r}: http(s) URIs are read-only; use read_bytes()")
    if uri.startswith("s3://"):
        fs = _s3_filesystem(_endpoint(cfg), cfg.s3_region, cfg.s3_max_attempts, cfg.s3_anonymous,
                            cfg.connect_timeout_s, cfg.request_timeout_s)
        return Location(fs, uri[len("s3://"):].rstrip("/"), uri)
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if cfg.local_root:
        return Location(pafs.LocalFileSystem(), confine(path, cfg.local_root), uri)
    return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path)), uri)


@_s3_retry
def exists(uri: str, cfg: StorageConfig | None = None) -> bool:
    """True when a file (not a directory) exists at ``uri``."""
    loc = filesystem_for(uri, cfg)
    return loc.fs.get_file_info(loc.path).type == pafs.FileType.File


@_s3_retry
def read_bytes(uri: str, cfg: StorageConfig | None = None, limit: int | None = None) -> bytes:
    """Read a whole object, or with ``limit`` at most ``limit + 1`` bytes (so a caller can tell "too
    large" without holding the rest). Raises FileNotFoundError, or OSError for transport failures."""
    if uri.startswith(HTTP_SCHEMES):
        return get_bytes(uri, cfg or StorageConfig(), limit)
    loc = filesystem_for(uri, cfg)
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read() if limit is None else f.read(limit + 1)


@_s3_retry
def download(uri: str, dest: str, cfg: StorageConfig | None = None, chunk: int = 16 << 20) -> str:
    """Stream an object into the local file ``dest`` (rewritten from the start on a retry), a chunk
    at a time so a large object never sits in memory whole; returns its sha256 hex digest."""
    loc = filesystem_for(uri, cfg)
    digest = hashlib.sha256()
    with loc.fs.open_input_stream(loc.path) as src, open(dest, "wb") as out:
        while block := src.read(chunk):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


@_s3_retry
def read_head(uri: str, nbytes: int, cfg: StorageConfig | None = None) -> bytes:
    """Read the first ``nbytes`` of an object (a ranged GET on S3), e.g. to probe image headers."""
    loc = filesystem_for(uri, cfg)
    with loc.fs.open_input_file(loc.path) as f:
        return f.read(nbytes)


@_s3_retry
def write_bytes(uri: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    """Atomically write ``data`` to ``uri`` (temp name + rename locally; one upload on S3)."""
    loc = filesystem_for(uri, cfg)
    parent = posixpath.dirname(loc.path) if loc.is_s3 else os.path.dirname(loc.path)
    if not loc.is_s3:
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(loc.path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, loc.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    # One write then close: the multipart upload completes only at close, so a crash before it
    # leaves nothing visible.
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(data)


def write_text(uri: str, text: str, cfg: StorageConfig | None = None) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(uri, text.encode("utf-8"), cfg)


def write_json(uri: str, obj: Any, cfg: StorageConfig | None = None) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", cfg)


def read_json(uri: str, cfg: StorageConfig | None = None) -> Any:
    """Read a JSON document."""
    return json.loads(read_bytes(uri, cfg))


def write_parquet(uri: str, table: pa.Table, cfg: StorageConfig | None = None) -> None:
    """Atomically write a parquet file (serialised in memory first, then one atomic write)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(uri, sink.getvalue().to_pybytes(), cfg)


PARTS_MARKER = "_parts.json"


def part_files(uri: str, cfg: StorageConfig | None = None) -> list[str]:
    """URIs of the committed ``part-*.parquet`` shards of a directory, sorted ([] when none).

    A directory published as a set (``publish_parts``: a manifest) lists its shards in
    ``_parts.json``, written last: exactly those are read, never a half-written newer set or the
    leftovers of an older one. Elsewhere every ``part-*`` file directly under ``uri`` is a shard;
    other parquet files beside them (e.g. missing.parquet) are not.
    """
    loc = filesystem_for(uri, cfg)
    try:
        marker = json.loads(read_bytes(join(uri, PARTS_MARKER), cfg))
    except FileNotFoundError:
        marker = None
    if marker is not None:
        return [join(uri, name) for name in marker["parts"]]
    return sorted(uri_of(loc, f.path) for f in list_files(uri, cfg, suffix=".parquet", recursive=False)
                  if f.base_name.startswith("part-"))


def publish_parts(uri: str, tables: list[pa.Table], cfg: StorageConfig | None = None) -> list[str]:
    """Write ``tables`` as the shard set of directory ``uri`` so readers switch from the old set to
    the new one at once: new shards under names no reader uses yet, then ``_parts.json`` naming them
    (one atomic put), then the old shards are deleted. A crash before the marker leaves the old set
    in force; its stray new shards are removed by the next publish. Returns the shard URIs."""
    marker = join(uri, PARTS_MARKER)
    before = {posixpath.basename(u) for u in part_files(uri, cfg)}
    loose = {f.base_name for f in list_files(uri, cfg, suffix=".parquet", recursive=False)
             if f.base_name.startswith("part-")}
    if not exists(marker, cfg):
        # No set recorded yet: pin what readers see now (the plain shards, or nothing) before any
        # new shard lands beside them, so neither a reader nor a crash mixes the two.
        write_text(marker, json.dumps({"parts": sorted(before), "rows": None}), cfg)
    # The first set in an empty place keeps the plain names; a rewrite gets names of its own.
    tag = "" if not loose else f"-g{time.time_ns():x}{uuid.uuid4().hex[:6]}"
    names = [f"part-{i:05d}{tag}.parquet" for i in range(len(tables))]
    for name, table in zip(names, tables):
        write_parquet(join(uri, name), table, cfg)
    write_text(marker, json.dumps({"parts": names, "rows": sum(len(t) for t in tables)}), cfg)
    for name in sorted((before | loose) - set(names)):
        delete_file(join(uri, name), cfg)
    return [join(uri, n) for n in names]


@_s3_retry
def read_parquet(uri: str, cfg: StorageConfig | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read one parquet file or a directory of ``part-*.parquet`` shards as one table."""
    loc = filesystem_for(uri, cfg)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no parquet file or directory at {uri}")
    if info.type == pafs.FileType.File:
        return _read_parquet_file(loc, loc.path, columns, cfg)
    for attempt in range(2):
        files = [filesystem_for(u, cfg).path for u in part_files(uri, cfg)]
        if not files:
            raise FileNotFoundError(f"no parquet shards under {uri}")
        try:
            tables = [_read_parquet_file(loc, p, columns, cfg) for p in sorted(files)]
            return pa.concat_tables(tables, promote_options="default")
        except FileNotFoundError:
            if attempt:  # a publish replaced the set while we read it: read the new one once
                raise
    raise AssertionError("unreachable")


def _read_parquet_file(loc: Location, path: str, columns: list[str] | None, cfg: StorageConfig | None) -> pa.Table:
    """One parquet file with ranged reads of just ``columns``; after a transient S3 failure (a
    500/503 error body breaks the SDK's small ranged reads without a retry) the whole object is
    read instead, by the retried whole-object GET."""
    try:
        return pq.read_table(path, filesystem=loc.fs, columns=columns)
    except OSError as exc:
        if not (loc.is_s3 and _transient_s3(exc)):
            raise
    data = read_bytes(uri_of(loc, path), cfg)
    return pq.read_table(pa.BufferReader(data), columns=columns)


@_s3_retry
def list_files(uri: str, cfg: StorageConfig | None = None, suffix: str | tuple[str, ...] = "",
               recursive: bool = True) -> list[pafs.FileInfo]:
    """List files under a directory/prefix (recursively), sorted by path; [] when it is absent."""
    loc = filesystem_for(uri, cfg)
    selector = pafs.FileSelector(loc.path, recursive=recursive, allow_not_found=True)
    infos = [i for i in loc.fs.get_file_info(selector) if i.type == pafs.FileType.File]
    if suffix:
        infos = [i for i in infos if i.path.lower().endswith(suffix)]
    return sorted(infos, key=lambda i: i.path)


def uri_of(loc: Location, path: str) -> str:
    """Turn a filesystem path found under ``loc`` back into a URI of the same scheme."""
    return f"s3://{path}" if loc.is_s3 else path


def relative(base: Location, path: str) -> str:
    """Path of ``path`` relative to ``base.path`` with '/' separators."""
    rel = posixpath.relpath(path, base.path) if base.is_s3 else os.path.relpath(path, base.path)
    return rel.replace(os.sep, "/")


def delete_file(uri: str, cfg: StorageConfig | None = None) -> None:
    """Delete one file if present."""
    loc = filesystem_for(uri, cfg)
    try:
        loc.fs.delete_file(loc.path)
    except FileNotFoundError:
        pass


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove credential values (from the environment and ``secrets``) from a message."""
    values = [os.environ.get(k) for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")]
    for v in list(values) + list(secrets):
        if v and len(v) >= 4:
            text = text.replace(v, "***")
    return text
