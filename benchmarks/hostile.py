"""Hostile inputs and lock races, measured for the Reliability section (``bench.reliability``).

Each case runs the library as a job would and records what a user cares about: did the bad input
get refused or quarantined, how much memory and time did that cost, did a race leave exactly one
winner. The memory cases run in a fresh interpreter each and report its peak RSS growth over the
imports (``ru_maxrss``), so one case's allocations never hide in another's.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

MB = 1 << 20

# Each memory case: (setup writing its input under DIR, action), run as ``python -c``.
_MEMORY_CASES = {
    "oversized file (512 MB sparse, max_bytes 64 MB)": (
        "open(f'{D}/big.jpg', 'wb').truncate(512 << 20)",
        "from artextract.config import DecodeConfig\nfrom artextract.stages.read import ReadDecodeStage\n"
        "import numpy as np\nfrom artextract.config import StorageConfig\n"
        "st = ReadDecodeStage(DecodeConfig(max_bytes=64 << 20), StorageConfig())\n"
        "out = st({'image_id': np.array(['big']), 'uri': np.array([f'{D}/big.jpg']), 'shard': np.array([0])})\n"
        "RESULT = f\"{out['status'][0]}: {out['reason'][0]}\""),
    "16-bit PNG 7000x7000 (detect at 1024 px)": (
        "import numpy as np; from PIL import Image\n"
        "Image.fromarray(np.zeros((7000, 7000), np.uint16)).save(f'{D}/deep.png')",
        "from artextract.config import DecodeConfig\nfrom artextract.stages.decode import decode\n"
        "d = decode(open(f'{D}/deep.png', 'rb').read(), DecodeConfig())\n"
        "RESULT = f'decoded to {d.det_image.shape[1]}x{d.det_image.shape[0]} for detection'"),
}

_RUNNER = """
import resource, sys, time
D = sys.argv[1]
{setup}
import artextract.config, artextract.core.storage, PIL.Image, numpy  # imports are the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
{action}
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import json
print(json.dumps({{"result": RESULT, "peak_mb": round((peak - base) / 1024, 1), "seconds": round(wall, 2)}}))
"""


def _memory_case(setup: str, action: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="artextract-hostile-") as d:
        code = _RUNNER.format(setup=setup, action=action)
        proc = subprocess.run([sys.executable, "-c", code, d], capture_output=True, text=True, timeout=300)
        if proc.returncode:
            return {"result": f"FAILED: {proc.stderr.strip().splitlines()[-1][:120]}", "peak_mb": None, "seconds": None}
        return json.loads(proc.stdout.strip().splitlines()[-1])


class _Server:
    """127.0.0.1 server: ``routes`` path -> (status, headers, body bytes or a writer callable)."""

    def __init__(self, routes: dict[str, tuple[int, dict, Any]], host: str = "127.0.0.1"):
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    body(self.wfile) if callable(body) else self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the case measures

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _timed(fn: Callable[[], Any]) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        fn()
        what = "read (not refused)"
    except Exception as exc:  # noqa: BLE001 - the refusal is the result
        what = f"{type(exc).__name__}: {str(exc)[:90]}"
    return what, round(time.perf_counter() - t0, 2)


def _http_cases() -> list[dict[str, Any]]:
    from artextract.core import http
    from artextract.config import StorageConfig

    cfg = StorageConfig(http_allow_private=True, http_retries=1, http_backoff_s=0.01, http_deadline_s=2.0,
                        http_timeout_s=5.0, http_retry_after_max_s=1.0)
    meta = _Server({"/creds": (200, {}, b'{"AccessKeyId":"ASIA..."}')}, host="127.0.0.2")

    def drip(w):
        for _ in range(60):
            w.write(b"x")
            w.flush()
            time.sleep(0.5)

    a = _Server({"/moved": (302, {"Location": f"{meta.url}/creds"}, b""),
                 "/drip": (200, {"Content-Length": "60"}, drip),
                 "/busy": (503, {"Retry-After": "3600"}, b"busy")})
    rows = []
    try:
        for name, path in (("redirect to another host (a metadata-style endpoint)", "/moved"),
                           ("server dripping 1 byte / 0.5 s, http_deadline_s 2", "/drip"),
                           ("503 with Retry-After: 3600, http_retry_after_max_s 1", "/busy")):
            what, secs = _timed(lambda: http.get(f"{a.url}{path}", cfg))
            rows.append({"case": name, "result": what, "seconds": secs, "peak_mb": None})
        rows.append({"case": "private address without http_allow_private",
                     "result": _timed(lambda: http.get("http://169.254.169.254/latest/meta-data/", StorageConfig()))[0],
                     "seconds": None, "peak_mb": None})
        rows[0]["result"] += f" (the other host saw {len(meta.hits)} requests)"
    finally:
        a.close()
        meta.close()
    return rows


def _lock_race(rounds: int = 100, writers: int = 8) -> dict[str, Any]:
    from artextract.core import storage
    from artextract.index import lock as L

    ok = 0
    with tempfile.TemporaryDirectory(prefix="artextract-lock-") as d:
        for r in range(rounds):
            base = str(Path(d) / f"idx{r}")
            stale = {"token": "dead", "owner": "crashed", "host": "h", "pid": 1, "created": time.time() - 7200,
                     "lease_s": 600, "expires": time.time() - 3600}
            storage.write_bytes(storage.join(base, "LOCK"), json.dumps(stale).encode())

            def grab(_):
                try:
                    return L.acquire(base, owner="racer", force=True)
                except L.LockError:
                    return None

            with ThreadPoolExecutor(writers) as pool:
                got = [t for t in pool.map(grab, range(writers)) if t]
            ok += len(got) == 1 and L.read_lock(base)["token"] == got[0]
    return {"case": f"{writers} writers force-breaking one stale LOCK at once, {rounds} rounds",
            "result": f"exactly one winner in {ok}/{rounds} rounds", "seconds": None, "peak_mb": None}


def _manifest_crash() -> dict[str, Any]:
    """A 3-shard manifest rewritten as 2 shards by a writer that dies after its first new shard."""
    import pyarrow as pa

    from artextract import manifest as mf
    from artextract.core import storage

    def rows(n: int, tag: str) -> pa.Table:
        return pa.table({"image_id": [f"{i:03d}" for i in range(n)], "uri": [f"/{tag}/{i}.jpg" for i in range(n)]})

    with tempfile.TemporaryDirectory(prefix="artextract-manifest-") as d:
        uri = str(Path(d) / "manifest")
        mf.write(rows(6, "old"), uri, 2)
        real, calls = storage.write_parquet, []

        def dies_after_one(u, table, cfg=None):
            calls.append(u)
            if len(calls) == 2:
                raise OSError("writer killed")
            real(u, table, cfg)

        storage.write_parquet = dies_after_one
        try:
            mf.write(rows(4, "new"), uri, 2)
        except OSError:
            pass
        finally:
            storage.write_parquet = real
        seen = mf.read(uri)["uri"].to_pylist()
    kinds = sorted({u.split("/")[1] for u in seen})
    return {"case": "manifest rewrite (3 shards -> 2) killed after its first new shard",
            "result": f"readers see {len(seen)} rows, all {'/'.join(kinds)} (the old manifest whole)"
            if kinds == ["old"] and len(seen) == 6 else f"MIXED: {len(seen)} rows from {kinds}",
            "seconds": None, "peak_mb": None}


def run() -> list[dict[str, Any]]:
    """Every case; each row: case, result, seconds, peak_mb (None where not measured)."""
    rows = [{"case": name, **_memory_case(*spec)} for name, spec in _MEMORY_CASES.items()]
    return rows + _http_cases() + [_lock_race(), _manifest_crash()]


SECTION = "Reliability (hostile inputs and lock races)"


def section(rows: list[dict[str, Any]], argv: list[str], started: str) -> str:
    from benchmarks.harness import git_commit, machine

    info = machine()
    out = [f"## {SECTION}", "",
           f"Command: `python -m benchmarks.hostile {shlex.join(argv)}` ({started}, commit {git_commit()}; "
           f"{info.get('cores', '?')} cores, {info.get('ram', '?')}); also run by `bench.reliability`.", "",
           "Each case as a job meets it (local disk, local HTTP servers on 127.0.0.x): what happened, its wall "
           "time, and for decoding the peak RSS growth of a fresh process over its imports (`ru_maxrss`). "
           "Before the hardening (issue 19; the audit's numbers) a 700 MB file was read whole before its "
           "rejection (+1.4 GiB), a 16-bit 7000x7000 PNG was converted at full size in float64 (1.2 GiB, 3.5 s), "
           "a killed manifest rewrite left new and old shards mixed, the redirect was followed and its body "
           "logged, a dripping server held a 2 s timeout for 7 s, "
           "Retry-After waited as long as asked, and stale-lock breakers could both win; the local lock still "
           "had two or three winners in ~2% of these rounds until its break became a guarded compare-and-swap. "
           "An oversized file with no size in the manifest costs `max_bytes` + 1 bytes of reading, no more.", "",
           "| case | result | s | peak RSS MB |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['case']} | {r['result']} | {'-' if r['seconds'] is None else r['seconds']} | "
                   f"{'-' if r['peak_mb'] is None else r['peak_mb']} |")
    return "\n".join(out + [""])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md")
    args = p.parse_args(argv)
    from benchmarks.harness import write_doc

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = run()
    for row in rows:
        print(json.dumps(row), flush=True)
    write_doc(Path(args.out), [(SECTION, section(rows, argv, started))])
    print(f"wrote the {SECTION!r} section of {args.out}")
    return 0 if all(not str(r["result"]).startswith(("FAILED", "MIXED", "read (not refused)")) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
