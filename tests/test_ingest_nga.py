"""NGA ingest: CSV join/filter/primary-view logic, IIIF URLs, and the resumable download against a
local IIIF-like HTTP server on 127.0.0.1 (no other network)."""
from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from artextract import manifest

from artextract.core import http, storage
from artextract.config import DownloadConfig, IngestNgaConfig, StorageConfig
from artextract.ingest import nga
from artextract.ingest.nga_download import Job, _fetch_all

SCHEMA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nga" / "schema"

# NGA's exact columns (from the psql dumps in ../shared/data/nga/schema), for when it is absent.
OBJECTS_COLUMNS = [
    "objectid", "accessioned", "accessionnum", "locationid", "title", "displaydate", "beginyear",
    "endyear", "visualbrowsertimespan", "medium", "dimensions", "inscription", "markings",
    "attributioninverted", "attribution", "provenancetext", "creditline", "classification",
    "subclassification", "visualbrowserclassification", "parentid", "isvirtual", "departmentabbr",
    "portfolio", "series", "volume", "watermarks", "lastdetectedmodification", "wikidataid",
    "customprinturl",
]
PUBLISHED_IMAGES_COLUMNS = [
    "uuid", "iiifurl", "iiifthumburl", "viewtype", "sequence", "width", "height", "maxpixels",
    "created", "modified", "depictstmsobjectid", "assistivetext",
]


def schema_columns(table: str, fallback: list[str]) -> list[str]:
    """Column names of a psql ``\\d`` dump in ../shared, else the hard-coded copy."""
    path = SCHEMA_DIR / f"{table}.sql"
    if not path.is_file():
        return fallback
    cols = []
    for line in path.read_text().splitlines():
        name, sep, _ = line.partition("|")
        name = name.strip()
        if sep and name and name != "Column" and not set(name) <= {"-", "+"}:
            cols.append(name)
    return cols


def test_schema_columns_match_fallback():
    """The hard-coded column lists are the real ones (when the schema dumps are available)."""
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"no NGA schema at {SCHEMA_DIR}")
    assert schema_columns("objects", []) == OBJECTS_COLUMNS
    assert schema_columns("published_images", []) == PUBLISHED_IMAGES_COLUMNS


# objectid, classification, title; the image rows below reference these ids.
OBJECTS = [
    (101, "Painting", "Portrait of a Lady"),
    (102, "Painting", "Lost Panel"),          # its image 404s
    (103, "Painting", "Flaky Server"),        # 503 on the first request, then fine
    (104, "Drawing", "Study, with \"quotes\""),  # the server answers HTML
    (105, "Drawing", "Sketch of a Head"),
    (106, "Painting", "No Image At All"),     # no published image
    (107, "painting", "Two Primary Views"),   # primaries with sequence "10" and "2"
    (108, "Drawing", "Only Alternate"),       # only a non-primary view
    (109, "Painting", "With Alternate"),      # primary + alternate
    (110, "Print", "An Etching"),
]
# uuid, viewtype, sequence, depictstmsobjectid
IMAGES = [
    ("u101", "primary", "0", 101), ("u102", "primary", "0", 102), ("u103", "primary", "0", 103),
    ("u104", "primary", "0", 104), ("u105", "primary", "0", 105),
    ("u107-late", "primary", "10", 107), ("u107-first", "primary", "2", 107),
    ("u108-alt", "alternate", "1", 108),
    ("u109", "primary", "0", 109), ("u109-alt", "alternate", "1", 109),
    ("u110", "primary", "0", 110),
]
PUBLISHED_W, PUBLISHED_H = 1600, 1200
SERVED_W, SERVED_H = 160, 120  # what the test server sends for /full/full/


def write_csvs(tmp_path: Path, base_url: str, drop: dict[str, str] | None = None) -> tuple[str, str]:
    """Write objects.csv and published_images.csv with NGA's exact columns; returns their paths."""
    drop = drop or {}
    ocols = [c for c in schema_columns("objects", OBJECTS_COLUMNS) if c != drop.get("objects")]
    rows = []
    for oid, cls, title in OBJECTS:
        row = {c: "" for c in ocols}
        row.update(objectid=oid, accessioned=1, accessionnum=f"1937.1.{oid}", title=title,
                   displaydate="c. 1650", beginyear=1645, endyear=1655, attribution=f"Artist {oid}",
                   medium="oil on canvas", classification=cls, subclassification="",
                   provenancetext="Sold, London;\nthen \"given\", 1937.", lastdetectedmodification="2024-01-02 03:04:05+00")
        rows.append({k: v for k, v in row.items() if k in ocols})
    objects_csv = tmp_path / "objects.csv"
    pd.DataFrame(rows, columns=ocols).to_csv(objects_csv, index=False)

    icols = [c for c in schema_columns("published_images", PUBLISHED_IMAGES_COLUMNS)
             if c != drop.get("published_images")]
    rows = []
    for uuid, view, seq, oid in IMAGES:
        row = {c: "" for c in icols}
        row.update(uuid=uuid, iiifurl=f"{base_url}/iiif/{uuid}",
                   iiifthumburl=f"{base_url}/iiif/{uuid}/full/!200,200/0/default.jpg", viewtype=view,
                   sequence=seq, width=PUBLISHED_W, height=PUBLISHED_H, maxpixels=640,
                   depictstmsobjectid=oid, assistivetext="")
        rows.append({k: v for k, v in row.items() if k in icols})
    images_csv = tmp_path / "published_images.csv"
    pd.DataFrame(rows, columns=icols).to_csv(images_csv, index=False)
    return str(objects_csv), str(images_csv)


class IIIFServer:
    """A tiny IIIF image server: 404 for u102, 503 once for u103, HTML for u104, JPEG otherwise."""

    def __init__(self):
        self.gets: Counter = Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def do_GET(self):
                m = re.fullmatch(r"/iiif/([^/]+)/full/([^/]+)/0/default\.jpg", unquote(self.path))
                if not m:
                    return self._send(404, b"no", "text/plain")
                uuid, size = m.groups()
                with outer.lock:
                    outer.gets[uuid] += 1
                    n = outer.gets[uuid]
                if uuid == "u102":
                    return self._send(404, b"not found", "text/plain")
                if uuid == "u103" and n == 1:
                    return self._send(503, b"busy", "text/plain")
                if uuid == "u104":
                    return self._send(200, b"<html><body>Login required</body></html>", "text/html")
                img = Image.new("RGB", (SERVED_W, SERVED_H), (120, 80, 40))
                if size != "full":
                    side = int(size.lstrip("!").split(",")[0])
                    img.thumbnail((side, side))
                buf = io.BytesIO()
                img.save(buf, "JPEG")
                self._send(200, buf.getvalue(), "image/jpeg", etag=f'"{uuid}-{size}"')

            def _send(self, code, body, ctype, etag=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def iiif():
    server = IIIFServer()
    yield server
    server.close()


# The test IIIF server is on 127.0.0.1: a private address, refused unless allowed.
FAST = StorageConfig(http_backoff_s=0.01, http_retries=3, connect_timeout_s=2, http_timeout_s=5, http_allow_private=True)


def make_cfg(tmp_path: Path, base_url: str, **kw) -> IngestNgaConfig:
    objects, images = write_csvs(tmp_path, base_url)
    return IngestNgaConfig(objects=objects, published_images=images, out=str(tmp_path / "manifest"),
                           storage=kw.pop("storage", FAST), **kw)


def by_id(table) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.to_pylist()}


def test_join_filter_and_iiif_urls(tmp_path):
    """No download: one row per object with a primary view (lowest sequence), bounded https-style URIs."""
    base = "https://api.nga.gov"
    summary = nga.run(make_cfg(tmp_path, base))
    assert summary["counts"] == {"objects": 10, "objects_after_filter": 10, "with_primary_image": 8,
                                 "without_primary_image": 2, "duplicate_primary_views": 1,
                                 "manifest_rows": 8}
    rows = by_id(manifest.read(str(tmp_path / "manifest")))
    assert sorted(rows) == ["101", "102", "103", "104", "105", "107", "109", "110"]
    r = rows["107"]
    assert r["uuid"] == "u107-first"  # sequence "2" sorts before "10"
    assert r["iiif_base"] == f"{base}/iiif/u107-first"
    assert r["iiif_full_url"] == f"{base}/iiif/u107-first/full/full/0/default.jpg"
    assert r["iiif_bounded_url"] == f"{base}/iiif/u107-first/full/!800,800/0/default.jpg"
    assert r["iiif_thumb_url"] == f"{base}/iiif/u107-first/full/!200,200/0/default.jpg"
    assert r["uri"] == r["iiif_bounded_url"] and r["size"] is None and r["etag"] is None
    assert (r["width"], r["height"]) == (800, 600)  # the bounded image the uri serves
    assert (r["full_width"], r["full_height"]) == (PUBLISHED_W, PUBLISHED_H)
    assert r["source"] == "nga" and r["objectid"] == 107 and r["classification"] == "painting"
    assert r["attribution"] == "Artist 107" and r["beginyear"] == 1645 and r["accessionnum"] == "1937.1.107"
    assert rows["109"]["uuid"] == "u109"  # the alternate view is not used
    assert not storage.exists(str(tmp_path / "manifest" / "failed.parquet"))


def test_classification_filter(tmp_path):
    """--classification matches case-insensitively and exactly ('Painting' is not 'Print')."""
    summary = nga.run(make_cfg(tmp_path, "https://api.nga.gov", classification="PAINTING"))
    assert summary["counts"] == {"objects": 10, "objects_after_filter": 6, "with_primary_image": 5,
                                 "without_primary_image": 1, "duplicate_primary_views": 1,
                                 "manifest_rows": 5}
    ids = manifest.read(str(tmp_path / "manifest"))["image_id"].to_pylist()
    assert ids == ["101", "102", "103", "107", "109"]


def test_download_failures_and_resume(tmp_path, iiif):
    """Download stores images with size/etag; 404/HTML land in failed.parquet; a rerun refetches nothing stored."""
    images_out = tmp_path / "images"
    cfg = make_cfg(tmp_path, iiif.url, download=DownloadConfig(enabled=True, images_out=str(images_out),
                                                               concurrency=4))
    counts = nga.run(cfg)["counts"]
    assert counts == {"objects": 10, "objects_after_filter": 10, "with_primary_image": 8,
                      "without_primary_image": 2, "duplicate_primary_views": 1, "manifest_rows": 6,
                      "downloaded": 6, "skipped_existing": 0, "failed": 2}
    assert counts["with_primary_image"] == counts["manifest_rows"] + counts["failed"]
    assert iiif.gets["u103"] == 2  # the 503 was retried
    assert sorted(p.name for p in images_out.iterdir()) == [f"{i}.jpg" for i in (101, 103, 105, 107, 109, 110)]

    rows = by_id(manifest.read(cfg.out))
    r = rows["101"]
    assert r["uri"] == str(images_out / "101.jpg")
    assert r["size"] == (images_out / "101.jpg").stat().st_size
    assert r["etag"] == '"u101-full"' and r["mtime"] is not None
    assert (r["width"], r["height"]) == (SERVED_W, SERVED_H)  # measured, not the published size
    failed = {r["image_id"]: r for r in pq.read_table(str(tmp_path / "manifest" / "failed.parquet")).to_pylist()}
    assert sorted(failed) == ["102", "104"]
    assert "not found" in failed["102"]["reason"] and "404" in failed["102"]["reason"]
    assert "not an image" in failed["104"]["reason"] and "text/html" in failed["104"]["reason"]
    assert failed["102"]["url"].endswith("/iiif/u102/full/full/0/default.jpg")

    iiif.gets.clear()
    counts = nga.run(cfg)["counts"]
    assert counts["skipped_existing"] == 6 and counts["downloaded"] == 0 and counts["failed"] == 2
    assert set(iiif.gets) == {"u102", "u104"}  # only the failures are tried again
    rows2 = by_id(manifest.read(cfg.out))
    assert rows2["101"]["etag"] == '"u101-full"' and rows2["101"]["size"] == r["size"]


def test_download_bounded(tmp_path, iiif):
    """download.max_side fetches the !n,n IIIF size."""
    cfg = make_cfg(tmp_path, iiif.url, classification="drawing",
                   download=DownloadConfig(enabled=True, images_out=str(tmp_path / "img"), max_side=64))
    counts = nga.run(cfg)["counts"]
    assert counts["downloaded"] == 1 and counts["failed"] == 1 and counts["without_primary_image"] == 1
    r = manifest.read(cfg.out).to_pylist()[0]
    assert r["image_id"] == "105" and r["etag"] == '"u105-!64,64"' and (r["width"], r["height"]) == (64, 48)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_fails_fast(tmp_path, capsys):
    """A host that does not answer fails in seconds with advice to use `ingest folder`."""
    cfg = make_cfg(tmp_path, f"http://127.0.0.1:{closed_port()}",
                   download=DownloadConfig(enabled=True, images_out=str(tmp_path / "img"), preflight_timeout_s=2))
    t0 = time.monotonic()
    with pytest.raises(http.HostUnreachable, match="ingest folder"):
        nga.run(cfg)
    assert time.monotonic() - t0 < 10
    from artextract.cli import main

    assert main(["ingest", "nga", "--objects", cfg.objects, "--published-images", cfg.published_images,
                 "--out", cfg.out, "--download", "--images-out", str(tmp_path / "img")]) == 1
    assert "ingest folder" in capsys.readouterr().err


def test_host_lost_mid_run_aborts(tmp_path):
    """When every request stops connecting, the download aborts instead of failing image by image."""
    url = f"http://127.0.0.1:{closed_port()}/iiif/x/full/full/0/default.jpg"
    jobs = [Job(str(i), url, str(tmp_path / f"{i}.jpg")) for i in range(12)]
    st = StorageConfig(http_retries=0, http_backoff_s=0.01, connect_timeout_s=1, http_allow_private=True)
    with pytest.raises(http.HostUnreachable, match="stopped answering"):
        _fetch_all(jobs, DownloadConfig(enabled=True, images_out=str(tmp_path), concurrency=1), st)


@pytest.mark.parametrize("which,column", [("objects", "classification"), ("published_images", "viewtype")])
def test_missing_column(tmp_path, which, column):
    objects, images = write_csvs(tmp_path, "https://api.nga.gov", drop={which: column})
    cfg = IngestNgaConfig(objects=objects, published_images=images, out=str(tmp_path / "m"))
    with pytest.raises(ValueError, match=rf"{which}\.csv.*'{column}'"):
        nga.run(cfg)


def test_download_needs_images_out(tmp_path):
    cfg = make_cfg(tmp_path, "https://api.nga.gov", download=DownloadConfig(enabled=True))
    with pytest.raises(ValueError, match="images_out"):
        nga.run(cfg)


def test_cli(tmp_path, capsys):
    from artextract.cli import main

    objects, images = write_csvs(tmp_path, "https://api.nga.gov")
    out = tmp_path / "cli"
    assert main(["ingest", "nga", "--objects", objects, "--published-images", images, "--out", str(out),
                 "--classification", "Drawing"]) == 0
    assert (out / "summary.json").is_file() and (out / "config.resolved.yaml").is_file()
    summary = storage.read_json(str(out / "summary.json"))
    assert summary["job"] == "ingest_nga" and summary["counts"]["manifest_rows"] == 2
    assert '"manifest_rows": 2' in capsys.readouterr().out


def test_manifest_and_images_on_s3(tmp_path, iiif, s3_bucket, s3_storage):
    """Manifest and downloaded images can live in a bucket (moto over HTTP on 127.0.0.1)."""
    st = s3_storage.model_copy(update={"http_backoff_s": 0.01, "http_allow_private": True})
    out = f"s3://{s3_bucket}/nga/manifest"
    images_out = f"s3://{s3_bucket}/nga/images"
    cfg = make_cfg(tmp_path, iiif.url, storage=st, classification="painting",
                   download=DownloadConfig(enabled=True, images_out=images_out))
    cfg.out = out
    counts = nga.run(cfg)["counts"]
    assert counts["downloaded"] == 4 and counts["failed"] == 1
    table = manifest.read(out, st)
    assert table["image_id"].to_pylist() == ["101", "103", "107", "109"]
    for r in table.to_pylist():
        assert r["uri"] == f"{images_out}/{r['image_id']}.jpg" and storage.exists(r["uri"], st)
        assert r["size"] == len(storage.read_bytes(r["uri"], st))
    assert storage.exists(f"{out}/summary.json", st) and storage.exists(f"{out}/failed.parquet", st)
    iiif.gets.clear()
    assert nga.run(cfg)["counts"]["skipped_existing"] == 4
    assert set(iiif.gets) == {"u102"}
