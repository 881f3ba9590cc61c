"""NGA open data -> manifest: ``objects.csv`` joined to the primary view in
``published_images.csv`` (``objectid = depictstmsobjectid``), IIIF URLs for every image, and
optionally a resumable download of the images (see nga_download)."""
from __future__ import annotations

import io
import logging
from typing import Any

import pandas as pd
import pyarrow as pa

from artextract import manifest

from artextract.core import storage
from artextract.config import IngestNgaConfig, StorageConfig
from artextract.ingest.nga_download import Fetched, Job, download
from artextract.core.runinfo import JobRun

log = logging.getLogger("artextract.ingest.nga")

SOURCE = "nga"
THUMB_SIDE = 200  # NGA's own iiifthumburl fits a 200x200 box
OBJECT_COLUMNS = ("objectid", "accessionnum", "title", "displaydate", "beginyear", "endyear",
                  "attribution", "medium", "classification", "subclassification")
IMAGE_COLUMNS = ("uuid", "iiifurl", "iiifthumburl", "viewtype", "sequence", "width", "height",
                 "depictstmsobjectid")
# Metadata columns of the manifest, after the core ones.
META_COLUMNS = ("objectid", "accessionnum", "title", "displaydate", "beginyear", "endyear",
                "attribution", "medium", "classification", "subclassification", "uuid",
                "full_width", "full_height", "iiif_base", "iiif_full_url", "iiif_bounded_url",
                "iiif_thumb_url")


def iiif_url(base: str, size: str = "full") -> str:
    """IIIF Image API URL of the whole region at ``size`` ('full' or '!n,n'), default quality."""
    return f"{base.rstrip('/')}/full/{size}/0/default.jpg"


def bounded(n: int) -> str:
    """The IIIF size that fits the image inside an n x n box."""
    return f"!{n},{n}"


def fit_within(width: Any, height: Any, side: int | None) -> tuple[int | None, int | None]:
    """Dimensions of a (width, height) image served fitted into a side x side box (no upscaling)."""
    if pd.isna(width) or pd.isna(height) or not width or not height:
        return None, None
    width, height = int(width), int(height)
    if side is None or max(width, height) <= side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_csv(uri: str, columns: tuple[str, ...], id_columns: tuple[str, ...],
             int_columns: tuple[str, ...], cfg: StorageConfig) -> pd.DataFrame:
    """Read ``columns`` of an NGA CSV as nullable strings; ids and ``int_columns`` as Int64."""
    data = storage.read_bytes(uri, cfg)
    # utf-8-sig: tolerate a BOM from spreadsheet exports.
    header = pd.read_csv(io.BytesIO(data), nrows=0, encoding="utf-8-sig").columns
    names = {str(c).strip().lower(): c for c in header}
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{uri}: missing column {missing[0]!r}"
                         + (f" (and {missing[1:]})" if len(missing) > 1 else "")
                         + f"; expected NGA open-data columns {list(columns)}")
    # Only the needed columns: the real objects.csv carries long free-text fields (provenance).
    df = pd.read_csv(io.BytesIO(data), usecols=[names[c] for c in columns], dtype="string",
                     encoding="utf-8-sig", keep_default_na=False, na_values=[""])
    df = df.rename(columns={names[c]: c for c in columns})[list(columns)]
    for col in id_columns + int_columns:
        raw = df[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        if col in id_columns:
            bad = raw[raw.notna() & num.isna()]
            if len(bad):
                raise ValueError(f"{uri}: column {col!r} has non-integer values, e.g. {bad.head(3).tolist()}")
        df[col] = num.round().astype("Int64")
    return df


def select(objects: pd.DataFrame, images: pd.DataFrame,
           classification: str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Filter objects, join each to its primary view (lowest sequence); returns rows and counts."""
    counts = {"objects": len(objects)}
    if objects["objectid"].isna().any():
        raise ValueError(f"objects: {int(objects['objectid'].isna().sum())} rows without an objectid")
    dup = objects["objectid"][objects["objectid"].duplicated()]
    if len(dup):
        raise ValueError(f"objects: duplicated objectid values, e.g. {dup.head(5).tolist()}")
    if classification:
        want = classification.strip().lower()
        objects = objects[objects["classification"].str.strip().str.lower() == want]
    counts["objects_after_filter"] = len(objects)

    primary = images[(images["viewtype"].str.strip().str.lower() == "primary")
                     & images["depictstmsobjectid"].notna()].copy()
    # Without iiifurl the base can still be derived from the uuid (NGA's URL scheme).
    derived = "https://api.nga.gov/iiif/" + primary["uuid"].str.strip()
    primary["iiif_base"] = primary["iiifurl"].str.strip().fillna(derived).str.rstrip("/")
    primary = primary[primary["iiif_base"].notna()]
    primary = primary[primary["depictstmsobjectid"].isin(objects["objectid"])]
    # sequence is text in NGA's schema: order numerically where it is a number ("10" after "2").
    primary["_seq"] = pd.to_numeric(primary["sequence"], errors="coerce")
    primary = primary.sort_values(["depictstmsobjectid", "_seq", "sequence", "uuid"], na_position="last")
    first = primary.drop_duplicates("depictstmsobjectid", keep="first")
    counts["duplicate_primary_views"] = len(primary) - len(first)

    rows = objects.merge(first.drop(columns=["_seq"]), left_on="objectid",
                         right_on="depictstmsobjectid", how="inner")
    counts["with_primary_image"] = len(rows)
    counts["without_primary_image"] = counts["objects_after_filter"] - len(rows)
    return rows.sort_values("objectid").reset_index(drop=True), counts


def add_urls(rows: pd.DataFrame, bounded_side: int) -> pd.DataFrame:
    """Add the IIIF URL columns and the published (full-resolution) dimensions."""
    rows = rows.copy()
    base = rows["iiif_base"]
    rows["iiif_full_url"] = base + "/full/full/0/default.jpg"
    rows["iiif_bounded_url"] = base + f"/full/{bounded(bounded_side)}/0/default.jpg"
    rows["iiif_thumb_url"] = rows["iiifthumburl"].str.strip().fillna(
        base + f"/full/{bounded(THUMB_SIDE)}/0/default.jpg")
    rows["full_width"], rows["full_height"] = rows["width"], rows["height"]
    return rows


def to_table(rows: pd.DataFrame, core: dict[str, list]) -> pa.Table:
    """Manifest table: the core columns given as lists, then the metadata columns of ``rows``."""
    meta = pa.Table.from_pandas(rows[list(META_COLUMNS)], preserve_index=False)
    # pandas' string dtype arrives as large_string: use plain string like the other sources.
    meta = meta.cast(pa.schema([
        pa.field(f.name, pa.string() if pa.types.is_large_string(f.type)
                 else pa.int32() if f.name in ("full_width", "full_height") else f.type)
        for f in meta.schema]))
    types = {f.name: f.type for f in manifest.CORE_SCHEMA}
    cols = {name: pa.array(values, type=types[name]) for name, values in core.items()}
    return pa.table({**cols, **{n: meta[n] for n in meta.column_names}})


def _previous_manifest(out: str, cfg: StorageConfig) -> dict[str, dict]:
    """image_id -> row of the manifest an earlier run left at ``out`` ({} when there is none)."""
    try:
        table = manifest.read(out, cfg)
    except (FileNotFoundError, ValueError, OSError) as exc:  # none yet, or unreadable: start fresh
        log.debug("no previous manifest at %s: %s", out, exc)
        return {}
    cols = [c for c in ("image_id", "uri", "size", "etag", "mtime", "width", "height") if c in table.column_names]
    return {r["image_id"]: r for r in table.select(cols).to_pylist()}


def run(cfg: IngestNgaConfig) -> dict:
    """Build the NGA manifest at ``cfg.out`` (optionally downloading the images); returns the summary."""
    for key in ("objects", "published_images", "out"):
        if not getattr(cfg, key):
            raise ValueError(f"ingest nga: '{key}' is required")
    dl = cfg.download
    if dl.enabled and not dl.images_out:
        raise ValueError("ingest nga: download.enabled needs download.images_out (e.g. --images-out URI)")
    st = cfg.storage
    run_ = JobRun("ingest_nga", cfg, cfg.out)
    objects = read_csv(cfg.objects, OBJECT_COLUMNS, ("objectid",), ("beginyear", "endyear"), st)
    images = read_csv(cfg.published_images, IMAGE_COLUMNS, ("depictstmsobjectid",), ("width", "height"), st)
    run_.lap("read")
    rows, counts = select(objects, images, cfg.classification)
    rows = add_urls(rows, cfg.iiif_bounded)
    rows["image_id"] = rows["objectid"].astype(str)
    log.info("nga: %d objects, %d after filter, %d with a primary image", counts["objects"],
             counts["objects_after_filter"], counts["with_primary_image"])
    run_.lap("join")

    failed_uri = storage.join(cfg.out, "failed.parquet")
    if not dl.enabled:
        # Preprocess can stream the bounded image over https where the host is reachable.
        dims = [fit_within(w, h, cfg.iiif_bounded) for w, h in zip(rows["width"], rows["height"])]
        core = {"image_id": rows["image_id"].tolist(), "uri": rows["iiif_bounded_url"].tolist(),
                "width": [d[0] for d in dims], "height": [d[1] for d in dims]}
        table, failed = to_table(rows, core), []
        storage.delete_file(failed_uri, st)  # a stale list from an earlier download run would mislead
    else:
        size = bounded(dl.max_side) if dl.max_side else "full"
        jobs = []
        for r in rows.itertuples(index=False):
            w, h = fit_within(r.width, r.height, dl.max_side)
            jobs.append(Job(r.image_id, iiif_url(r.iiif_base, size),
                            storage.join(dl.images_out, f"{r.objectid}.jpg"), w, h))
        results = download(jobs, dl, st, _previous_manifest(cfg.out, st))
        run_.lap("download")
        failed = [f for f in results if not f.ok]
        good = [f.ok for f in results]
        stored: list[Fetched] = [f for f in results if f.ok]
        core = {"image_id": [f.image_id for f in stored], "uri": [f.uri for f in stored],
                "size": [f.size for f in stored], "etag": [f.etag for f in stored],
                "mtime": [f.mtime for f in stored], "width": [f.width for f in stored],
                "height": [f.height for f in stored]}
        table = to_table(rows[good].reset_index(drop=True), core)
        storage.write_parquet(failed_uri, pa.table({
            "image_id": pa.array([f.image_id for f in failed], pa.string()),
            "url": pa.array([f.url for f in failed], pa.string()),
            "reason": pa.array([f.reason for f in failed], pa.string())}), st)
        counts.update(downloaded=sum(f.ok and not f.skipped for f in results),
                      skipped_existing=sum(f.skipped for f in results), failed=len(failed))
        if failed:
            log.warning("nga: %d images failed (see %s), e.g. %s: %s", len(failed), failed_uri,
                        failed[0].image_id, failed[0].reason)
    table = table.append_column("source", pa.array([SOURCE] * len(table), pa.string()))
    counts["manifest_rows"] = len(table)
    if counts["with_primary_image"] != counts["manifest_rows"] + len(failed):
        raise RuntimeError(f"nga: counts do not reconcile: {counts}")
    if dl.enabled and counts["downloaded"] + counts["skipped_existing"] != counts["manifest_rows"]:
        raise RuntimeError(f"nga: download counts do not reconcile: {counts}")
    shards = manifest.write(table, cfg.out, cfg.shard_rows, st)
    run_.lap("write")
    return run_.finish(counts, shards=len(shards), failed_list=failed_uri if dl.enabled else None)
