"""Folder ingest: local folders and S3 prefixes (moto over real HTTP) give the same manifest;
dimensions are probed from file headers (ranged reads on S3), with a retry for big headers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from artextract import manifest

from artextract.core import storage
from artextract.cli import main
from artextract.config import IngestFolderConfig
from artextract.ingest import folder, probe
from conftest import upload_dir

# relpath -> (width, height) for every file that should probe; None where it must fail.
EXPECTED = {
    "a/x.jpg": (64, 48),
    "a/x.png": (30, 20),           # same stem as a/x.jpg: both ids keep the extension
    "a/b/deep.gif": (12, 34),
    "a/b/scan.tif": (77, 55),
    "UP.JPG": (40, 41),
    "icc_big.jpg": (300, 200),     # header (ICC profile) larger than the first 64 KiB read
    "broken.jpg": None,
}


def make_tree(d: Path) -> Path:
    """A small tree of images, one broken file, one non-image and hidden entries to skip."""
    for rel, size in EXPECTED.items():
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is None:
            path.write_bytes(b"definitely not an image " * 8)
        elif rel == "icc_big.jpg":
            Image.new("RGB", size, "red").save(path, icc_profile=os.urandom(200_000))
        else:
            Image.new("RGB", size, (10, 120, 230)).save(path)
    (d / "a" / "readme.txt").write_text("hello")
    (d / ".DS_Store").write_bytes(b"\0")
    (d / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(d / ".thumbs" / "t.jpg")
    return d


def _comparable(table) -> list[dict]:
    return table.drop_columns(["uri", "mtime"]).to_pylist()


def test_local_folder(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "imgs")
    cfg = IngestFolderConfig(images=str(tree), out=str(tmp_path / "out"))
    c = folder.run(cfg)["counts"]
    assert c == {"files_listed": 8, "images": 7, "skipped_other_files": 1, "probed_ok": 6,
                 "probe_failed": 1, "id_collisions": 2, "manifest_rows": 7}
    rows = {r["relpath"]: r for r in manifest.read(cfg.out).to_pylist()}
    assert set(rows) == set(EXPECTED)
    assert rows["a/x.jpg"]["image_id"] == "a/x.jpg" and rows["a/x.png"]["image_id"] == "a/x.png"
    assert rows["a/b/deep.gif"]["image_id"] == "a/b/deep" and rows["UP.JPG"]["image_id"] == "UP"
    for rel, r in rows.items():
        assert (r["width"], r["height"]) == (EXPECTED[rel] or (None, None)), rel
        assert r["source"] == "folder" and r["etag"] is None and r["mtime"] is not None
        assert r["uri"] == str(tree / rel) and r["size"] == (tree / rel).stat().st_size


def test_include_all_files_and_no_probe(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "imgs")
    cfg = IngestFolderConfig(images=str(tree), out=str(tmp_path / "out"), include_all_files=True)
    c = folder.run(cfg)["counts"]
    assert (c["images"], c["skipped_other_files"], c["probe_failed"]) == (8, 0, 2)
    assert manifest.read(cfg.out).num_rows == 8
    c = folder.run(cfg.model_copy(update={"probe_dimensions": False, "include_all_files": False}))["counts"]
    assert (c["probed_ok"], c["probe_failed"], c["manifest_rows"]) == (0, 0, 7)
    assert manifest.read(cfg.out)["width"].null_count == 7


def test_s3_matches_local(tmp_path: Path, s3_bucket: str, s3_storage, s3_endpoint: str,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "imgs")
    local = IngestFolderConfig(images=str(tree), out=str(tmp_path / "out_local"))
    folder.run(local)
    upload_dir(tree, s3_bucket, "collection/v1", s3_endpoint)

    reads: list[tuple[str, int]] = []
    real_read_head = storage.read_head

    def spy(uri: str, nbytes: int, cfg=None) -> bytes:
        reads.append((uri, nbytes))
        return real_read_head(uri, nbytes, cfg)

    monkeypatch.setattr(storage, "read_head", spy)
    remote = IngestFolderConfig(images=f"s3://{s3_bucket}/collection/v1", out=f"s3://{s3_bucket}/manifest",
                                storage=s3_storage)
    summary = folder.run(remote)
    assert summary["counts"]["probed_ok"] == 6
    s3_table = manifest.read(remote.out, s3_storage)
    assert _comparable(s3_table) == _comparable(manifest.read(local.out))
    assert all(u.startswith(f"s3://{s3_bucket}/collection/v1/") for u in s3_table["uri"].to_pylist())
    assert s3_table["mtime"].null_count == 0
    # Header probes are ranged reads: 64 KiB per object, 1 MiB only where the header is bigger.
    assert {n for _, n in reads} == {probe.HEAD_BYTES, probe.RETRY_BYTES}
    assert [u for u, n in reads if n == probe.RETRY_BYTES] == [f"s3://{s3_bucket}/collection/v1/icc_big.jpg"]
    assert json.loads(storage.read_bytes(f"{remote.out}/summary.json", s3_storage))["counts"]["images"] == 7


def test_probe_dimensions_never_raises(tmp_path: Path) -> None:
    good = tmp_path / "g.png"
    Image.new("RGB", (5, 9)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    got = probe.probe_dimensions([str(good), str(tmp_path / "empty.jpg"), str(tmp_path / "absent.jpg")])
    assert got == [(5, 9), (None, None), (None, None)]
    assert probe.probe_dimensions([]) == []


def test_image_ids_stay_unique() -> None:
    rels = ["a/x.jpg", "a/x.png", "a/x.jpg.bak", "a/y.jpg", "a/y"]
    ids = probe.image_ids(rels)
    assert len(set(ids)) == len(ids)
    assert ids[3] == "a/y.jpg" and ids[4] == "a/y"


def test_empty_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no files under"):
        folder.run(IngestFolderConfig(images=str(empty), out=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="no files under"):
        folder.run(IngestFolderConfig(images=str(tmp_path / "absent"), out=str(tmp_path / "o")))
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files .*include_all_files"):
        folder.run(IngestFolderConfig(images=str(empty), out=str(tmp_path / "o")))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_tree(tmp_path / "imgs")
    out = tmp_path / "out"
    assert main(["ingest", "folder", "--images", str(tree), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["counts"]["manifest_rows"] == 7
    assert "probe_dimensions: true" in (out / "config.resolved.yaml").read_text()
    assert '"manifest_rows": 7' in capsys.readouterr().out
    assert main(["ingest", "folder", "--images", str(tree), "--out", str(out), "probe_dimensions=maybe"]) == 2
    assert "probe_dimensions" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest", "folder", "--images", str(empty), "--out", str(out)]) == 1
