"""What every sharded job shares: a plan fingerprint that refuses to mix outputs of different
inputs, the list of shards not yet committed, and a bounded number of passes over them."""
from __future__ import annotations

from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.manifest import shard_name


def check_plan(out: str, cfg: StorageConfig, plan: dict, overwrite: bool, shard_dirs: tuple[str, ...],
               what: str) -> None:
    """Write ``out/_plan.json``; if it holds another fingerprint, refuse (or delete its shards)."""
    uri = storage.join(out, "_plan.json")
    if storage.exists(uri, cfg):
        old = storage.read_json(uri, cfg)
        if old.get("fingerprint") != plan["fingerprint"]:
            if not overwrite:
                raise ValueError(f"{out} holds {what}; use a new --out or pass overwrite=true")
            for sub in shard_dirs:
                for i in range(int(old.get("shards", 0))):
                    storage.delete_file(storage.join(out, sub, shard_name(i)) if sub else
                                        storage.join(out, shard_name(i)), cfg)
    storage.write_json(uri, plan, cfg)


def pending(out: str, cfg: StorageConfig, n_shards: int, marker_dir: str = "") -> list[int]:
    """Shards whose commit marker (``part-N.parquet`` under ``marker_dir``) does not exist yet."""
    where = storage.join(out, marker_dir) if marker_dir else out
    done = {f.base_name for f in storage.list_files(where, cfg, suffix=".parquet", recursive=False)}
    return [i for i in range(n_shards) if shard_name(i) not in done]


def run_passes(work: pa.Table, todo: list[int], run: Callable[[pa.Table], tuple[int, float]],
               remaining: Callable[[], list[int]], passes: int = 2) -> tuple[int, float]:
    """Run ``run`` over the rows of pending shards until none remain; returns (rows, seconds).

    A shard lost with a crashed writer is simply missing afterwards: the next pass redoes only it.
    """
    rows, seconds, attempt = 0, 0.0, 0
    while todo and attempt < passes:
        attempt += 1
        r, s = run(work.filter(pc.is_in(work["shard"], pa.array(todo, pa.int64()))))
        rows, seconds = rows + r, seconds + s
        todo = remaining()
    if todo:
        raise RuntimeError(f"shards {todo[:10]} were not written after {attempt} passes")
    return rows, seconds
