"""An exclusive writer lock ``out_uri/LOCK`` so that two builds/updates never publish at once.

The lock is a lease: its record says who holds it and until when (``expires``), and the holder
renews it from a heartbeat thread while it works, so a lock whose lease ran out belongs to a writer
that died. Every decision reads the record, never the caller's own idea of "stale".

- Create: locally ``os.open(O_CREAT | O_EXCL)``; on S3 a boto3 ``PutObject`` with
  ``If-None-Match: *`` (S3 conditional writes; also MinIO and moto): exactly one creator wins. A
  create whose success response was lost and whose retry got 412 finds its own token in the record
  and keeps the lock.
- Break (``force=True``, only once the lease expired): replace exactly the record that was read,
  never a newer one: on S3 a ``PutObject`` with ``If-Match: <ETag read>``; locally an atomic rename
  to a unique name, then a check that the renamed file is the record judged stale (a lock created
  in between is put back). Two writers breaking the same stale lock cannot both win.
- Publish: :func:`check_held` re-reads the record just before CURRENT moves; a writer whose lock
  was broken (it stalled past its lease) fails instead of publishing over the new holder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from artextract.core import storage
from artextract.config import StorageConfig

log = logging.getLogger(__name__)
DEFAULT_LEASE_S = 600.0
LEGACY_LEASE_S = 3600.0  # records written before leases: stale an hour after creation
_HELD: dict[str, "Lease"] = {}  # out_uri -> the lease this process holds on it
_HELD_LOCK = threading.Lock()


class LockError(RuntimeError):
    """The index is locked by another writer (or this writer lost its lock)."""


def _lock_uri(out_uri: str) -> str:
    return storage.join(out_uri, "LOCK")


def _precondition_failed(exc: Exception) -> bool:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in (
        "PreconditionFailed", "ConditionalRequestConflict", "412")


def _create(uri: str, body: bytes, cfg: StorageConfig | None) -> bool:
    """Create the lock object only if absent; False when it already exists."""
    loc = storage.filesystem_for(uri, cfg)
    if not loc.is_s3:
        # Under the swap guard: absent -> write it whole (a private file renamed into place), so
        # the lock never exists empty or half-written.
        with _guard(loc.path):
            if os.path.exists(loc.path):
                return False
            os.replace(_private_copy(loc.path, body), loc.path)
        return True
    from botocore.exceptions import ClientError

    bucket, _, key = loc.path.partition("/")
    try:
        storage.s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as exc:
        if _precondition_failed(exc):
            return False
        raise
    return True


def _read(uri: str, cfg: StorageConfig | None) -> tuple[dict[str, Any] | None, str | None]:
    """(record, S3 ETag or None) of the lock; (None, None) when there is none."""
    loc = storage.filesystem_for(uri, cfg)
    etag = None
    try:
        if loc.is_s3:
            bucket, _, key = loc.path.partition("/")
            try:
                obj = storage.s3_client(cfg).get_object(Bucket=bucket, Key=key)
            except Exception as exc:  # botocore NoSuchKey
                if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise
            data, etag = obj["Body"].read(), obj["ETag"]
        else:
            data = storage.read_bytes(uri, cfg)
    except FileNotFoundError:
        return None, None
    try:
        return json.loads(data), etag
    except ValueError:  # created but not yet (or never: crash) filled in: age it by its mtime
        mtime = loc.fs.get_file_info(loc.path).mtime
        created = mtime.timestamp() if mtime is not None else 0.0
        return {"token": None, "created": created, "host": "?", "pid": -1, "owner": "unreadable lock"}, etag


def read_lock(out_uri: str, cfg: StorageConfig | None = None) -> dict[str, Any] | None:
    """The current lock's record (token, owner, host, pid, created, lease_s, expires), None when unlocked."""
    return _read(_lock_uri(out_uri), cfg)[0]


def expires_at(record: dict[str, Any]) -> float:
    """When the lease in ``record`` runs out (epoch seconds)."""
    if record.get("expires") is not None:
        return float(record["expires"])
    return float(record.get("created", 0.0)) + LEGACY_LEASE_S


def _record(token: str, owner: str, lease_s: float, created: float | None = None) -> bytes:
    now = time.time()
    return json.dumps({"token": token, "owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                       "created": created or now, "lease_s": lease_s, "expires": now + lease_s}).encode()


def _replace(uri: str, seen: dict[str, Any], etag: str | None, body: bytes, cfg: StorageConfig | None) -> bool:
    """Swap the record ``seen`` for ``body`` only if ``seen`` is still the lock; False if it is not."""
    loc = storage.filesystem_for(uri, cfg)
    if loc.is_s3:
        from botocore.exceptions import ClientError

        bucket, _, key = loc.path.partition("/")
        try:
            storage.s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)
        except ClientError as exc:
            if _precondition_failed(exc) or getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchKey":
                return False
            raise
        return True
    # Local: a compare-and-swap under the swap guard, so the lock path is never empty (a breaker
    # that moved a fresh lock aside to compare it let a third writer create its own: two winners)
    # and only one writer at a time compares and replaces.
    with _guard(loc.path):
        now, _ = _read(uri, cfg)
        if now is None or (now.get("token"), now.get("created")) != (seen.get("token"), seen.get("created")):
            return False
        os.replace(_private_copy(loc.path, body), loc.path)  # readers see the old record or the new
        return True


def _private_copy(path: str, body: bytes) -> str:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(body)
    return tmp


@contextmanager
def _guard(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<LOCK>.swap``, held for the milliseconds of one check-and-write
    of a local lock. The kernel drops it when its holder dies, so it never goes stale; the file
    itself stays (removing it would let two writers lock two different files)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(f"{path}.swap", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def acquire(out_uri: str, cfg: StorageConfig | None = None, owner: str = "", force: bool = False,
            lease_s: float = DEFAULT_LEASE_S) -> str:
    """Take the lock (a lease of ``lease_s`` until renewed); returns its token. Raises LockError
    when another writer holds it; ``force=True`` breaks it only once its recorded lease expired."""
    uri = _lock_uri(out_uri)
    token = uuid.uuid4().hex
    if _create(uri, _record(token, owner, lease_s), cfg):
        held, _ = _read(uri, cfg)
        if held and held.get("token") == token:
            return token
    held, etag = _read(uri, cfg)
    held = held or {}
    if held.get("token") == token:  # our create succeeded, its response was lost, the retry got 412
        return token
    left = expires_at(held) - time.time()
    if force and left < 0 and held and _replace(uri, held, etag, _record(token, owner, lease_s), cfg):
        log.warning("broke the stale lock of %s (%s on %s pid %s, lease expired %.0fs ago)", out_uri,
                    held.get("owner") or "unknown", held.get("host"), held.get("pid"), -left)
        mine, _ = _read(uri, cfg)
        if mine and mine.get("token") == token:
            return token
    age = time.time() - float(held.get("created", 0.0))
    hint = (f"its lease expired {-left:.0f}s ago: if its writer crashed, rerun with force=True" if left < 0 else
            f"force=True can break it only once its lease expires (in {left:.0f}s) without renewal")
    raise LockError(f"index at {out_uri} is locked by another writer ({held.get('owner') or 'unknown'} "
                    f"on {held.get('host')} pid {held.get('pid')}, {age:.0f}s ago; lock file {uri}); "
                    f"another build/update is running, wait for it. {hint}")


def renew(out_uri: str, token: str, cfg: StorageConfig | None = None) -> None:
    """Extend our lease from now; LockError when the lock is no longer ours."""
    uri = _lock_uri(out_uri)
    held, etag = _read(uri, cfg)
    if not held or held.get("token") != token:
        raise LockError(f"lost the lock of {out_uri}: now held by {(held or {}).get('owner') or 'nobody'}")
    body = _record(token, held.get("owner", ""), float(held.get("lease_s") or DEFAULT_LEASE_S), held.get("created"))
    if not _replace(uri, held, etag, body, cfg):  # only if it is still the record we just read
        raise LockError(f"lost the lock of {out_uri} while renewing it")


def check_held(out_uri: str, cfg: StorageConfig | None = None) -> None:
    """Before publishing: if this process locked ``out_uri``, the lock must still be ours."""
    with _HELD_LOCK:
        lease = _HELD.get(out_uri)
    if lease is None:
        return
    if lease.lost is not None:
        raise lease.lost
    held = read_lock(out_uri, cfg)
    if not held or held.get("token") != lease.token:
        raise LockError(f"lost the lock of {out_uri} before publishing (now held by "
                        f"{(held or {}).get('owner') or 'nobody'}): not publishing over another writer")


def release(out_uri: str, token: str, cfg: StorageConfig | None = None) -> None:
    """Remove the lock if it is still ours (locally under the swap guard: a breaker's new lock
    written between our check and the delete must not be the one deleted)."""
    uri = _lock_uri(out_uri)
    loc = storage.filesystem_for(uri, cfg)
    with (_guard(loc.path) if not loc.is_s3 else contextlib.nullcontext()):
        held = read_lock(out_uri, cfg)
        if held and held.get("token") == token:
            storage.delete_file(uri, cfg)


class Lease:
    """A held lock and the heartbeat thread that renews it every ``lease_s / 4``."""

    def __init__(self, out_uri: str, token: str, cfg: StorageConfig | None, lease_s: float):
        self.out_uri, self.token, self.cfg, self.lease_s = out_uri, token, cfg, lease_s
        self.lost: LockError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="index-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                renew(self.out_uri, self.token, self.cfg)
            except LockError as exc:
                self.lost = exc
                return
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again next beat
                log.warning("could not renew the lock of %s: %s", self.out_uri, storage.redact(str(exc)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def index_lock(out_uri: str, cfg: StorageConfig | None = None, owner: str = "", force: bool = False,
               lease_s: float = DEFAULT_LEASE_S) -> Iterator[str]:
    """Hold the writer lock (renewed by a heartbeat) for a ``with`` block; released even on errors."""
    token = acquire(out_uri, cfg, owner, force, lease_s)
    lease = Lease(out_uri, token, cfg, lease_s)
    with _HELD_LOCK:
        _HELD[out_uri] = lease
    try:
        yield token
    finally:
        lease.stop()
        with _HELD_LOCK:
            _HELD.pop(out_uri, None)
        release(out_uri, token, cfg)
