"""core/layout.py: one owner per on-disk format, and the lineage an index records at build time."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from artextract.config import EmbedConfig, PreprocessConfig, save_resolved
from artextract.core import layout, storage
from artextract.index import build_index


def _write(path, table: pa.Table) -> None:
    storage.write_parquet(str(path), table)


def test_formats_list_read_and_tell_a_manifest_from_a_preprocess_output(tmp_path):
    man, pre = tmp_path / "manifest", tmp_path / "pre"
    _write(man / "part-00000.parquet", pa.table({"image_id": ["b", "a"], "uri": ["/x/b.jpg", "/x/a.jpg"],
                                                 "style": ["Baroque", "Cubism"]}))
    _write(man / "notes.parquet", pa.table({"image_id": ["zzz"]}))  # not a shard: never listed
    _write(pre / "images" / "part-00000.parquet", pa.table({"image_id": ["a"], "status": ["ok"]}))
    _write(pre / "faces" / "part-00000.parquet", pa.table({"image_id": ["a", "a"], "face_idx": [0, 1]}))

    assert layout.labelled_rows(str(man))[0] == "manifest"
    kind, rows = layout.labelled_rows(str(pre))
    assert kind == "preprocess" and rows.uri == str(pre / "images")
    assert [u.rsplit("/", 1)[1] for u in layout.Manifest(str(man)).files()] == ["part-00000.parquet"]
    got = layout.Manifest(str(man)).rows(["a", "nope"], ["style", "missing"], optional=True)
    assert got.column_names == ["image_id", "style"] and got.to_pylist() == [{"image_id": "a", "style": "Cubism"}]
    with pytest.raises(ValueError, match="missing"):
        layout.Manifest(str(man)).rows(["a"], ["missing"])
    assert len(layout.PreprocessOutput(str(pre)).faces.read()) == 2
    # one parquet file is a table too
    assert layout.Parts(str(man / "notes.parquet")).rows(["zzz"], []).num_rows == 1
    with pytest.raises(FileNotFoundError, match=r"no quarantine/ shards .*is it a preprocess output"):
        layout.PreprocessOutput(str(pre)).table("quarantine").require()
    with pytest.raises(ValueError, match="tables"):
        layout.PreprocessOutput(str(pre)).table("vectors")


def _embeddings(path, n: int = 12, d: int = 8) -> None:
    v = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    _write(path / "part-00000.parquet", pa.table({
        "image_id": [f"img{i}" for i in range(n)], "face_idx": pa.array([0] * n, pa.int16()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), d), "model_version": ["m1"] * n}))


def test_index_records_its_lineage_at_build_time(tmp_path):
    man, pre, emb = tmp_path / "manifest", tmp_path / "pre", tmp_path / "emb"
    _embeddings(emb)
    save_resolved(PreprocessConfig(manifest=str(man), out=str(pre)), str(pre))
    save_resolved(EmbedConfig(input=str(pre), out=str(emb), model="untrained:resnet18", image_size=64, dim=8,
                              seed=3), str(emb))

    lin = layout.lineage(str(emb))
    assert lin == {"embeddings": str(emb), "preprocess": str(pre), "manifest": str(man),
                   "embed": {"model": "untrained:resnet18", "image_size": 64, "dim": 8, "seed": 3, "what": "faces"}}
    build_index(str(emb), str(tmp_path / "idx"), shards=2)
    index_json = json.loads(next((tmp_path / "idx" / "versions").glob("v*/index.json")).read_text())
    assert index_json["lineage"] == lin

    # Nothing recorded (embeddings made elsewhere, or a table): the lineage says so instead of guessing.
    bare = tmp_path / "bare"
    _embeddings(bare)
    assert layout.lineage(str(bare)) == {"embeddings": str(bare), "embed": None, "preprocess": None, "manifest": None}
    assert layout.lineage(None)["embeddings"] is None
