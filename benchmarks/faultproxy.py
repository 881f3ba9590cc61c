"""A fault-injecting HTTP proxy for S3 endpoints (chaos tests and the reliability benchmark).

It sits between our S3 clients (pyarrow.fs, boto3) and a real endpoint (moto's server) on
127.0.0.1 and, for a deterministic fraction of requests, answers with what a real S3 answers
under stress instead of forwarding them: ``500 InternalError``, ``503 SlowDown``,
``503 ServiceUnavailable``, or a dropped connection (the socket is closed before any response
byte). Faulted requests never reach the endpoint, so nothing is half-applied: the client's retry
(botocore/AWS SDK standard retry mode) is what has to make the job succeed.

Which requests fail is decided by a hash of (seed, request number), so a run with the same
traffic injects the same faults; ``stats`` counts what was injected per kind.
"""
from __future__ import annotations

import hashlib
import http.client
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503_slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
}
FAULT_KINDS = (*_ERRORS, "drop")
# Hop-by-hop headers are the proxy's own business (RFC 9110 7.6.1); everything else passes through.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade"}


def _error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>faultproxy</RequestId></Error>").encode()


class FaultProxy:
    """``with FaultProxy(upstream, rate=0.1) as p: ... p.endpoint ... p.stats``.

    rate: fraction of requests that fail; kinds: which faults, drawn evenly; ``only``: an optional
    predicate on (method, path) restricting which requests may fail (e.g. only PUTs)."""

    def __init__(self, upstream: str, rate: float = 0.1, kinds: tuple[str, ...] = FAULT_KINDS, seed: int = 0,
                 only: Callable[[str, str], bool] | None = None) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {FAULT_KINDS}, got {kinds}")
        if not 0 <= rate < 1:
            raise ValueError("rate must be in [0, 1)")
        scheme, _, hostport = upstream.partition("://")
        if scheme != "http":
            raise ValueError(f"upstream must be an http:// endpoint, not {upstream!r}")
        self.upstream_host, _, port = hostport.rstrip("/").partition(":")
        self.upstream_port = int(port or 80)
        self.rate, self.kinds, self.seed, self.only = rate, tuple(kinds), seed, only
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._n = 0
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    def decide(self, method: str, path: str) -> str | None:
        """The fault for the next request, or None to forward it."""
        with self._lock:
            self._n += 1
            n = self._n
            self.stats["requests"] += 1
        if self.only is not None and not self.only(method, path):
            return None
        h = int.from_bytes(hashlib.blake2b(f"{self.seed}:{n}".encode(), digest_size=8).digest(), "little")
        if (h % 1_000_000) / 1_000_000 >= self.rate:
            return None
        kind = self.kinds[(h // 1_000_000) % len(self.kinds)]
        with self._lock:
            self.stats[kind] += 1
            self.stats["injected"] += 1
        return kind

    def __enter__(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: thousands of requests
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []
                    while True:  # RFC 9112 7.1: size line, data, CRLF; a zero-size chunk ends it
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.decide(self.command, self.path)
                if fault == "drop":
                    # Close without a response: the client sees a reset / incomplete read.
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault is not None:
                    status, code, message = _ERRORS[fault]
                    data = _error_body(code, message) if self.command != "HEAD" else b""
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_error_body(code, message))))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                # The body is forwarded whole, with its length (the 100-continue handshake was ours).
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"expect", "content-length"}}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD"
                                                       else int(resp.getheader("Content-Length") or 0)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
