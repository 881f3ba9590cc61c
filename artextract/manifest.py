"""The manifest: parquet shards with one row per image. Every source adds its own label and
metadata columns to the core ones below."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from artextract.core import layout, storage
from artextract.config import StorageConfig

CORE_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("uri", pa.string()),
    ("size", pa.int64()),
    ("etag", pa.string()),
    ("mtime", pa.timestamp("ms", tz="UTC")),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("source", pa.string()),
])


def shard_name(i: int, ext: str = "parquet") -> str:
    """The deterministic name of shard ``i``."""
    return f"part-{i:05d}.{ext}"


def conform(table: pa.Table) -> pa.Table:
    """Add missing core columns as nulls, cast core columns to their types, put them first."""
    cols, names = [], []
    for field in CORE_SCHEMA:
        if field.name in table.column_names:
            col = table[field.name]
            cols.append(col if col.type == field.type else pc.cast(col, field.type))
        else:
            cols.append(pa.nulls(len(table), field.type))
        names.append(field.name)
    for name in table.column_names:
        if name not in names:
            cols.append(table[name])
            names.append(name)
    return pa.table(cols, names=names)


def validate(table: pa.Table) -> None:
    """Raise ValueError when ids are missing or duplicated, or a row has no URI."""
    ids = table["image_id"]
    if ids.null_count:
        raise ValueError(f"manifest has {ids.null_count} rows without an image_id")
    if table["uri"].null_count:
        raise ValueError(f"manifest has {table['uri'].null_count} rows without a uri")
    counts = pc.value_counts(ids)
    dup = [str(v["values"]) for v in counts.to_pylist() if v["counts"] > 1]
    if dup:
        raise ValueError(f"manifest has {len(dup)} duplicated image_id values, e.g. {dup[:5]}")


def write(table: pa.Table, out_uri: str, shard_rows: int, cfg: StorageConfig | None = None) -> list[str]:
    """Write a manifest as ``part-NNNNN.parquet`` shards sorted by image_id; returns shard URIs.

    Published as one set (``storage.publish_parts``): a reader sees the whole old manifest or the
    whole new one, never a mix, and an earlier, larger manifest's extra shards are not read.
    """
    table = conform(table)
    validate(table)
    table = table.sort_by("image_id")
    n = max(1, -(-len(table) // shard_rows))
    return storage.publish_parts(out_uri, [table.slice(i * shard_rows, shard_rows) for i in range(n)], cfg)


def read(uri: str, cfg: StorageConfig | None = None) -> pa.Table:
    """Read a manifest (a directory of shards or one parquet file), validated."""
    table = conform(layout.Manifest(uri, cfg).read())
    validate(table)
    return table
