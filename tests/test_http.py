"""artextract.core.http against local servers: redirects only to the same host, no private targets unless
allowed, a byte cap, a deadline for the whole transfer, a capped Retry-After, and failure reasons
that never quote a body."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from artextract.core import http
from artextract.config import StorageConfig

SECRET_BODY = b'{"AccessKeyId":"ASIATESTMETADATA0001","SecretAccessKey":"shh"}'
LOCAL = StorageConfig(http_allow_private=True, http_retries=2, http_backoff_s=0.01, connect_timeout_s=2,
                      http_timeout_s=5)


class Server:
    """A 127.x.y.z server whose routes are (status, headers, body or a callable writing the body)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, list] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                queue = outer.routes.get(self.path) or [(404, {}, b"no")]
                status, headers, body = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if not callable(body):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                body(self.wfile) if callable(body) else self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def servers():
    made = []

    def make(host="127.0.0.1"):
        made.append(Server(host))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_redirect_to_another_host_is_refused_and_its_body_never_read(servers):
    a, meta = servers(), servers("127.0.0.2")  # meta plays a cloud metadata endpoint
    meta.routes["/latest/creds"] = [(200, {"Content-Type": "application/json"}, SECRET_BODY)]
    a.routes["/img.jpg"] = [(302, {"Location": f"{meta.url}/latest/creds"}, b"")]
    with pytest.raises(http.RefusedTarget, match="another host") as err:
        http.get(f"{a.url}/img.jpg", LOCAL)
    assert meta.hits == [] and "ASIA" not in str(err.value)
    # Same host: followed (up to http_max_redirects), 0 refuses every redirect.
    a.routes["/moved"] = [(301, {"Location": "/img2.jpg"}, b"")]
    a.routes["/img2.jpg"] = [(200, {"Content-Type": "image/jpeg"}, b"\xff\xd8data")]
    reply = http.get(f"{a.url}/moved", LOCAL)
    assert reply.content == b"\xff\xd8data" and reply.url.endswith("/img2.jpg")
    with pytest.raises(http.RefusedTarget, match="redirects"):
        http.get(f"{a.url}/moved", LOCAL.model_copy(update={"http_max_redirects": 0}))


def test_downgrade_and_other_schemes_refused():
    with pytest.raises(http.RefusedTarget, match="https to http"):
        http._check_hop("http://example.org/a", "https://example.org/b", LOCAL)
    with pytest.raises(http.RefusedTarget, match="file"):
        http._check_hop("file:///etc/passwd", "https://example.org/b", LOCAL)


def test_private_addresses_refused_unless_allowed(servers):
    a = servers()
    a.routes["/x"] = [(200, {}, b"ok")]
    with pytest.raises(http.RefusedTarget, match="http_allow_private"):
        http.get(f"{a.url}/x", StorageConfig())
    assert a.hits == []
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:9/", "http://10.0.0.1/"):
        with pytest.raises(http.RefusedTarget):
            http.get(url, StorageConfig())
    assert http.get(f"{a.url}/x", LOCAL).content == b"ok"


def test_byte_cap_and_limit(servers):
    a = servers()
    a.routes["/big"] = [(200, {}, b"x" * 3_000_000)]
    with pytest.raises(OSError, match="http_max_bytes"):
        http.get(f"{a.url}/big", LOCAL.model_copy(update={"http_max_bytes": 1_000_000}))
    assert len(http.get_bytes(f"{a.url}/big", LOCAL, limit=5000)) == 5001


def test_deadline_bounds_a_dripping_server(servers):
    a = servers()

    def drip(w):
        try:
            for _ in range(40):
                w.write(b"x")
                w.flush()
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up at its deadline: that is the point

    a.routes["/drip"] = [(200, {"Content-Length": "40"}, drip)]
    cfg = LOCAL.model_copy(update={"http_deadline_s": 1.0, "http_timeout_s": 2.0})
    t0 = time.monotonic()
    with pytest.raises(OSError, match="deadline"):
        http.get(f"{a.url}/drip", cfg)
    assert time.monotonic() - t0 < 4  # each byte arrives inside the socket timeout; the deadline stops it


def test_retry_after_is_capped(servers):
    a = servers()
    a.routes["/busy"] = [(503, {"Retry-After": "30"}, b"busy"), (200, {}, b"done")]
    t0 = time.monotonic()
    assert http.get(f"{a.url}/busy", LOCAL.model_copy(update={"http_retry_after_max_s": 0.2})).content == b"done"
    assert time.monotonic() - t0 < 5 and len(a.hits) == 2


def test_download_failure_reason_never_quotes_the_body(servers, tmp_path):
    from artextract.ingest.nga_download import Job, fetch_one

    a = servers()
    a.routes["/iiif/u1/full/full/0/default.jpg"] = [(200, {"Content-Type": "text/html"}, SECRET_BODY)]
    job = Job("1", f"{a.url}/iiif/u1/full/full/0/default.jpg", str(tmp_path / "1.jpg"), 0, 0)
    res = fetch_one(job, LOCAL)
    assert res.reason.startswith("not an image") and "ASIA" not in res.reason and "AccessKeyId" not in res.reason
