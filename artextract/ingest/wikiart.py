"""``artextract ingest wikiart``: the ArtGAN split files + a WikiArt image tree -> manifest.

The six published split files (style/genre/artist x train/val) are merged per image path into
label names, indices and one ``split``. Listed images absent from the tree go to
``missing.parquet`` (not the manifest); images in the tree that no split file mentions are kept
with null labels. Formats, exactly as published:

- ``style_*.csv``, ``genre_*.csv``: ``Style/file.jpg,label`` rows, CRLF, no header;
- ``artist_train``, ``artist_val``: a ``(Path to image),, (Groundtruth class)`` header line, a blank
  line, then ``Style/file.jpg,,label`` rows, LF;
- ``style_class.txt``, ``genre_class``, ``artist_class``: ``index Name`` lines.
"""
from __future__ import annotations

import logging
import posixpath
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from artextract import manifest

from artextract.core import storage
from artextract.config import IngestWikiartConfig, StorageConfig
from artextract.ingest import probe
from artextract.core.runinfo import JobRun

log = logging.getLogger(__name__)

TASKS = ("style", "genre", "artist")
SPLIT_FILES: tuple[tuple[str, str, str], ...] = (
    ("style", "train", "style_train.csv"), ("style", "val", "style_val.csv"),
    ("genre", "train", "genre_train.csv"), ("genre", "val", "genre_val.csv"),
    ("artist", "train", "artist_train"), ("artist", "val", "artist_val"),
)
CLASS_FILES = {"style": "style_class.txt", "genre": "genre_class", "artist": "artist_class"}
ARTIST_HEADER = "(Path to image)"
CONFLICT = "conflict"


@dataclass
class Listed:
    """Everything the split files say about one image path."""

    path: str
    idx: dict[str, int | None] = field(default_factory=dict)
    splits: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)
    conflicts: set[str] = field(default_factory=set)

    @property
    def split(self) -> str:
        return next(iter(self.splits)) if len(self.splits) == 1 else CONFLICT


def _read_text(base: str, name: str, cfg: StorageConfig) -> str:
    uri = storage.join(base, name)
    try:
        data = storage.read_bytes(uri, cfg)
    except FileNotFoundError:
        raise FileNotFoundError(f"ingest wikiart: {name} not found in {base!r}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not UTF-8 text (byte {exc.start})") from None


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) with CR/LF removed and trailing blank lines dropped."""
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return list(enumerate(lines, 1))


def parse_classes(text: str, name: str) -> dict[int, str]:
    """Parse an ``index Name`` class list."""
    out: dict[int, str] = {}
    for no, line in _lines(text):
        parts = line.split(None, 1)
        if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()):
            raise ValueError(f"{name}:{no}: expected 'index Name', got {line!r}")
        idx = int(parts[0])
        if idx in out:
            raise ValueError(f"{name}:{no}: class index {idx} appears twice")
        out[idx] = parts[1].strip()
    if not out:
        raise ValueError(f"{name}: no classes")
    return out


def _unquote(path: str) -> str:
    # The published files are not CSV-quoted, but a re-exported copy may be.
    if len(path) >= 2 and path[0] == path[-1] == '"':
        return path[1:-1].replace('""', '"')
    return path


def parse_split(text: str, name: str, artist: bool) -> list[tuple[int, str, int]]:
    """Parse one split file into (line number, path, label index) rows."""
    lines = _lines(text)
    if artist and lines and lines[0][1].startswith(ARTIST_HEADER):
        lines = lines[1:]
        if lines and not lines[0][1].strip():
            lines = lines[1:]
    sep, form = (",,", "Style/file.jpg,,label") if artist else (",", "Style/file.jpg,label")
    rows = []
    for no, line in lines:
        # Split on the LAST separator: labels are digits, paths may contain commas.
        path, found, label = line.rpartition(sep)
        label = label.strip()
        path = _unquote(path)
        if not found or not path or path.endswith(",") or not (label.isascii() and label.isdigit()):
            raise ValueError(f"{name}:{no}: expected '{form}', got {line!r}")
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"{name}:{no}: path {path!r} must be relative to the image tree")
        rows.append((no, path, int(label)))
    return rows


def _key(path: str) -> str:
    # Split files are NFC; trees written on macOS (or uploaded from one) may hold NFD names.
    return unicodedata.normalize("NFC", path)


def parse_splits(cfg: IngestWikiartConfig
                 ) -> tuple[dict[str, Listed], dict[str, dict[int, str]], dict[str, Any]]:
    """Read all split and class files; returns records by path key, class names, parse counts."""
    classes = {t: parse_classes(_read_text(cfg.splits, f, cfg.storage), f) for t, f in CLASS_FILES.items()}
    records: dict[str, Listed] = {}
    rows_per_file: dict[str, int] = {}
    duplicate_rows = 0
    for task, split, name in SPLIT_FILES:
        rows = parse_split(_read_text(cfg.splits, name, cfg.storage), name, artist=task == "artist")
        rows_per_file[name] = len(rows)
        for no, path, label in rows:
            if label not in classes[task]:
                raise ValueError(f"{name}:{no}: label {label} is not an index of {CLASS_FILES[task]} "
                                 f"(0..{max(classes[task])})")
            rec = records.setdefault(_key(path), Listed(path))
            rec.splits.add(split)
            rec.files.append(name)
            if task in rec.idx:
                duplicate_rows += 1
                if rec.idx[task] != label or task in rec.conflicts:
                    # Two different labels for one image: neither is trustworthy.
                    rec.conflicts.add(task)
                    rec.idx[task] = None
            else:
                rec.idx[task] = label
    counts = {
        "rows_per_file": rows_per_file,
        "listed_paths": len(records),
        "duplicate_rows": duplicate_rows,
        "label_conflicts": {t: sum(t in r.conflicts for r in records.values()) for t in TASKS},
        "split_conflicts": sum(r.split == CONFLICT for r in records.values()),
    }
    return records, classes, counts


def _dir(path: str) -> str | None:
    return posixpath.dirname(path) or None


def _missing_table(missing: list[Listed]) -> pa.Table:
    return pa.table({
        "path": pa.array([r.path for r in missing], pa.string()),
        "image_id": pa.array([posixpath.splitext(r.path)[0] for r in missing], pa.string()),
        "style_dir": pa.array([_dir(r.path) for r in missing], pa.string()),
        "split": pa.array([r.split for r in missing], pa.string()),
        "files": pa.array([sorted(set(r.files)) for r in missing], pa.list_(pa.string())),
    })


def build_tables(cfg: IngestWikiartConfig) -> tuple[pa.Table, pa.Table, dict[str, Any], dict[str, Any]]:
    """Parse, match against one listing of the tree, probe; returns (manifest, missing, counts, classes)."""
    records, classes, counts = parse_splits(cfg)
    entries = probe.list_images(cfg.images, cfg.storage)
    if not entries:
        raise ValueError(f"ingest wikiart: no image files under {cfg.images!r} (empty or does not exist)")
    on_disk: dict[str, probe.Entry] = {}
    unlisted: list[probe.Entry] = []
    for rel, info in entries:
        k = _key(rel)
        if k in on_disk:
            unlisted.append((rel, info))  # a second name normalising to the same path
        else:
            on_disk[k] = (rel, info)
    present: list[tuple[Listed, probe.Entry]] = []
    missing: list[Listed] = []
    for k in sorted(records):
        if k in on_disk:
            present.append((records[k], on_disk.pop(k)))
        else:
            missing.append(records[k])
    unlisted = sorted(unlisted + list(on_disk.values()), key=lambda e: e[0])
    rows: list[tuple[Listed | None, probe.Entry]] = [*present, *((None, e) for e in unlisted)]

    keep = [e for _, e in rows]
    ids = probe.image_ids([rel for rel, _ in keep])
    loc = storage.filesystem_for(cfg.images, cfg.storage)
    dims = None
    if cfg.probe_dimensions:
        dims = probe.probe_dimensions([storage.uri_of(loc, info.path) for _, info in keep], cfg.storage)
    cols = probe.core_columns(keep, loc, ids, dims, source="wikiart")
    cols["style_dir"] = pa.array([_dir(rel) for rel, _ in keep], pa.string())
    for task in TASKS:
        idx = [rec.idx.get(task) if rec else None for rec, _ in rows]
        cols[task] = pa.array([classes[task][i] if i is not None else None for i in idx], pa.string())
        cols[f"{task}_idx"] = pa.array(idx, pa.int32())
    cols["split"] = pa.array([rec.split if rec else None for rec, _ in rows], pa.string())
    table = pa.table(cols)

    labelled = {t: len(table) - table[t].null_count for t in TASKS}
    counts.update({
        "images_found": len(entries),
        "present_listed": len(present),
        "missing": len(missing),
        "unlisted_images": len(unlisted),
        "manifest_rows": len(table),
        "split_conflicts_in_manifest": sum(rec is not None and rec.split == CONFLICT for rec, _ in rows),
        # The folder a listed image sits in should name its style; count where it does not.
        "style_dir_mismatch": sum(1 for rec, (rel, _) in rows if rec and rec.idx.get("style") is not None
                                  and classes["style"][rec.idx["style"]] != _dir(rel)),
        **{f"labelled_{t}": n for t, n in labelled.items()},
        **probe.probe_counts(dims),
    })
    if counts["listed_paths"] != counts["present_listed"] + counts["missing"]:
        raise RuntimeError(f"ingest wikiart: counts do not reconcile: listed_paths={counts['listed_paths']} "
                           f"!= present_listed={counts['present_listed']} + missing={counts['missing']}")
    if counts["manifest_rows"] != counts["present_listed"] + counts["unlisted_images"]:
        raise RuntimeError(f"ingest wikiart: counts do not reconcile: manifest_rows={counts['manifest_rows']} "
                           f"!= present_listed + unlisted_images")
    return table, _missing_table(missing), counts, {t: len(c) for t, c in classes.items()}


def run(cfg: IngestWikiartConfig) -> dict[str, Any]:
    """Ingest ArtGAN split files + WikiArt images into manifest shards under ``cfg.out``."""
    for key, flag in (("splits", "--splits DIR"), ("images", "--images URI"), ("out", "--out URI")):
        if not getattr(cfg, key):
            raise ValueError(f"ingest wikiart: {key} is required ({flag})")
    job = JobRun("ingest_wikiart", cfg, cfg.out)
    table, missing, counts, n_classes = build_tables(cfg)
    job.lap("parse_list_probe")
    shards = manifest.write(table, cfg.out, cfg.shard_rows, cfg.storage)
    storage.write_parquet(storage.join(cfg.out, "missing.parquet"), missing, cfg.storage)
    job.lap("write")
    log.info("ingest wikiart: %d rows (%d listed present, %d unlisted), %d listed but missing -> %s",
             counts["manifest_rows"], counts["present_listed"], counts["unlisted_images"],
             counts["missing"], cfg.out)
    return job.finish(counts, shards=len(shards), classes=n_classes, probed=cfg.probe_dimensions)
