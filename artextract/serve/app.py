"""``artextract serve``: FastAPI app factory, API routes and the uvicorn runner.

Why FastAPI and not Ray Serve: a published index version fits one process (100k x 256 float32 is
~100 MB; 1M is ~1 GB), searches take milliseconds, and FastAPI gives the OpenAPI schema, request
validation and streaming uploads with no cluster to run. Ray Serve would pay off once shards must
live on several nodes -- and that part already exists: ``parallel=ray`` makes the server hold a
:class:`artextract.index.ray_search.RayIndexReader` (one Ray actor per shard) behind the same routes,
so scaling out needs no second web stack.

Images are proxied: ``/api/image/...`` and ``/api/face/...`` stream bytes read through
:mod:`artextract.core.storage`; no response carries a bucket URI (error texts are redacted too).
"""
from __future__ import annotations

import logging
import os
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from artextract.core import storage
from artextract.config import ServeConfig
from artextract.serve.engine import Engine, QueryError, Served, discover_reports, face_url, image_url, redactor
from artextract.index import versions as V
from artextract.stages.decode import configure_pil

log = logging.getLogger(__name__)
STATIC = resources.files("artextract.serve") / "static"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around an uploaded file
REPORT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg", ".svg": "image/svg+xml",
                ".json": "application/json", ".css": "text/css", ".csv": "text/csv; charset=utf-8"}
UPLOAD_BODY = {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                       "required": ["file"]}}}}


class VectorQuery(BaseModel):
    """A raw query vector (length = the index's dim)."""

    vector: list[float] = Field(..., min_length=1, max_length=65536)
    offset: int = Field(0, ge=0)
    limit: int = Field(12, ge=1, le=1000)


def _jpeg(data: bytes | None, what: str) -> Response:
    if not data:
        raise HTTPException(404, f"no stored {what}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})


def create_app(cfg: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving ``cfg.index`` (the index is loaded here, once)."""
    if not cfg.index:
        raise ValueError("serve needs index= (--index URI)")
    engine = engine or Engine(cfg)
    reports = {(cfg.reports.rstrip("/").rsplit("/", 1)[-1] or "reports"): cfg.reports} if cfg.reports \
        else discover_reports(cfg.index, cfg.storage)
    _redact = redactor(cfg)
    app = FastAPI(title="artextract visual search", version="1",
                  description="Search a published artextract index by painting, face or uploaded image.")
    app.state.engine, app.state.cfg = engine, cfg
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(cfg))

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": _redact(exc.message)}, status_code=exc.status)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        # e.g. the index's model file replaced under a running server: the why is for the log only.
        log.warning("409 on %s: %s", request.url.path, storage.redact(str(exc)))
        return JSONResponse({"detail": "the served index or its model changed while answering: retry, or "
                                       "restart the server after a re-index with another model"}, status_code=409)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        types = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}
        if name not in types:
            raise HTTPException(404, "no such file")
        return FileResponse(str(STATIC / name), media_type=types[name])

    @app.get("/api/info", summary="the served index version and what the server can do")
    def info() -> dict[str, Any]:
        s = engine.current()
        m = s.reader.manifest
        return {"version": s.reader.version, "vectors": s.reader.ntotal, "images": len(s.indexed),
                "dim": m["dim"], "metric": s.reader.metric, "factory": m.get("factory"), "k": cfg.k,
                "max_k": cfg.max_k, "max_upload_bytes": cfg.max_upload_bytes, "faces": s.catalog.sources["faces"] is not None,
                "metadata": len(s.catalog.meta), "reports": sorted(reports), "pose_modes": ["off", "filter", "rerank"]}

    @app.get("/api/paintings", summary="find paintings by title, artist, file name or date words")
    def paintings(q: str = Query("", max_length=200), offset: int = Query(0, ge=0),
                  limit: int = Query(24, ge=1, le=200)) -> dict[str, Any]:
        s = engine.current()
        total, ids = s.catalog.find(q, s.indexed, limit, offset)
        return {"total": total, "offset": offset, "items": [
            {"image_id": i, **s.catalog.describe(i), "image_url": image_url(i)} for i in ids]}

    @app.get("/api/paintings/{image_id:path}", summary="one painting: metadata, size and its detected faces")
    def painting(image_id: str) -> dict[str, Any]:
        s = engine.current()
        if image_id not in s.indexed:
            raise QueryError(404, f"image_id {image_id!r} is not in the served index")
        faces = s.catalog.faces_of(image_id)
        for f in faces:
            f["indexed"] = _indexed(s, image_id, f["face_idx"])
            f["thumb_url"] = face_url(image_id, f["face_idx"])
        size = s.catalog.size_of(image_id)
        return {"image_id": image_id, **s.catalog.describe(image_id), "image_url": image_url(image_id),
                "width": size[0] if size else None, "height": size[1] if size else None, "faces": faces,
                "whole_indexed": _indexed(s, image_id, -1)}

    @app.get("/api/search", summary="top-K similar faces/paintings for a stored key or an uploaded image")
    def search(image_id: str | None = None, upload: str | None = None, face_idx: int = Query(-1, ge=-1),
               offset: int = Query(0, ge=0), limit: int | None = Query(None, ge=1, le=1000),
               pose: str = Query("off", pattern="^(off|filter|rerank)$"),
               copies: bool = Query(False, description="find reproductions: verify the shortlist geometrically"),
               ) -> dict[str, Any]:
        if (image_id is None) == (upload is None):
            raise QueryError(422, "give exactly one of image_id= or upload=")
        s = engine.current()
        if upload is not None:
            q, qpose = engine.upload_query(upload, face_idx)
            query = {"upload": upload, "face_idx": face_idx}
            up = engine.uploads.get(upload)
            where = {"query_jpeg": up.jpegs.get(face_idx) if up is not None else None}
        else:
            q, qpose = engine.stored_query(s, image_id, face_idx)
            query = {"image_id": image_id, "face_idx": face_idx, **s.catalog.describe(image_id)}
            where = {"query_key": (image_id, face_idx)}
        out = engine.search(s, q, qpose, offset, limit or cfg.k, pose, copies, **where)
        return {"query": {**query, "pose": list(qpose) if qpose else None}, **out}

    @app.post("/api/search/vector", summary="top-K for a raw query vector")
    def search_vector(body: VectorQuery) -> dict[str, Any]:
        s = engine.current()
        q = np.asarray(body.vector, np.float32)[None, :]
        return {"query": {"vector": len(body.vector)}, **engine.search(s, q, None, body.offset, body.limit)}

    @app.post("/api/upload", summary="upload a query image (raw image body, or multipart field 'file')",
              openapi_extra={"requestBody": UPLOAD_BODY})
    async def upload(request: Request) -> dict[str, Any]:
        from starlette.concurrency import run_in_threadpool

        data = await _read_upload(request, cfg.max_upload_bytes)
        up = await run_in_threadpool(engine.upload, data)
        return {"upload_id": up.id, "width": up.width, "height": up.height, "note": up.note,
                "image_url": f"/api/upload/{up.id}/-1", "faces": [
                    {**f, "thumb_url": f"/api/upload/{up.id}/{f['face_idx']}"} for f in up.faces]}

    @app.get("/api/upload/{upload_id}/{face_idx}", summary="an upload's image (-1) or face crop (JPEG)")
    def upload_image(upload_id: str, face_idx: int) -> Response:
        up = engine.uploads.get(upload_id)
        return _jpeg(up.jpegs.get(face_idx) if up else None, "upload image")

    @app.get("/api/image/{image_id:path}", summary="a painting's stored image (JPEG, proxied from storage)")
    def image(image_id: str) -> Response:
        return _jpeg(engine.current().catalog.image_jpeg(image_id), f"image for {image_id!r}")

    @app.get("/api/face/{image_id:path}/{face_idx}", summary="a stored face crop (JPEG, proxied from storage)")
    def face(image_id: str, face_idx: int) -> Response:
        return _jpeg(engine.current().catalog.face_jpeg(image_id, face_idx), f"face {face_idx} of {image_id!r}")

    @app.get("/reports/", response_class=HTMLResponse, summary="the run reports (classifier, similarity)")
    def report_list() -> str:
        items = "".join(f'<li><a href="/reports/{n}/">{n}</a></li>' for n in sorted(reports)) or "<li>none</li>"
        return f"<!doctype html><title>Run reports</title><h1>Run reports</h1><ul>{items}</ul><a href='/'>back</a>"

    @app.get("/reports/{name}/{path:path}", summary="a file of a run report")
    def report_file(name: str, path: str) -> Response:
        if name not in reports or ".." in path.split("/") or path.startswith("/"):
            raise HTTPException(404, "no such report")
        if not path:
            files = sorted(f.path.rsplit("/", 1)[-1] for f in storage.list_files(reports[name], cfg.storage,
                                                                                recursive=False))
            html = [f for f in files if f.endswith(".html")]
            if not html:  # e.g. the similarity eval: metrics + grid, no page of its own
                return HTMLResponse(_listing(name, [f for f in files if "." + f.rsplit(".", 1)[-1] in REPORT_TYPES]))
            path = "report.html" if "report.html" in html else ("index.html" if "index.html" in html else html[0])
        ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        if ext not in REPORT_TYPES:
            raise HTTPException(404, "not a report file type")
        target = storage.join(reports[name], path)
        if not _inside_local_dir(reports[name], target, cfg):
            raise HTTPException(404, "no such report file")
        try:
            data = storage.read_bytes(target, cfg.storage)
        except FileNotFoundError:
            raise HTTPException(404, "no such report file") from None
        return Response(data, media_type=REPORT_TYPES[ext])

    return app


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def allowed_hosts(cfg: ServeConfig) -> list[str]:
    """Host headers to answer: a loopback server answers only its loopback names (DNS rebinding)."""
    if cfg.allowed_hosts is not None:
        return cfg.allowed_hosts
    return LOOPBACK_NAMES if cfg.host in ("127.0.0.1", "localhost", "::1") else ["*"]


def _inside_local_dir(base: str, target: str, cfg: ServeConfig) -> bool:
    # A symlink inside a report directory must not serve a file from elsewhere on the disk.
    loc = storage.filesystem_for(base, cfg.storage)
    if loc.is_s3:
        return True
    root = os.path.realpath(loc.path)
    return os.path.commonpath([root, os.path.realpath(storage.filesystem_for(target, cfg.storage).path)]) == root


def _listing(name: str, files: list[str]) -> str:
    from html import escape
    from urllib.parse import quote

    items = "".join(f'<li><a href="{quote(f)}">{escape(f)}</a></li>' + (
        f'<img src="{quote(f)}" alt="{escape(f)}" style="max-width:100%">' if f.endswith(".png") else "")
        for f in files)
    return (f"<!doctype html><title>{escape(name)} report</title><h1>{escape(name)}</h1>"
            f"<ul>{items}</ul><a href='/reports/'>all reports</a>")


def _indexed(s: Served, image_id: str, face_idx: int) -> bool:
    return s.reader.key_of(V.key_id(image_id, face_idx)) == (image_id, face_idx)


async def _read_upload(request: Request, limit: int) -> bytes:
    """The uploaded file's bytes, refusing (413) anything over ``limit`` before decoding it:
    by Content-Length when sent, else while streaming."""
    ctype = request.headers.get("content-type", "")
    multipart = ctype.startswith("multipart/form-data")
    cap = limit + (MULTIPART_SLACK if multipart else 0)
    too_large = QueryError(413, f"too_large_file: the upload is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise too_large
    if not multipart:
        return bytes(body)
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def once():
        yield bytes(body)
        yield b""

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=4).parse()
    except MultiPartException as exc:
        raise QueryError(400, f"malformed multipart upload: {exc.message}") from None
    file = form.get("file")
    if file is None or isinstance(file, str):
        raise QueryError(400, "the multipart upload has no file field named 'file'")
    data = await file.read()
    if len(data) > limit:
        raise too_large
    return data


def run(cfg: ServeConfig) -> dict[str, Any]:
    """Load the index and serve the page + API until interrupted (Ctrl-C)."""
    import uvicorn


    configure_pil(cfg.decode)
    app = create_app(cfg)
    s = app.state.engine.current()
    try:  # load the face detector and embedding model now, not on the first upload
        app.state.engine.warm_up()
    except (QueryError, ValueError, OSError) as exc:
        log.warning("uploads will fail: %s", getattr(exc, "message", exc))
    print(f"artextract serve: index {cfg.index} version {s.reader.version} ({s.reader.ntotal} vectors, "
          f"{len(s.indexed)} images); faces: {s.catalog.sources['faces'] or 'none'}; metadata: "
          f"{s.catalog.sources['manifest'] or 'none'}\n  open http://{cfg.host}:{cfg.port}/  "
          f"(OpenAPI schema: /openapi.json; interactive docs at /docs load their scripts from a CDN)", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the page and API are reachable from other machines (no authentication)", cfg.host)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    finally:
        app.state.engine.close()
    return {"counts": {"version": s.reader.version}}
