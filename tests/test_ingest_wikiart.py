"""WikiArt ingest: exact parsing of the published ArtGAN split formats, merging, missing/unlisted
images, probing, and a run over the real split files + image subset when ../shared/data exists."""
from __future__ import annotations

import csv
import json
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from artextract import manifest
from artextract.cli import main
from artextract.config import IngestWikiartConfig
from artextract.ingest import wikiart

GREGOIRE = "Cubism/grégoire_x.jpg"  # NFC in the split file; stored NFD on disk below

# (relpath, size) of the images that exist; the PNG is in no split file.
IMAGES = {
    "Baroque/rembrandt_a.jpg": (40, 30),
    "Baroque/rembrandt_b.jpg": (50, 20),
    "Cubism/pablo-picasso_c,d.jpg": (33, 44),
    "Ukiyo_e/hokusai_wave's.jpg": (64, 32),
    GREGOIRE: (21, 37),
    "Baroque/unlisted_e.png": (16, 16),
}


def _crlf(rows: list[str]) -> bytes:
    return ("\r\n".join(rows) + "\r\n").encode("utf-8")


def _artist(rows: list[str], header: str = "(Path to image),, (Groundtruth class) ") -> bytes:
    return ("\n".join([header, ""] + rows) + "\n").encode("utf-8")


def write_splits(d: Path, **override: bytes) -> Path:
    """A tiny split-file set in the exact published formats."""
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "style_class.txt": b"0 Baroque\n1 Cubism\n2 Ukiyo_e\n",
        "genre_class": b"0 landscape\n1 portrait\n",
        "artist_class": b"0 Rembrandt\n1 Pablo_Picasso\n",
        "style_train.csv": _crlf(["Baroque/rembrandt_a.jpg,0", "Baroque/rembrandt_b.jpg,0",
                                  "Cubism/pablo-picasso_c,d.jpg,1", "Baroque/missing_1.jpg,0",
                                  "Baroque/rembrandt_a.jpg,0"]),
        "style_val.csv": _crlf(["Ukiyo_e/hokusai_wave's.jpg,2", f"{GREGOIRE},1"]),
        "genre_train.csv": _crlf(["Baroque/rembrandt_a.jpg,1", "Baroque/missing_1.jpg,0"]),
        "genre_val.csv": _crlf(["Baroque/rembrandt_b.jpg,1", f"{GREGOIRE},0",
                                "Ukiyo_e/hokusai_wave's.jpg,0", "Ukiyo_e/hokusai_wave's.jpg,1"]),
        "artist_train": _artist(["Baroque/rembrandt_a.jpg,,0"]),
        "artist_val": _artist(["Cubism/pablo-picasso_c,d.jpg,,1", "Cubism/missing_2.jpg,,1"],
                              header="(Path to image),, (Groundtruth class)"),
    }
    files.update(override)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def write_images(d: Path) -> Path:
    """The image tree, plus files the ingest must ignore (hidden, non-image)."""
    for i, (rel, size) in enumerate(IMAGES.items()):
        name = unicodedata.normalize("NFD", rel) if rel == GREGOIRE else rel
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * i, 100, 200)).save(path)
    (d / ".DS_Store").write_bytes(b"\0\0")
    (d / "Baroque" / "notes.txt").write_text("not an image")
    return d


@pytest.fixture()
def synthetic(tmp_path: Path) -> IngestWikiartConfig:
    splits = write_splits(tmp_path / "splits")
    images = write_images(tmp_path / "images")
    return IngestWikiartConfig(splits=str(splits), images=str(images), out=str(tmp_path / "out"))


def test_parse_split_formats() -> None:
    crlf = wikiart.parse_split("A/x.jpg,3\r\nA/y,z.jpg,12\r\n", "style_train.csv", artist=False)
    lf = wikiart.parse_split("A/x.jpg,3\nA/y,z.jpg,12\n\n", "style_train.csv", artist=False)
    assert crlf == lf == [(1, "A/x.jpg", 3), (2, "A/y,z.jpg", 12)]
    art = wikiart.parse_split("(Path to image),, (Groundtruth class)\n\nA/x.jpg,,22\n", "artist_val", artist=True)
    assert art == [(3, "A/x.jpg", 22)]
    quoted = wikiart.parse_split('"A/say ""hi"", x.jpg",1\r\n', "genre_val.csv", artist=False)
    assert quoted == [(1, 'A/say "hi", x.jpg', 1)]
    assert wikiart.parse_classes("0 Abstract_Expressionism\r\n1 Action_painting\r\n", "c") == {
        0: "Abstract_Expressionism", 1: "Action_painting"}


@pytest.mark.parametrize("text, artist, where", [
    ("A/x.jpg,1\r\nA/y.jpg\r\n", False, "style_train.csv:2"),
    ("A/x.jpg,1\r\n\r\nA/y.jpg,1\r\n", False, "style_train.csv:2"),
    ("A/x.jpg,one\r\n", False, "style_train.csv:1"),
    ("A/x.jpg,,1\r\n", False, "style_train.csv:1"),
    ("(Path to image),, (Groundtruth class)\n\nA/x.jpg,1\n", True, "style_train.csv:3"),
    ("../etc/passwd,1\n", False, "style_train.csv:1"),
])
def test_parse_split_rejects_malformed_rows(text: str, artist: bool, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        wikiart.parse_split(text, "style_train.csv", artist=artist)


def test_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    splits = write_splits(tmp_path / "splits", **{"genre_val.csv": _crlf(["A/x.jpg,1", "A/y.jpg;1"])})
    cfg = IngestWikiartConfig(splits=str(splits), images=str(write_images(tmp_path / "img")),
                              out=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"genre_val\.csv:2"):
        wikiart.run(cfg)
    bad_label = write_splits(tmp_path / "s2", **{"style_val.csv": _crlf(["A/x.jpg,7"])})
    with pytest.raises(ValueError, match=r"style_val\.csv:1: label 7 .*style_class\.txt"):
        wikiart.run(cfg.model_copy(update={"splits": str(bad_label)}))


def test_synthetic_ingest(synthetic: IngestWikiartConfig) -> None:
    summary = wikiart.run(synthetic)
    c = summary["counts"]
    assert c["rows_per_file"] == {"style_train.csv": 5, "style_val.csv": 2, "genre_train.csv": 2,
                                  "genre_val.csv": 4, "artist_train": 1, "artist_val": 2}
    assert (c["listed_paths"], c["present_listed"], c["missing"]) == (7, 5, 2)
    assert (c["unlisted_images"], c["manifest_rows"], c["images_found"]) == (1, 6, 6)
    assert c["split_conflicts"] == 2 and c["split_conflicts_in_manifest"] == 2
    assert c["duplicate_rows"] == 2 and c["label_conflicts"] == {"style": 0, "genre": 1, "artist": 0}
    assert (c["labelled_style"], c["labelled_genre"], c["labelled_artist"]) == (5, 3, 2)
    assert (c["probed_ok"], c["probe_failed"]) == (6, 0)

    rows = {r["relpath"]: r for r in manifest.read(synthetic.out).to_pylist()}
    assert len(rows) == 6
    a = rows["Baroque/rembrandt_a.jpg"]
    assert a["image_id"] == "Baroque/rembrandt_a" and a["source"] == "wikiart"
    assert (a["style"], a["genre"], a["artist"], a["split"]) == ("Baroque", "portrait", "Rembrandt", "train")
    assert (a["style_idx"], a["genre_idx"], a["artist_idx"]) == (0, 1, 0)
    assert a["style_dir"] == "Baroque" and a["size"] > 0 and a["mtime"] is not None
    b = rows["Baroque/rembrandt_b.jpg"]
    assert (b["style"], b["genre"], b["artist"], b["split"]) == ("Baroque", "portrait", None, "conflict")
    cd = rows["Cubism/pablo-picasso_c,d.jpg"]
    assert (cd["artist"], cd["artist_idx"], cd["genre"], cd["split"]) == ("Pablo_Picasso", 1, None, "conflict")
    wave = rows["Ukiyo_e/hokusai_wave's.jpg"]
    assert (wave["style"], wave["genre"], wave["genre_idx"], wave["split"]) == ("Ukiyo_e", None, None, "val")
    # The NFD name on disk matches the NFC path in the split files; the uri is the real file.
    greg = rows[unicodedata.normalize("NFD", GREGOIRE)]
    assert (greg["style"], greg["genre"], greg["split"]) == ("Cubism", "landscape", "val")
    assert Path(greg["uri"]).is_file()
    unl = rows["Baroque/unlisted_e.png"]
    assert unl["style"] is unl["genre"] is unl["artist"] is unl["split"] is unl["style_idx"] is None
    assert unl["image_id"] == "Baroque/unlisted_e" and unl["style_dir"] == "Baroque"
    for rel, r in rows.items():
        assert (r["width"], r["height"]) == IMAGES[unicodedata.normalize("NFC", rel)]
        assert Path(r["uri"]).is_file()

    missing = {r["path"]: r for r in pq.read_table(Path(synthetic.out) / "missing.parquet").to_pylist()}
    assert missing == {
        "Baroque/missing_1.jpg": {"path": "Baroque/missing_1.jpg", "image_id": "Baroque/missing_1",
                                  "style_dir": "Baroque", "split": "train",
                                  "files": ["genre_train.csv", "style_train.csv"]},
        "Cubism/missing_2.jpg": {"path": "Cubism/missing_2.jpg", "image_id": "Cubism/missing_2",
                                 "style_dir": "Cubism", "split": "val", "files": ["artist_val"]},
    }
    on_disk = json.loads((Path(synthetic.out) / "summary.json").read_text())
    assert on_disk["counts"] == c and on_disk["job"] == "ingest_wikiart"


def test_no_probe_and_empty_tree(synthetic: IngestWikiartConfig, tmp_path: Path) -> None:
    summary = wikiart.run(synthetic.model_copy(update={"probe_dimensions": False}))
    table = manifest.read(synthetic.out)
    assert table["width"].null_count == table.num_rows == summary["counts"]["manifest_rows"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        wikiart.run(synthetic.model_copy(update={"images": str(empty)}))


def test_cli(synthetic: IngestWikiartConfig) -> None:
    rc = main(["ingest", "wikiart", "--splits", synthetic.splits, "--images", synthetic.images,
               "--out", synthetic.out, "shard_rows=4"])
    assert rc == 0
    out = Path(synthetic.out)
    assert (out / "summary.json").is_file() and (out / "config.resolved.yaml").is_file()
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    # A setting the job cannot run without is a config error (exit 2), named before anything runs.
    assert main(["ingest", "wikiart", "--splits", synthetic.splits, "--out", synthetic.out]) == 2


def test_real_artgan_splits(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "wikiart"
    cfg = IngestWikiartConfig(splits=str(root / "artgan_splits"), images=str(root / "images"),
                              out=str(tmp_path / "out"))
    c = wikiart.run(cfg)["counts"]
    assert c["manifest_rows"] == c["present_listed"] == 4357 and c["unlisted_images"] == 0
    assert c["listed_paths"] == 81446 and c["missing"] == 81446 - 4357
    # Published quirks: one genre_val path listed twice with different labels; 566 paths are
    # train in one task and val in another (29 of them among the images here).
    assert c["duplicate_rows"] == 1 and c["label_conflicts"] == {"style": 0, "genre": 1, "artist": 0}
    assert c["split_conflicts"] == 566 and c["split_conflicts_in_manifest"] == 29
    assert c["probed_ok"] == 4357

    rows = manifest.read(cfg.out).to_pylist()
    labels = {r["path"]: r for r in csv.DictReader((root / "labels.csv").open(encoding="utf-8"))}
    assert {r["relpath"] for r in rows} == set(labels)
    assert all(r["style"] for r in rows)
    for task in ("style", "genre", "artist"):
        got = Counter(r[task] for r in rows if r[task])
        want = Counter(r[task] for r in labels.values() if r[task])
        assert got == want, task
    assert len(Counter(r["style"] for r in rows)) == 11
    assert sum(r["genre"] == "portrait" for r in rows) == 935
    assert sum(r["artist"] is not None for r in rows) == 683
    assert all(r["width"] == r["height"] == 224 for r in rows)
    assert pq.read_metadata(Path(cfg.out) / "missing.parquet").num_rows == 81446 - 4357
