"""``artextract serve`` JSON API (FastAPI TestClient; the browser test drives a real uvicorn):
schema, paintings by title/artist, queries by stored face / upload / vector, pose re-ranking,
paging, bad uploads -> 4xx with a reason while the server keeps serving, images proxied with no
storage URI leaking, CURRENT reloads, reports, CLI defaults."""
from __future__ import annotations

import io
import time
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from artextract import samples

from artextract.core import storage
from artextract.config import DecodeConfig, ServeConfig

# starlette's TestClient prefers httpx2 but works with httpx (the dev extra): not our concern here
pytestmark = pytest.mark.filterwarnings("ignore::starlette.exceptions.StarletteDeprecationWarning")
MODEL = "untrained:resnet18"
SECRET = "s3://secret-bucket/paintings"
NAMES = ("astronaut", "double_portrait", "rgba_oval", "landscape_1")
LOCAL = "http://127.0.0.1"  # the server answers only its loopback Host names (DNS rebinding)


def _rotated(deg: float) -> bytes:
    """The astronaut turned by ``deg`` degrees (same face, other head roll: pose filters see it)."""
    im = Image.open(io.BytesIO(samples.CASES["astronaut"][1]())).convert("RGB").rotate(deg, expand=False,
                                                                                     fillcolor=(128, 128, 128))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_small_index(tmp_path_factory) -> dict:
    """A few sample paintings (faces + a faceless one + rotated copies) -> preprocess stages ->
    EmbedStage (untrained resnet18, 64 px, d=32) -> ``index build``; a manifest with titles and a
    bucket ``uri`` that must never reach a client. Built once per test session (both test files)."""
    root = Path(tmp_path_factory.getbasetemp()) / "serve-index"
    done = root / "info.json"
    if done.exists():
        return json.loads(done.read_text())
    from conftest import faces_and_embeddings

    from artextract.config import IndexBuildConfig
    from artextract.jobs.index_build import run_build

    if root.exists():
        shutil.rmtree(root)
    (root / "images").mkdir(parents=True)
    uris = {}
    for name in NAMES:
        fname, make, _ = samples.CASES[name]
        uris[name] = str(root / "images" / fname)
        Path(uris[name]).write_bytes(make())
    for deg in (-25, 25):
        uris[f"astronaut_rot{deg}"] = str(root / "images" / f"astronaut_rot{deg}.jpg")
        Path(uris[f"astronaut_rot{deg}"]).write_bytes(_rotated(deg))
    # the faceless painting is indexed whole
    rows = faces_and_embeddings(uris, root, MODEL, image_size=64, dim=32, whole=lambda i: i == "landscape_1",
                                image_columns=("image_id", "status", "whole_jpeg", "orig_width", "orig_height",
                                               "n_faces"))
    pre, emb = root / "pre", root / "emb"
    idx = root / "idx"
    run_build(IndexBuildConfig(embeddings=str(emb), out=str(idx), shards=2))
    ids = list(uris)
    manifest = pa.table({"image_id": ids, "uri": [f"{SECRET}/{Path(u).name}" for u in uris.values()],
                         "title": [f"Portrait of {i.replace('_', ' ')}" for i in ids],
                         "attribution": ["Eileen Collins" if i.startswith("astronaut") else "Anonymous" for i in ids],
                         "displaydate": ["c. 1999"] * len(ids),
                         "iiif_full_url": [f"https://iiif.example.org/{i}/full/full/0/default.jpg" for i in ids]})
    storage.write_parquet(str(root / "manifest" / "part-00000.parquet"), manifest)
    reports = root / "reports" / "classifier"
    reports.mkdir(parents=True)
    (reports / "report.html").write_text("<html><body><h1>Classifier report</h1></body></html>")
    n_faces = dict(zip(rows["image_id"].to_pylist(), rows["n_faces"].to_pylist()))
    info = {"root": str(root), "idx": str(idx), "pre": str(pre), "emb": str(emb), "manifest": str(root / "manifest"),
            "reports": str(reports), "uris": uris, "n_faces": n_faces}
    done.write_text(json.dumps(info))
    return info


def serve_config(small: dict, **kw) -> ServeConfig:
    """The test server's config: pose re-ranking strong enough to reorder the few sample faces."""
    base = dict(index=small["idx"], manifest=small["manifest"], reports=small["reports"], k=4, max_k=12,
                pose_weight=20.0, max_upload_bytes=2_000_000, reload_s=0.0, decode=DecodeConfig(max_pixels=20_000_000))
    return ServeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    return build_small_index(tmp_path_factory)


@pytest.fixture(scope="module")
def client(small):
    from fastapi.testclient import TestClient

    from artextract.serve.app import create_app

    app = create_app(serve_config(small))
    app.state.engine.warm_up()
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def _no_leak(resp) -> None:
    assert "secret-bucket" not in resp.text and small_root_absent(resp.text)


def small_root_absent(text: str) -> bool:
    return "/serve-index/" not in text  # no local storage path either


def test_openapi_schema_and_page(client):
    schema = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/upload", "/api/paintings", "/api/image/{image_id}", "/api/search/vector"):
        assert path in schema["paths"], path
    body = schema["paths"]["/api/upload"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data"} <= set(body)
    page = client.get("/")
    assert page.status_code == 200 and 'id="upload-input"' in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/../app.py").status_code == 404


def test_info_and_find_by_title_or_artist(client, small):
    info = client.get("/api/info").json()
    n_faces = sum(small["n_faces"].values())
    assert info["vectors"] == n_faces + 1 and info["k"] == 4 and info["faces"] and info["reports"] == ["classifier"]
    res = client.get("/api/paintings", params={"q": "collins"})
    ids = [p["image_id"] for p in res.json()["items"]]
    assert ids == sorted(i for i in small["uris"] if i.startswith("astronaut"))
    assert client.get("/api/paintings", params={"q": "double portrait"}).json()["total"] == 1
    p = client.get("/api/paintings/double_portrait").json()
    assert p["title"] == "Portrait of double portrait" and p["artist"] == "Anonymous" and p["date"] == "c. 1999"
    assert len(p["faces"]) == 2 and all(f["indexed"] and len(f["box"]) == 4 for f in p["faces"])
    assert p["width"] > 0 and not p["whole_indexed"]
    _no_leak(res)
    assert client.get("/api/paintings/nope").status_code == 404


def test_query_by_stored_face_pose_and_paging(client):
    r = client.get("/api/search", params={"image_id": "double_portrait", "face_idx": 1, "limit": 3})
    assert r.status_code == 200, r.text
    doc = r.json()
    top = doc["hits"][0]
    assert (top["image_id"], top["face_idx"]) == ("double_portrait", 1) and top["score"] == pytest.approx(1, abs=1e-3)
    assert len(doc["hits"]) == 3 and doc["has_more"] and [h["rank"] for h in doc["hits"]] == [1, 2, 3]
    assert top["thumb_url"] == "/api/face/double_portrait/1" and top["iiif"].startswith("https://iiif.example.org/")
    assert top["title"] and top["artist"] and len(top["box"]) == 4
    page2 = client.get("/api/search", params={"image_id": "double_portrait", "face_idx": 1, "limit": 3,
                                              "offset": 3}).json()
    assert page2["hits"][0]["rank"] == 4 and {(h["image_id"], h["face_idx"]) for h in page2["hits"]}.isdisjoint(
        (h["image_id"], h["face_idx"]) for h in doc["hits"])
    orders = {}
    for pose in ("off", "rerank", "filter"):
        d = client.get("/api/search", params={"image_id": "astronaut", "face_idx": 0, "limit": 8, "pose": pose}).json()
        orders[pose] = [(h["image_id"], h["face_idx"]) for h in d["hits"]]
        if pose != "off":
            assert all("pose_distance_deg" in h for h in d["hits"])
    assert orders["rerank"] != orders["off"] and set(orders["rerank"]) == set(orders["off"])
    assert orders["filter"] != orders["off"]  # the rotated faces are > 20 degrees away
    whole = client.get("/api/search", params={"image_id": "landscape_1", "face_idx": -1}).json()
    assert (whole["hits"][0]["image_id"], whole["hits"][0]["face_idx"]) == ("landscape_1", -1)
    assert whole["hits"][0]["thumb_url"] == "/api/image/landscape_1"
    assert client.get("/api/search", params={"image_id": "astronaut", "face_idx": 7}).status_code == 404
    assert client.get("/api/search", params={"image_id": "astronaut", "offset": 12}).status_code == 422
    _no_leak(r)


def test_find_reproductions_on_the_server_uses_the_same_service_as_the_cli(client, small):
    """copies=true on /api/search: the shortlist is verified geometrically like ``search copies=true``
    (one SearchService); stored keys verify with their stored crop, uploads with their own pixels."""
    from artextract.config import SearchConfig
    from artextract.jobs.search import run_search

    assert 'id="copies"' in client.get("/").text
    r = client.get("/api/search", params={"image_id": "astronaut", "face_idx": 0, "limit": 4, "copies": "true"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert all("inliers" in h and "verified" in h for h in doc["hits"])
    top = doc["hits"][0]
    assert (top["image_id"], top["face_idx"]) == ("astronaut", 0) and top["verified"] and top["inliers"] >= 5
    assert doc["copies"]["verified_hits"] == sum(h["verified"] for h in doc["hits"]) and doc["copies"]["query_has_pixels"]
    # the CLI's answer for the same stored key: same hits, same inliers
    out = Path(small["root"]) / "cli-copies"
    run_search(SearchConfig(index=small["idx"], id="astronaut", face_idx=0, k=4, faces=small["pre"], copies=True,
                            out=str(out), grid=False))
    cli = json.loads((out / "results.json").read_text())["results"][0]["hits"]
    assert [(h["image_id"], h["face_idx"], h["inliers"]) for h in cli] == \
        [(h["image_id"], h["face_idx"], h["inliers"]) for h in doc["hits"]]
    up = client.post("/api/upload", content=samples.CASES["astronaut"][1](),
                     headers={"Content-Type": "image/jpeg"}).json()
    d = client.get("/api/search", params={"upload": up["upload_id"], "face_idx": 0, "limit": 4,
                                          "copies": "true"}).json()
    assert d["copies"]["query_has_pixels"] and d["hits"][0]["verified"]
    bad = client.get("/api/search", params={"image_id": "astronaut", "face_idx": 0, "copies": "true", "pose": "rerank"})
    assert bad.status_code == 422


def test_query_by_vector(client, small):
    v = np.zeros(32, np.float32)
    v[0] = 1
    r = client.post("/api/search/vector", json={"vector": v.tolist(), "limit": 2})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2
    assert client.post("/api/search/vector", json={"vector": [1.0, 2.0]}).status_code == 422


def test_query_by_upload_raw_and_multipart(client, small):
    data = Path(small["uris"]["double_portrait"]).read_bytes()
    r = client.post("/api/upload", files={"file": ("p.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    up = r.json()
    assert len(up["faces"]) == 2 and up["width"] > 0 and up["note"] is None
    hits = client.get("/api/search", params={"upload": up["upload_id"], "face_idx": 0, "limit": 2}).json()["hits"]
    assert (hits[0]["image_id"], hits[0]["face_idx"]) == ("double_portrait", 0)
    assert hits[0]["score"] == pytest.approx(1, abs=1e-3)
    img = client.get(up["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    raw = client.post("/api/upload", content=Path(small["uris"]["landscape_1"]).read_bytes(),
                      headers={"content-type": "image/jpeg"}).json()
    assert raw["faces"] == [] and raw["note"].startswith("no face detected")
    whole = client.get("/api/search", params={"upload": raw["upload_id"], "face_idx": -1}).json()["hits"][0]
    assert (whole["image_id"], whole["face_idx"]) == ("landscape_1", -1)
    assert client.get("/api/search", params={"upload": "expired", "face_idx": 0}).status_code == 404


@pytest.mark.parametrize("name,data,status,text", [
    ("notes.txt", b"curator's notes, not an image\n" * 20, 415, "not_an_image"),
    ("bomb.png", samples.png_header_only(30_000, 30_000), 413, "decompression_bomb"),
    ("big.jpg", b"\xff\xd8" + b"0" * 2_100_000, 413, "too_large_file"),
    ("trunc.jpg", samples.CASES["truncated_jpeg"][1](), 422, "truncated"),
    ("empty.jpg", b"", 400, "empty"),
])
def test_bad_uploads_get_4xx_and_server_keeps_serving(client, name, data, status, text):
    r = client.post("/api/upload", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == status and text in r.json()["detail"], r.text
    assert client.get("/api/info").status_code == 200


def test_too_large_is_refused_before_reading_the_body(client):
    r = client.post("/api/upload", content=b"x" * 2_100_000, headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "too_large_file" in r.json()["detail"]


def test_images_are_proxied_and_reports_served(client, small):
    r = client.get("/api/image/astronaut")
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    f = client.get("/api/face/double_portrait/1")
    assert f.status_code == 200 and Image.open(io.BytesIO(f.content)).size == (160, 160)
    assert client.get("/api/face/double_portrait/9").status_code == 404
    assert "classifier" in client.get("/reports/").text
    assert "Classifier report" in client.get("/reports/classifier/").text
    assert client.get("/reports/classifier/../../idx/CURRENT").status_code == 404  # (the client normalises this)
    for url in ("/api/info", "/api/paintings", "/api/paintings/astronaut", "/openapi.json"):
        _no_leak(client.get(url))


def test_reload_when_current_moves(small, tmp_path):
    from fastapi.testclient import TestClient

    from artextract.config import IndexBuildConfig
    from artextract.jobs.index_build import run_build
    from artextract.serve.app import create_app

    idx = tmp_path / "idx"
    shutil.copytree(small["idx"], idx)
    app = create_app(serve_config(small, index=str(idx)))
    with TestClient(app, base_url=LOCAL) as c:
        v1 = c.get("/api/info").json()["version"]
        run_build(IndexBuildConfig(embeddings=small["emb"], out=str(idx), shards=3))
        assert c.get("/api/info").json()["version"] == v1 + 1
        assert c.get("/api/search", params={"image_id": "astronaut", "face_idx": 0}).status_code == 200


def test_reload_keeps_the_old_version_open_for_requests_in_flight(small, tmp_path, monkeypatch):
    """A request that fetched the served version just before a reload still searches it; the old
    reader (with Ray: its shard actors) is closed only after reload_grace_s."""
    from artextract.config import IndexBuildConfig
    from artextract.jobs.index_build import run_build
    from artextract.index.search import IndexReader
    from artextract.serve.engine import Engine

    closed = []
    monkeypatch.setattr(IndexReader, "close", lambda self: closed.append(self.version))
    idx = tmp_path / "idx"
    shutil.copytree(small["idx"], idx)
    engine = Engine(serve_config(small, index=str(idx), reload_grace_s=0.6))
    in_flight = engine.current()  # a request started on v1
    run_build(IndexBuildConfig(embeddings=small["emb"], out=str(idx), shards=3))
    assert engine.current().reader.version == in_flight.reader.version + 1
    assert closed == []  # the in-flight request's reader is still open
    query = np.ones((1, int(in_flight.reader.manifest["dim"])), np.float32)
    assert len(in_flight.reader.search(query, 2)[1][0]) == 2  # and answers
    time.sleep(1.0)
    assert closed == [in_flight.reader.version]
    engine.close()
    assert closed == [in_flight.reader.version, in_flight.reader.version + 1]


def test_cli_defaults_bind_localhost(small, monkeypatch):
    from artextract import cli

    from PIL import ImageFile

    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: seen.update(host=host, port=port))
    # run() sets PIL's process-wide limits from serve's decode config: restore them afterwards
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", ImageFile.LOAD_TRUNCATED_IMAGES)
    assert cli.main(["serve", "--index", small["idx"], "--manifest", small["manifest"]]) == 0
    assert seen == {"host": "127.0.0.1", "port": 8000}
    assert ServeConfig().host == "127.0.0.1"
    assert cli.main(["serve", "--index", str(Path(small["root"]) / "missing")]) == 1


def test_served_from_s3_without_leaking_the_bucket(small, s3_bucket, s3_endpoint, s3_storage):
    """Index, faces and manifest in a bucket: images come through the API, no URI or endpoint leaks."""
    from fastapi.testclient import TestClient

    from conftest import upload_dir

    from artextract.serve.app import create_app

    for part in ("idx", "pre", "manifest"):
        upload_dir(Path(small["root"]) / part, s3_bucket, f"art/{part}", s3_endpoint)
    base = f"s3://{s3_bucket}/art"
    cfg = serve_config(small, index=f"{base}/idx", faces=f"{base}/pre", manifest=f"{base}/manifest",
                       reports=None, storage=s3_storage)
    with TestClient(create_app(cfg), base_url=LOCAL) as c:
        img = c.get("/api/image/double_portrait")
        assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
        texts = [c.get(u).text for u in ("/api/info", "/api/paintings", "/api/paintings/double_portrait",
                                          "/api/image/nope", "/api/paintings/nope")]
        texts.append(c.get("/api/search", params={"image_id": "double_portrait", "face_idx": 0}).text)
        texts.append(c.get("/api/search", params={"image_id": "nope"}).text)
        for t in texts:
            assert s3_bucket not in t and s3_endpoint not in t and "s3://" not in t, t


def test_faces_and_metadata_discovered_from_a_reindex_snapshot(small, tmp_path):
    """A reindex-built version: collection.parquet names each image's delta; the server finds the
    delta's preprocess output and takes metadata from the snapshot, with no faces=/manifest=."""
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from artextract.index import versions as V
    from artextract.serve.app import create_app

    idx = tmp_path / "idx"
    shutil.copytree(small["idx"], idx)
    shutil.copytree(small["pre"], idx / "work" / "deltas" / "d1" / "preprocessed")
    version = V.current_version(str(idx))
    ids = sorted(small["uris"])
    pq.write_table(pa.table({"image_id": ids, "uri": [small["uris"][i] for i in ids],
                             "relpath": [Path(small["uris"][i]).name for i in ids], "delta": ["d1"] * len(ids)}),
                   str(Path(V.version_dir(str(idx), version)) / "collection.parquet"))
    cfg = serve_config(small, index=str(idx), manifest=None, faces=None, reports=None)
    app = create_app(cfg)
    assert app.state.engine.current().catalog.sources == {"faces": "reindex deltas", "manifest": "reindex snapshot"}
    with TestClient(app, base_url=LOCAL) as c:
        p = c.get("/api/paintings/double_portrait").json()
        assert p["title"] == "double_portrait.jpg" and len(p["faces"]) == 2
        assert c.get("/api/face/double_portrait/0").status_code == 200
        assert c.get("/api/paintings", params={"q": "rot25"}).json()["total"] == 1


def test_reports_refuse_traversal_sent_raw_symlinks_and_foreign_hosts(small, tmp_path):
    """The report route's guards exercised as an attacker sends them: raw and percent-encoded '..'
    (http.client does not normalise paths), a symlink inside the reports directory pointing outside,
    and a Host header that is not the loopback name (a DNS-rebinding page)."""
    import http.client

    from artextract.serve.app import create_app
    from fixtures.servers import ThreadedServer

    reports = tmp_path / "reports"
    shutil.copytree(small["reports"], reports)
    outside = tmp_path / "outside.html"
    outside.write_text("<html>private notes</html>")
    (reports / "leak.html").symlink_to(outside)
    app = create_app(serve_config(small, reports=str(reports)))
    with ThreadedServer(app) as url:
        host, port = url.removeprefix("http://").split(":")

        def raw(path: str, host_header: str | None = None) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.putrequest("GET", path, skip_host=host_header is not None)
            if host_header is not None:
                conn.putheader("Host", host_header)
            conn.endheaders()
            resp = conn.getresponse()
            out = resp.status, resp.read()
            conn.close()
            return out

        assert raw("/reports/reports/")[0] == 200
        for path in ("/reports/reports/../../idx/CURRENT", "/reports/reports/%2e%2e/%2e%2e/idx/CURRENT",
                     "/reports/reports/..%2f..%2fidx/CURRENT", "/reports/reports/leak.html"):
            status, body = raw(path)
            assert status == 404 and b"private notes" not in body and b"version" not in body, path
        assert raw("/api/info", host_header="evil.example:8000")[0] == 400
        assert raw("/api/info", host_header=f"localhost:{port}")[0] == 200


def test_concurrent_upload_decodes_are_bounded(small, monkeypatch):
    """At most upload_decodes uploads decode at once (each can take hundreds of MB); one that cannot
    get a slot within upload_wait_s gets 503 instead of adding to the memory peak."""
    import threading

    from artextract.serve import engine as E
    from artextract.stages import decode as D

    engine = E.Engine(serve_config(small, upload_decodes=2, upload_wait_s=0.3))
    gate, inside, peak = threading.Event(), [0], [0]
    real = D.decode

    def slow_decode(data, cfg):
        inside[0] += 1
        peak[0] = max(peak[0], inside[0])
        gate.wait(5)
        inside[0] -= 1
        return real(data, cfg)

    monkeypatch.setattr(D, "decode", slow_decode)
    jpeg = samples.CASES["astronaut"][1]()
    results: list = []

    def go():
        try:
            results.append(engine.upload(jpeg).id)
        except E.QueryError as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the third waited 0.3 s for a slot and gave up
    gate.set()
    for t in threads:
        t.join()
    assert peak[0] == 2 and results.count(503) == 1 and len(results) == 3  # two upload ids, one 503
    engine.close()


def test_redaction_covers_every_bucket_the_endpoint_and_conflicts(small, monkeypatch):
    """Not only the configured prefixes: any s3:// URI, bucket/key text of every bucket read (model and
    reports included), the endpoint's URL and host; a 409 says nothing of paths."""
    from fastapi.testclient import TestClient

    from artextract.config import StorageConfig
    from artextract.serve import engine as E
    from artextract.serve.app import create_app

    cfg = serve_config(small, model="s3://models-bkt/sim/current/model.pt", reports="s3://reports-bkt/r",
                       storage=StorageConfig(s3_endpoint="http://minio.internal:9000"))
    red = E.redactor(cfg)
    for leak in ("s3://other-bkt/x.parquet", "models-bkt/sim/current/model.pt", "reports-bkt/r/report.html",
                 "http://minio.internal:9000/idx/CURRENT", "minio.internal:9000"):
        out = red(f"failed to read {leak}: AWS Error NO_SUCH_KEY")
        assert "bkt" not in out and "minio" not in out and "<storage>" in out, leak
    assert red("image_id 'x' is not in the index") == "image_id 'x' is not in the index"

    def conflict(*a, **k):
        raise ValueError("s3://models-bkt/sim/current/model.pt: model_version changed")

    app = create_app(serve_config(small))
    monkeypatch.setattr(E.Engine, "stored_query", conflict)
    with TestClient(app, base_url=LOCAL) as c:
        r = c.get("/api/search", params={"image_id": "astronaut", "face_idx": 0})
    assert r.status_code == 409 and "bkt" not in r.text and "retry" in r.json()["detail"]
