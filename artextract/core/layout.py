"""One owner per on-disk format: where each kind of run output keeps its shards, how to list and
read them, how to tell one from another, and what a run recorded about its inputs (lineage).

Formats (every table is a directory of ``part-*.parquet`` shards, listed by
:func:`artextract.core.storage.part_files`, which honours a published ``_parts.json`` set):

- :class:`Parts` -- one such directory (or a single parquet file): list, read rows by image_id;
- manifest (``ingest``): a :class:`Parts` directory at the run's root (schema in ``artextract.manifest``);
- :class:`PreprocessOutput` (``preprocess``): ``faces/``, ``images/``, ``quarantine/`` tables;
- :class:`EmbeddingSet` (``embed``): a :class:`Parts` directory of image_id, face_idx, vector, ...;
- the index version (``index build`` / ``reindex``): ``artextract.index.versions`` owns its files;
  its ``index.json`` carries the :func:`lineage` recorded at build time.

Lineage: every run writes its resolved config beside its outputs (``config.resolved.yaml``, see
``core/runinfo``). :func:`lineage` reads those records once, forward from the embeddings an index is
built from, and the build stores the result in ``index.json`` under ``lineage``; readers then take
the embed model, the preprocess output and the manifest from there instead of walking earlier runs.
"""
from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml

from artextract.core import storage
from artextract.core.schema import StorageConfig

log = logging.getLogger(__name__)

RUN_CONFIG = "config.resolved.yaml"
PREPROCESS_TABLES = ("faces", "images", "quarantine")


class Parts:
    """A directory of ``part-*.parquet`` shards, or one parquet file."""

    def __init__(self, uri: str, cfg: StorageConfig | None = None, what: str = "parquet shards", hint: str = ""):
        self.uri, self.cfg, self.what, self.hint = uri, cfg or StorageConfig(), what, hint

    def files(self) -> list[str]:
        """Committed shard URIs, sorted ([] when none)."""
        return storage.part_files(self.uri, self.cfg)

    def require(self) -> list[str]:
        """Shard URIs; FileNotFoundError naming the format when there are none."""
        files = self.files()
        if not files:
            raise FileNotFoundError(f"no {self.what} (part-*.parquet) under {self.uri}{self.hint}")
        return files

    def exists(self) -> bool:
        return bool(self.files())

    def dataset(self) -> ds.Dataset:
        """A pyarrow dataset over the file or the committed shards."""
        loc = storage.filesystem_for(self.uri, self.cfg)
        if loc.fs.get_file_info(loc.path).type.name == "File":
            paths = [loc.path]
        else:
            paths = [storage.filesystem_for(u, self.cfg).path for u in self.files()]
            if not paths:
                raise FileNotFoundError(f"no parquet file or part-*.parquet shards at {self.uri}")
        return ds.dataset(paths, format="parquet", filesystem=loc.fs)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole table (``columns`` only)."""
        return storage.read_parquet(self.uri, self.cfg, columns=columns)

    def rows(self, image_ids: list[str], columns: list[str], optional: bool = False) -> pa.Table:
        """Rows whose image_id is in ``image_ids`` (predicate pushed down), with the wanted ``columns``
        that exist (``optional``) or all of them (else ValueError names the missing)."""
        dataset = self.dataset()
        names = dataset.schema.names
        missing = [c for c in columns if c not in names]
        if missing and not optional:
            raise ValueError(f"{self.uri} lacks the column(s) {missing}")
        cols = ["image_id"] + [c for c in columns if c in names and c != "image_id"]
        return dataset.to_table(columns=cols, filter=pc.field("image_id").isin(sorted(set(image_ids))))


class Manifest(Parts):
    """An ingest manifest: image_id, uri, labels, metadata."""

    def __init__(self, uri: str, cfg: StorageConfig | None = None):
        super().__init__(uri, cfg, "manifest shards")


class PreprocessOutput:
    """A preprocess run: ``faces/`` (crops, boxes, poses), ``images/`` (status, whole JPEG),
    ``quarantine/`` (reasons)."""

    def __init__(self, uri: str, cfg: StorageConfig | None = None):
        self.uri, self.cfg = uri, cfg or StorageConfig()

    def table(self, name: str) -> Parts:
        if name not in PREPROCESS_TABLES:
            raise ValueError(f"a preprocess output has the tables {PREPROCESS_TABLES}, not {name!r}")
        return Parts(storage.join(self.uri, name), self.cfg, f"{name}/ shards", " (is it a preprocess output?)")

    @property
    def faces(self) -> Parts:
        return self.table("faces")

    @property
    def images(self) -> Parts:
        return self.table("images")

    def is_one(self) -> bool:
        """True when ``images/`` holds shards (a manifest has its shards at the root)."""
        return self.images.exists()


def labelled_rows(uri: str, cfg: StorageConfig | None = None) -> tuple[str, Parts]:
    """("preprocess" | "manifest", its per-image table) for a URI that is either: the one place that
    tells the two apart (a preprocess output's per-image rows are ``images/``)."""
    pre = PreprocessOutput(uri, cfg)
    if pre.is_one():
        return "preprocess", pre.images
    return "manifest", Manifest(uri, cfg)


class EmbeddingSet(Parts):
    """An embed run: image_id, face_idx, vector, model_version, yaw/pitch/roll."""

    def __init__(self, uri: str, cfg: StorageConfig | None = None):
        super().__init__(uri, cfg, "embedding shards")


def run_config(run_uri: str, cfg: StorageConfig | None = None) -> dict[str, Any]:
    """The resolved config a run recorded beside its outputs ({} when it has none)."""
    uri = storage.join(run_uri, RUN_CONFIG)
    if not storage.exists(uri, cfg):
        return {}
    return yaml.safe_load(storage.read_bytes(uri, cfg)) or {}


def _record(run_uri: str | None, cfg: StorageConfig | None) -> dict[str, Any]:
    if not run_uri:
        return {}
    try:
        return run_config(run_uri, cfg)
    except (OSError, ValueError) as exc:  # unreadable record: lineage stays partial, never fatal
        log.info("no readable %s under %s: %s", RUN_CONFIG, run_uri, exc)
        return {}


def lineage(embeddings: str | None, cfg: StorageConfig | None = None) -> dict[str, Any]:
    """What an index built from ``embeddings`` descends from: {embeddings, embed (model, image_size,
    dim, seed, what of the embed run), preprocess (its input), manifest (the preprocess run's)}.
    Keys whose record is missing are None."""
    run = _record(embeddings, cfg)
    pre = run.get("input") or None
    embed = {k: run[k] for k in ("model", "image_size", "dim", "seed", "what") if k in run} or None
    return {"embeddings": embeddings or None, "embed": embed if embed and embed.get("model") else None,
            "preprocess": pre, "manifest": _record(pre, cfg).get("manifest") or None}
