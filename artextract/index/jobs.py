"""CLI/job entry points of the index: ``artextract index build`` and ``artextract search``.

Build (``run_build``)
    Wraps :func:`artextract.index.build.build_index` in a :class:`JobRun`. Where the run records go:

    - ``<out>/config.resolved.yaml`` -- written when the run STARTS (so it is the config of the latest
      attempt, also of one that failed, e.g. on a held LOCK);
    - ``<out>/summary.json`` -- written when a build SUCCEEDS (the latest published build);
    - ``<out>/versions/vNNNNNN/config.resolved.yaml`` and ``.../summary.json`` -- copies of both for
      the version that build published. These are the authoritative per-version records: they are
      pruned together with their version, and ``search`` reads ``embeddings`` from them when it must
      fall back to the embedding shards (below). Versions published by ``update_index`` carry none.

    ``parallel=ray`` attaches to Ray first with ``init_ray(cfg.ray)`` (``ray.address`` /
    ``RAY_ADDRESS``, else a local Ray), so shard builds run on the configured cluster.

Search (``run_search``)
    Queries are either a ``.npy`` file (``vector=``, shape (d,) or (q, d)) or an image_id (``id=``,
    optionally ``face_idx=``; default: every stored vector of that image, one query each). An
    image's vectors are taken from the index itself: ``reconstruct(id)`` on the shard owning the id
    (``id % num_shards``); IVF shards get a hashtable direct map first, so this works for Flat and
    IVF-Flat (exact) and for PQ/SQ codes (approximate: ``query.approximate`` is true then). When
    ``embeddings=`` is set, or reconstruction fails, the vectors are read from the embedding shards
    instead (``embeddings=`` or the ``embeddings`` recorded in the version's config.resolved.yaml).
    Nothing is excluded: an id query finds its own vector first (score ~1 for normalised vectors).
    An image (``image=``) is queried by each detected face, else by the whole painting, embedded with
    the index's model: see :mod:`artextract.index.query_image`.

    Shards are searched in-process or by one Ray actor each (``parallel=``; ``auto`` uses actors from
    ``ray_min_vectors`` vectors on, :mod:`artextract.index.ray_search`); ``fan_out`` records which.

    Outputs under ``out``: ``results.json`` (per query: its key/source and hits with rank, image_id,
    face_idx, score; ``box`` (x1, y1, x2, y2 in original pixels) when ``faces=`` is given; manifest
    columns from ``metadata_columns`` present in ``manifest=``), ``grid.png`` (one row per query:
    the query thumbnail, then the top-k; face crops from ``faces/crop_jpeg`` for face_idx >= 0,
    ``images/whole_jpeg`` for whole-image keys (face_idx -1)) -- only with ``faces=``, otherwise
    ``results.json`` says why it was skipped -- and summary.json / config.resolved.yaml (JobRun).
"""
from __future__ import annotations

import io
import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from artextract.core import storage
from artextract.config import ConfigError, IndexBuildConfig, SearchConfig, StorageConfig, save_resolved
from artextract.index import versions as V
from artextract.index.copy_rank import apply_copies, hit_image
from artextract.core.runinfo import JobRun

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- build

def run_build(cfg: IndexBuildConfig) -> dict[str, Any]:
    """Build and publish a new index version; returns the summary written to summary.json."""
    from artextract.index.build import build_index

    if not cfg.embeddings or not cfg.out:
        raise ConfigError("index build needs embeddings= and out= (or --embeddings/--out)")
    job = JobRun("index_build", cfg, cfg.out)
    if cfg.parallel == "ray":
        from artextract.pipelines.ray_env import init_ray

        init_ray(cfg.ray)
        job.lap("ray_init")
    manifest = build_index(cfg.embeddings, cfg.out, shards=cfg.shards, storage_cfg=cfg.storage,
                           parallel=cfg.parallel, keep=cfg.keep, seed=cfg.seed, force_lock=cfg.force_lock,
                           **cfg.build_kwargs())
    job.lap("build")
    version = int(manifest["version"])
    counts = {"vectors": manifest["total"], "shards": manifest["num_shards"], "per_shard": manifest["counts"],
              "dim": manifest["dim"], "metric": manifest["metric"], "factory": manifest["factory"],
              "nprobe": manifest["nprobe"], "k_factor": (manifest.get("refine") or {}).get("k_factor"),
              "refine_store": (manifest.get("refine") or {}).get("store"), "recall_at_10": manifest["recall_at_10"],
              "recall_queries": manifest["recall_queries"], "version": version,
              "model_versions": manifest["model_versions"]}
    summary = job.finish(counts, version_dir=V.version_dir(cfg.out, version))
    vdir = V.version_dir(cfg.out, version)
    try:  # per-version copies (best effort: the version is already published)
        save_resolved(cfg, vdir)
        storage.write_json(storage.join(vdir, "summary.json"), summary, cfg.storage)
    except OSError as exc:  # pragma: no cover - e.g. pruned meanwhile by a concurrent build
        log.warning("could not write the per-version run records into %s: %s", vdir, exc)
    return summary


# ---------------------------------------------------------------------------------------- search

def _read_npy(uri: str, cfg: StorageConfig) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(storage.read_bytes(uri, cfg)), allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"query vector file not found: {uri}") from None
    except ValueError as exc:
        raise ValueError(f"{uri} is not a .npy array file: {exc}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{uri}: expected a (d,) or (q, d) float array, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _parquet_files(uri: str, cfg: StorageConfig) -> tuple[Any, list[str]]:
    """(filesystem, paths) of one parquet file or the part-*.parquet shards of a directory."""
    loc = storage.filesystem_for(uri, cfg)
    info = loc.fs.get_file_info(loc.path)
    if info.type.name == "File":
        return loc.fs, [loc.path]
    files = [storage.filesystem_for(u, cfg).path for u in storage.part_files(uri, cfg)]
    if not files:
        raise FileNotFoundError(f"no parquet file or part-*.parquet shards at {uri}")
    return loc.fs, files


def read_rows(uri: str, image_ids: list[str], columns: list[str], cfg: StorageConfig,
              optional: bool = False) -> pa.Table:
    """Rows of a parquet file/dir whose image_id is in ``image_ids`` (predicate pushed down), with the
    wanted ``columns`` that exist (``optional``) or all of them (else KeyError names the missing)."""
    fs, files = _parquet_files(uri, cfg)
    dataset = ds.dataset(files, format="parquet", filesystem=fs)
    names = dataset.schema.names
    missing = [c for c in columns if c not in names]
    if missing and not optional:
        raise ValueError(f"{uri} lacks the column(s) {missing}")
    cols = ["image_id"] + [c for c in columns if c in names and c != "image_id"]
    return dataset.to_table(columns=cols, filter=pc.field("image_id").isin(sorted(set(image_ids))))


FAN_OUT = {"local": "local", "ray": "ray_actors"}  # parallel= -> the fan_out recorded in the results


def open_reader(cfg: SearchConfig):
    """(reader, fan_out) for ``cfg.parallel``: auto picks Ray actors at ``ray_min_vectors`` vectors."""
    if not storage.exists(storage.join(cfg.index, "CURRENT"), cfg.storage):
        raise FileNotFoundError(f"no published index at {cfg.index} (CURRENT is missing; build it first "
                                f"with `artextract index build`)")
    mode = cfg.parallel
    if mode == "auto":
        total = int(V.read_manifest(cfg.index, None, cfg.storage).get("total", 0))
        mode = "ray" if total >= cfg.ray_min_vectors else "local"
    if mode == "ray":
        from artextract.index.ray_search import RayIndexReader
        from artextract.pipelines.ray_env import init_ray

        init_ray(cfg.ray)
        return RayIndexReader(cfg.index, cfg.storage, **cfg.reader_kwargs(), **cfg.ray_kwargs()), FAN_OUT[mode]
    from artextract.index.search import IndexReader

    return IndexReader(cfg.index, cfg.storage, **cfg.reader_kwargs()), FAN_OUT[mode]


def _vectors_from_embeddings(uri: str, keys: list[V.Key], cfg: StorageConfig) -> np.ndarray:
    table = read_rows(uri, [k[0] for k in keys], ["face_idx", "vector"], cfg)
    found = {(i, int(f)): r for r, (i, f) in enumerate(zip(table["image_id"].to_pylist(),
                                                           table["face_idx"].to_pylist()))}
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"embeddings at {uri} lack the keys {missing[:5]}")
    vec = V.vectors_of(table)
    return vec[[found[k] for k in keys]]


def query_vectors(reader, cfg: SearchConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(queries (q, d), per-query descriptions) from ``vector=``, ``id=`` or ``image=`` (module doc;
    image queries carry their thumbnail as ``jpeg``)."""
    if cfg.image:
        from artextract.index.query_image import image_queries

        q, info = image_queries(reader, cfg)
    elif cfg.vector:
        q = _read_npy(cfg.vector, cfg.storage)
        info = [{"source": "vector", "vector": cfg.vector, "row": i} for i in range(len(q))]
    else:
        keys = [k for k in reader.keys_of_image(cfg.id) if cfg.face_idx is None or k[1] == cfg.face_idx]
        if not keys:
            what = f"image_id {cfg.id!r}" + (f" face_idx {cfg.face_idx}" if cfg.face_idx is not None else "")
            raise ValueError(f"{what} is not in the index at {cfg.index} (version {reader.version})")
        source, approximate = "index", False
        q = None
        if not cfg.embeddings:
            try:
                q = reader.reconstruct(keys)
                approximate = not reader.manifest["factory"].endswith(",Flat")
            except RuntimeError as exc:
                log.info("cannot reconstruct vectors from the index (%s); reading embeddings", exc)
        if q is None:
            from artextract.index.query_image import recorded_embeddings

            emb = cfg.embeddings or recorded_embeddings(reader, cfg.storage)
            if not emb:
                raise RuntimeError("the index cannot reconstruct stored vectors and no embeddings URI is "
                                   "known: pass embeddings=URI")
            q, source = _vectors_from_embeddings(emb, keys, cfg.storage), f"embeddings:{emb}"
        info = [{"source": source, "image_id": i, "face_idx": f, "approximate": approximate} for i, f in keys]
    if q.shape[1] != reader.manifest["dim"]:
        raise ValueError(f"query vectors have dim {q.shape[1]}, the index has dim {reader.manifest['dim']}")
    return q, info


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _join(results: list[dict[str, Any]], queries: list[dict[str, Any]], cfg: SearchConfig
          ) -> tuple[dict[V.Key, bytes], dict[str, bytes]]:
    """Add boxes and manifest metadata to every hit in place; returns the face crops and whole
    images (by key / image_id) the grid needs."""
    keys = {(h["image_id"], h["face_idx"]) for r in results for h in r["hits"]}
    keys |= {(q["image_id"], q["face_idx"]) for q in queries if "image_id" in q}
    image_ids = sorted({k[0] for k in keys})
    crops: dict[V.Key, bytes] = {}
    wholes: dict[str, bytes] = {}
    boxes: dict[V.Key, list[float]] = {}
    meta: dict[str, dict[str, Any]] = {}
    if cfg.faces and image_ids:
        faces = read_rows(storage.join(cfg.faces, "faces"), image_ids, ["face_idx", "box", "crop_jpeg"], cfg.storage)
        for i, f, box, crop in zip(*(faces[c].to_pylist() for c in ("image_id", "face_idx", "box", "crop_jpeg"))):
            boxes[(i, int(f))] = [round(float(x), 2) for x in box] if box is not None else None
            if crop:
                crops[(i, int(f))] = crop
        if cfg.grid or cfg.copies:  # copies= verifies whole-image hits on their pixels
            whole_ids = sorted({k[0] for k in keys if k[1] < 0 or k not in crops})
            if whole_ids:
                images = read_rows(storage.join(cfg.faces, "images"), whole_ids, ["whole_jpeg"], cfg.storage)
                wholes = {i: b for i, b in zip(images["image_id"].to_pylist(), images["whole_jpeg"].to_pylist())
                          if b}
    if cfg.manifest and image_ids:
        table = read_rows(cfg.manifest, image_ids, list(cfg.metadata_columns), cfg.storage, optional=True)
        cols = [c for c in table.column_names if c != "image_id"]
        for row in table.to_pylist():
            meta[row["image_id"]] = {c: _clean(row[c]) for c in cols}
    for r in results:
        for h in r["hits"]:
            key = (h["image_id"], h["face_idx"])
            if cfg.faces:
                h["box"] = boxes.get(key)
            if cfg.manifest:
                h["metadata"] = meta.get(h["image_id"])
    return crops, wholes


def _thumb(jpeg: bytes | None, px: int):
    from PIL import Image, ImageOps

    cell = Image.new("RGB", (px, px), (235, 235, 235))
    if jpeg:
        try:
            im = ImageOps.contain(Image.open(io.BytesIO(jpeg)).convert("RGB"), (px, px))
            cell.paste(im, ((px - im.width) // 2, (px - im.height) // 2))
        except OSError:
            pass
    return cell


def render_grid(results: list[dict[str, Any]], queries: list[dict[str, Any]], crops: dict[V.Key, bytes],
                wholes: dict[str, bytes], k: int, px: int, query_jpegs: list[bytes | None] | None = None) -> bytes:
    """PNG: one row per query, the query thumbnail (``query_jpegs[row]`` where given: an image
    query's face crop or whole painting) then its top-k hits, captioned with rank/score."""
    from PIL import Image, ImageDraw

    cap = 14
    pad = 4
    cols = k + 1
    img = Image.new("RGB", (cols * (px + pad) + pad, len(results) * (px + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(img)

    for row, (r, q) in enumerate(zip(results, queries)):
        y = pad + row * (px + cap + pad)
        if "image_id" in q:
            qkey = (q["image_id"], q["face_idx"])
            cell, label = _thumb(hit_image(qkey, crops, wholes), px), f"Q {q['image_id']}#{q['face_idx']}"[:px // 6]
        elif q.get("source") == "image":
            jpeg = query_jpegs[row] if query_jpegs else None
            cell, label = _thumb(jpeg, px), ("Q whole image" if q["face_idx"] < 0 else f"Q face {q['face_idx']}")
        else:
            cell, label = _thumb(None, px), f"Q vector row {q['row']}"
        img.paste(cell, (pad, y))
        draw.rectangle([pad - 2, y - 2, pad + px + 1, y + px + 1], outline=(200, 30, 30), width=2)
        draw.text((pad, y + px + 1), label, fill="black")
        for j, h in enumerate(r["hits"]):
            x = pad + (j + 1) * (px + pad)
            img.paste(_thumb(hit_image((h["image_id"], h["face_idx"]), crops, wholes), px), (x, y))
            draw.text((x, y + px + 1), f"#{h['rank']} {h['score']:.3f}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _pose_rank(results: list[dict[str, Any]], queries: list[dict[str, Any]], cfg: SearchConfig) -> None:
    """Filter/re-rank every query's hits by head-pose distance (in place), keeping k."""
    from artextract.index.pose_rank import apply_pose

    ids = sorted({h["image_id"] for r in results for h in r["hits"]} |
                 {q["image_id"] for q in queries if "image_id" in q})
    faces = read_rows(storage.join(cfg.faces, "faces"), ids, ["face_idx", "yaw", "pitch", "roll"], cfg.storage)
    poses = {(i, int(f)): (y, p, r) for i, f, y, p, r in zip(*(faces[c].to_pylist() for c in (
        "image_id", "face_idx", "yaw", "pitch", "roll")))}
    for res, q in zip(results, queries):
        if "image_id" in q:
            qpose = poses.get((q["image_id"], q["face_idx"]))
            q["pose"] = list(qpose) if qpose else None
        else:  # an image query's own face pose (None entries: undefined angles)
            qpose = tuple(math.nan if v is None else v for v in q["pose"]) if q.get("pose") else None
        res["hits"] = apply_pose(res["hits"], qpose, poses, cfg.pose, cfg.k, cfg.pose_max_deg, cfg.pose_weight)


def _copy_rank(results: list[dict[str, Any]], queries: list[dict[str, Any]], query_jpegs: list[bytes | None],
               crops: dict[V.Key, bytes], wholes: dict[str, bytes], cfg: SearchConfig,
               higher_is_better: bool) -> dict[str, int]:
    """copies=true: geometric verification of each shortlist; id queries verify with their own crop."""
    jpegs = list(query_jpegs)
    for i, q in enumerate(queries):
        if jpegs[i] is None and "image_id" in q:  # a stored key: its crop (or painting) from faces=
            jpegs[i] = hit_image((q["image_id"], q["face_idx"]), crops, wholes)
    return apply_copies(results, jpegs, crops, wholes, cfg.k, cfg.copies_min_inliers, higher_is_better)


def run_search(cfg: SearchConfig) -> dict[str, Any]:
    """k-NN search; writes results.json (+ grid.png) under ``out``; returns the summary."""
    if not cfg.index or not cfg.out:
        raise ConfigError("search needs index= and out= (or --index/--out)")
    if sum(bool(x) for x in (cfg.vector, cfg.id, cfg.image)) != 1:
        raise ConfigError("search needs exactly one of vector= (--vector FILE) or id= (--id IMAGE_ID) or "
                          "image= (--image PATH)")
    if cfg.face_idx is not None and not cfg.id:
        raise ConfigError("face_idx= only applies to id= queries")
    if cfg.pose != "off" and not cfg.faces:
        raise ConfigError("pose= needs faces= (the preprocess output holding each face's yaw/pitch/roll)")
    if cfg.copies and (not cfg.faces or cfg.pose != "off"):
        raise ConfigError("copies=true needs faces= (the hits' crops) and pose=off (one re-ranking at a time)")
    job = JobRun("search", cfg, cfg.out)
    reader, fan_out = open_reader(cfg)
    with reader:
        job.lap("load")
        q, queries = query_vectors(reader, cfg)
        query_jpegs = [qd.pop("jpeg", None) for qd in queries]
        job.lap("query")
        fetch = cfg.k * (cfg.pose_oversample if cfg.pose != "off" else 1)
        if cfg.copies:
            fetch = max(cfg.k, cfg.copies_shortlist)
        scores, keys = reader.search(q, fetch, cfg.nprobe, cfg.k_factor)
        job.lap("search")
    results = []
    for qi, (srow, krow) in enumerate(zip(scores, keys)):
        hits = [{"rank": r + 1, "image_id": key[0], "face_idx": int(key[1]), "score": round(float(s), 6)}
                for r, (s, key) in enumerate(zip(srow, krow))]
        results.append({"query": queries[qi], "hits": hits})
    if cfg.pose != "off":
        _pose_rank(results, queries, cfg)
    crops, wholes = _join(results, queries, cfg)
    job.lap("join")
    copy_counts = {}
    if cfg.copies:
        copy_counts = _copy_rank(results, queries, query_jpegs, crops, wholes, cfg, reader.metric == "ip")
        job.lap("verify")
    grid_uri, note = None, None
    if not cfg.faces:
        note = "grid skipped: no faces= (preprocess output) given to take thumbnails from"
    elif not cfg.grid:
        note = "grid skipped: grid=false"
    else:
        grid_uri = storage.join(cfg.out, "grid.png")
        storage.write_bytes(grid_uri, render_grid(results, queries, crops, wholes, cfg.k, cfg.thumb_px,
                                                  query_jpegs), cfg.storage)
        job.lap("grid")
    doc = {"index": cfg.index, "version": reader.version, "metric": reader.metric, "k": cfg.k,
           "nprobe": cfg.nprobe or reader.nprobe, "k_factor": cfg.k_factor or reader.k_factor,
           "factory": reader.manifest["factory"], "fan_out": fan_out,
           "score": "inner product (higher is better)" if reader.metric == "ip"
           else "squared L2 distance (lower is better)",
           "grid": grid_uri, "grid_note": note, "results": results}
    storage.write_json(storage.join(cfg.out, "results.json"), doc, cfg.storage)
    counts = {"queries": len(results), "k": cfg.k, "hits": sum(len(r["hits"]) for r in results),
              "index_version": reader.version, "index_vectors": reader.ntotal,
              "grid": grid_uri is not None, "fan_out": fan_out, **copy_counts}
    return job.finish(counts, results=storage.join(cfg.out, "results.json"), grid=grid_uri, grid_note=note)
