"""An exclusive writer lock ``out_uri/LOCK`` so that two builds/updates never publish at once.

Locally the lock file is created with ``os.open(O_CREAT | O_EXCL)``: exactly one creator wins.
On S3 pyarrow has no conditional put, so the lock is a boto3 ``PutObject`` with
``If-None-Match: *`` (S3 conditional writes, 2024; also MinIO and moto): the store rejects the
second creator with 412. Stores that ignore the header would let both writers in; as a second
line of defence the writer re-reads the lock and checks its own token, which narrows (but cannot
close) that window. A lock older than ``stale_after_s`` may be broken explicitly with
``force=True``; a fresh one never is.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from artextract import storage
from artextract.config import StorageConfig


class LockError(RuntimeError):
    """The index is locked by another writer."""


def _lock_uri(out_uri: str) -> str:
    return storage.join(out_uri, "LOCK")


def _create(uri: str, body: bytes, cfg: StorageConfig | None) -> bool:
    """Create the lock object only if absent; False when it already exists."""
    loc = storage.filesystem_for(uri, cfg)
    if not loc.is_s3:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        try:
            fd = os.open(loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return True
    from botocore.exceptions import ClientError

    bucket, _, key = loc.path.partition("/")
    try:
        storage.s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return False
        raise
    return True


def read_lock(out_uri: str, cfg: StorageConfig | None = None) -> dict[str, Any] | None:
    """The current lock's record (owner, host, pid, created), None when unlocked."""
    try:
        return json.loads(storage.read_bytes(_lock_uri(out_uri), cfg))
    except FileNotFoundError:
        return None
    except ValueError:  # created but not yet (or never: crash) filled in: age it by its mtime
        loc = storage.filesystem_for(_lock_uri(out_uri), cfg)
        mtime = loc.fs.get_file_info(loc.path).mtime
        created = mtime.timestamp() if mtime is not None else 0.0
        return {"token": None, "created": created, "host": "?", "pid": -1, "owner": "unreadable lock"}


def acquire(out_uri: str, cfg: StorageConfig | None = None, owner: str = "", force: bool = False,
            stale_after_s: float = 3600.0) -> str:
    """Take the lock; returns its token. Raises LockError when another writer holds it."""
    uri = _lock_uri(out_uri)
    token = uuid.uuid4().hex
    body = json.dumps({"token": token, "owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                       "created": time.time()}).encode()
    for attempt in range(2):
        if _create(uri, body, cfg):
            held = read_lock(out_uri, cfg)
            if held and held.get("token") == token:
                return token
        held = read_lock(out_uri, cfg) or {}
        age = time.time() - float(held.get("created", 0.0))
        if force and age > stale_after_s and attempt == 0:
            storage.delete_file(uri, cfg)
            continue
        hint = (f"it is older than {stale_after_s:.0f}s: if its writer crashed, rerun with force=True"
                if age > stale_after_s else
                f"force=True can break it only once it is older than {stale_after_s:.0f}s")
        raise LockError(f"index at {out_uri} is locked by another writer ({held.get('owner') or 'unknown'} "
                        f"on {held.get('host')} pid {held.get('pid')}, {age:.0f}s ago; lock file {uri}); "
                        f"another build/update is running, wait for it. {hint}")
    raise LockError(f"could not take the lock {uri}")


def release(out_uri: str, token: str, cfg: StorageConfig | None = None) -> None:
    """Remove the lock if it is still ours."""
    held = read_lock(out_uri, cfg)
    if held and held.get("token") == token:
        storage.delete_file(_lock_uri(out_uri), cfg)


@contextmanager
def index_lock(out_uri: str, cfg: StorageConfig | None = None, owner: str = "", force: bool = False,
               stale_after_s: float = 3600.0) -> Iterator[str]:
    """Hold the writer lock for the duration of a ``with`` block (released even on errors)."""
    token = acquire(out_uri, cfg, owner, force, stale_after_s)
    try:
        yield token
    finally:
        release(out_uri, token, cfg)
