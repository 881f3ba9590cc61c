"""Batch stage: collect processed rows per shard and commit each shard once all its rows have
arrived. A shard is three parquet files, images/ written last, so images/part-N is the commit
marker; each file is written atomically. Rows arriving twice (a retried task) are de-duplicated."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.manifest import shard_name

PROCESS_COLUMNS = ("status", "reason", "detail", "bytes", "orig_width", "orig_height", "orig_mode",
                   "orig_format", "n_frames", "det_scale", "n_faces", "whole_jpeg", "whole_width",
                   "whole_height")
STATS_SCHEMA = pa.schema([("shard", pa.int64()), ("rows", pa.int64()), ("ok", pa.int64()),
                          ("quarantined", pa.int64()), ("faces", pa.int64())])


def shard_uri(out: str, table: str, shard: int) -> str:
    """URI of ``table`` ('images' | 'faces' | 'quarantine') for ``shard``."""
    return storage.join(out, table, shard_name(shard))


class ShardWriter:
    """Buffers rows by ``shard``; writes images/faces/quarantine for a shard when it is complete."""

    def __init__(self, out: str, storage_cfg: StorageConfig, manifest: pa.Table, crop_size: int):
        self.out, self.storage_cfg, self.crop_size = out, storage_cfg, crop_size
        # manifest is sorted by shard: keep one slice per shard for the metadata join.
        self.manifest: dict[int, pa.Table] = {}
        shards = manifest["shard"].to_numpy()
        for s in sorted(set(shards.tolist())):
            idx = (shards == s).nonzero()[0]
            self.manifest[s] = manifest.slice(int(idx[0]), len(idx)).drop_columns(["shard"])
        self.buffers: dict[int, dict[str, pa.Table]] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for s in sorted(set(batch["shard"].to_pylist())):
            part = batch.filter(pc.equal(batch["shard"], s))
            buf = self.buffers.setdefault(s, {})
            for i, image_id in enumerate(part["image_id"].to_pylist()):
                buf[image_id] = part.slice(i, 1)
            if len(buf) == len(self.manifest[s]):
                done.append(self.write_shard(s, pa.concat_tables(list(buf.values()))))
                del self.buffers[s]
        return pa.Table.from_pylist(done, schema=STATS_SCHEMA)

    def write_shard(self, shard: int, rows: pa.Table) -> dict:
        """Join processed rows onto the shard's manifest rows and commit the three tables."""
        meta = self.manifest[shard]
        order = {image_id: i for i, image_id in enumerate(rows["image_id"].to_pylist())}
        rows = rows.take(pa.array([order[i] for i in meta["image_id"].to_pylist()]))
        images = meta
        for col in PROCESS_COLUMNS:
            images = images.append_column(col, rows[col])
        faces = explode_faces(rows["image_id"], rows["faces"], self.crop_size)
        bad = pc.not_equal(rows["status"], "ok")
        quarantine = pa.table({"image_id": rows["image_id"], "uri": rows["uri"], "reason": rows["reason"],
                               "detail": rows["detail"], "bytes": rows["bytes"]}).filter(bad)
        storage.write_parquet(shard_uri(self.out, "faces", shard), faces, self.storage_cfg)
        storage.write_parquet(shard_uri(self.out, "quarantine", shard), quarantine, self.storage_cfg)
        storage.write_parquet(shard_uri(self.out, "images", shard), images, self.storage_cfg)
        n_ok = len(rows) - len(quarantine)
        return {"shard": shard, "rows": len(rows), "ok": n_ok, "quarantined": len(quarantine), "faces": len(faces)}


def explode_faces(image_ids: pa.ChunkedArray, faces: pa.ChunkedArray, crop_size: int) -> pa.Table:
    """One row per face: image_id, face_idx, box, landmarks, prob, yaw/pitch/roll, crop_jpeg, crop_size."""
    faces = faces.combine_chunks()
    parents = pc.list_parent_indices(faces)
    flat = pc.list_flatten(faces)
    cols = {"image_id": pc.take(image_ids, parents)}
    for name in ("face_idx", "box", "landmarks", "prob", "yaw", "pitch", "roll", "crop_jpeg"):
        cols[name] = pc.struct_field(flat, name)
    cols["crop_size"] = pa.array([crop_size] * len(flat), pa.int32())
    return pa.table(cols)
