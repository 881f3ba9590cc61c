"""``artextract index build`` and ``artextract search``: typed configs, run records, joined results,
thumbnail grid, error exit codes, and the same round trip with everything on S3 (moto)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from artextract import manifest as mf
from artextract.core import storage
from artextract.cli import main
from artextract.index import build_index

D = 16
N_IMAGES = 60
REPO = Path(__file__).resolve().parents[1]


def _keys() -> list[tuple[str, int]]:
    """Every image has a whole-image vector (face_idx -1); every third image also has two faces."""
    keys = []
    for i in range(N_IMAGES):
        keys.append((f"img{i:04d}", -1))
        if i % 3 == 0:
            keys += [(f"img{i:04d}", 0), (f"img{i:04d}", 1)]
    return keys


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def make_inputs(root: str, cfg=None) -> dict:
    """Embedding shards, a manifest and a fake preprocess output under ``root`` (local or s3://)."""
    keys = _keys()
    vec = _vectors(len(keys))
    table = pa.table({"image_id": pa.array([k[0] for k in keys], pa.string()),
                      "face_idx": pa.array([k[1] for k in keys], pa.int16()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float32()), D),
                      "model_version": pa.array(["clip-test@1"] * len(keys), pa.string())})
    emb = storage.join(root, "emb")
    half = len(table) // 2
    storage.write_parquet(storage.join(emb, "part-00000.parquet"), table.slice(0, half), cfg)
    storage.write_parquet(storage.join(emb, "part-00001.parquet"), table.slice(half), cfg)
    ids = [f"img{i:04d}" for i in range(N_IMAGES)]
    man = pa.table({"image_id": ids, "uri": [f"s3://art/{i}.jpg" for i in ids],
                    "title": [f"Title {i}" for i in ids], "attribution": [f"Artist {i}" for i in ids],
                    "displaydate": [f"{1500 + n}" for n in range(N_IMAGES)]})
    mf.write(man, storage.join(root, "manifest"), shard_rows=25, cfg=cfg)
    faces = [k for k in keys if k[1] >= 0]
    pre = storage.join(root, "pre")
    storage.write_parquet(storage.join(pre, "faces", "part-00000.parquet"), pa.table({
        "image_id": pa.array([k[0] for k in faces], pa.string()),
        "face_idx": pa.array([k[1] for k in faces], pa.int16()),
        "box": pa.array([[10.0 * k[1], 5.0, 10.0 * k[1] + 40, 45.0] for k in faces], pa.list_(pa.float32(), 4)),
        "crop_jpeg": pa.array([_jpeg((200, 40 * k[1], 40), (32, 32)) for k in faces], pa.binary()),
    }), cfg)
    storage.write_parquet(storage.join(pre, "images", "part-00000.parquet"), pa.table({
        "image_id": pa.array(ids, pa.string()),
        "whole_jpeg": pa.array([_jpeg((n * 4, 100, 200), (48, 36)) for n in range(N_IMAGES)], pa.binary()),
    }), cfg)
    return {"emb": emb, "manifest": storage.join(root, "manifest"), "pre": pre, "keys": keys, "vec": vec,
            "table": table}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("idxcli"))
    data = make_inputs(root)
    data["root"] = root
    data["idx"] = os.path.join(root, "index")
    assert main(["index", "build", "--embeddings", data["emb"], "--out", data["idx"], "--shards", "3",
                 "recall_queries=50"]) == 0
    return data


def _load_results(out: str, cfg=None) -> dict:
    return storage.read_json(storage.join(out, "results.json"), cfg)


def test_build_writes_records(local):
    idx, n = local["idx"], len(local["keys"])
    summary = json.load(open(os.path.join(idx, "summary.json")))
    c = summary["counts"]
    assert summary["job"] == "index_build" and c["vectors"] == n and c["shards"] == 3
    assert sum(c["per_shard"]) == n and len(c["per_shard"]) == 3 and c["dim"] == D
    assert c["factory"] == "IDMap2,Flat" and c["recall_at_10"] == 1.0 and c["version"] == 1
    assert c["model_versions"] == ["clip-test@1"] and "build" in summary["timings_s"]
    vdir = os.path.join(idx, "versions", "v000001")
    index_json = json.load(open(os.path.join(vdir, "index.json")))
    assert index_json["total"] == n and index_json["counts"] == c["per_shard"]
    for d in (idx, vdir):
        resolved = yaml.safe_load(open(os.path.join(d, "config.resolved.yaml")))
        assert resolved["embeddings"] == local["emb"] and resolved["shards"] == 3
        assert resolved["recall_queries"] == 50 and resolved["parallel"] == "local"
    assert json.load(open(os.path.join(vdir, "summary.json")))["counts"] == c


def test_search_vector_finds_planted_neighbour(local, tmp_path):
    target = 17
    q = local["vec"][target] + 0.01 * _vectors(1, seed=5)[0]
    q2 = local["vec"][3]
    np.save(tmp_path / "q.npy", np.stack([q / np.linalg.norm(q), q2]).astype(np.float32))
    out = str(tmp_path / "out")
    assert main(["search", "--index", local["idx"], "--vector", str(tmp_path / "q.npy"), "-k", "5",
                 "--out", out]) == 0
    doc = _load_results(out)
    assert len(doc["results"]) == 2 and doc["version"] == 1 and doc["k"] == 5
    top = doc["results"][0]["hits"][0]
    assert (top["image_id"], top["face_idx"]) == local["keys"][target] and top["rank"] == 1
    assert top["score"] == pytest.approx(1.0, abs=1e-3)
    top2 = doc["results"][1]["hits"][0]
    assert (top2["image_id"], top2["face_idx"]) == local["keys"][3]
    scores = [h["score"] for h in doc["results"][0]["hits"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    assert doc["grid"] is None and "grid skipped" in doc["grid_note"]
    assert "box" not in top and "metadata" not in top
    assert not os.path.exists(os.path.join(out, "grid.png"))
    assert json.load(open(os.path.join(out, "summary.json")))["counts"]["queries"] == 2
    # A single (d,) vector is one query.
    np.save(tmp_path / "one.npy", local["vec"][0])
    assert main(["search", "--index", local["idx"], "--vector", str(tmp_path / "one.npy"), "-k", "3",
                 "--out", str(tmp_path / "o1")]) == 0
    assert len(_load_results(str(tmp_path / "o1"))["results"]) == 1


def test_search_id_joins_metadata_boxes_and_grid(local, tmp_path):
    out = str(tmp_path / "out")
    assert main(["search", "--index", local["idx"], "--id", "img0003", "-k", "4", "--out", out,
                 "--manifest", local["manifest"], "--faces", local["pre"]]) == 0
    doc = _load_results(out)
    # img0003 has a whole-image vector and two faces: one query each, its own vector ranked first.
    assert [(r["query"]["image_id"], r["query"]["face_idx"]) for r in doc["results"]] == [
        ("img0003", -1), ("img0003", 0), ("img0003", 1)]
    for r in doc["results"]:
        top = r["hits"][0]
        assert (top["image_id"], top["face_idx"]) == (r["query"]["image_id"], r["query"]["face_idx"])
        assert top["score"] == pytest.approx(1.0, abs=1e-4) and r["query"]["source"] == "index"
        assert len(r["hits"]) == 4
        for h in r["hits"]:
            assert h["metadata"]["title"] == f"Title {h['image_id']}"
            assert h["metadata"]["attribution"] == f"Artist {h['image_id']}"
            assert h["metadata"]["uri"] == f"s3://art/{h['image_id']}.jpg" and "displaydate" in h["metadata"]
            if h["face_idx"] >= 0:
                assert h["box"] == [10.0 * h["face_idx"], 5.0, 10.0 * h["face_idx"] + 40, 45.0]
            else:
                assert h["box"] is None
    assert doc["grid"] == os.path.join(out, "grid.png") and doc["grid_note"] is None
    with Image.open(os.path.join(out, "grid.png")) as im:
        im.verify()
    with Image.open(os.path.join(out, "grid.png")) as im:
        assert im.format == "PNG" and im.width > 5 * 128 and im.height > 3 * 128
        # The face-crop cells are drawn (reddish), not left blank grey.
        assert im.convert("RGB").getpixel((4 + 128 + 4 + 64, 4 + (128 + 14 + 4) + 64))[0] > 150
    # face_idx narrows the query to one vector; id= as a YAML-typed override works too.
    out2 = str(tmp_path / "out2")
    assert main(["search", "--index", local["idx"], "--out", out2, "id=img0003", "face_idx=1", "k=2"]) == 0
    doc = _load_results(out2)
    assert len(doc["results"]) == 1 and doc["results"][0]["hits"][0]["face_idx"] == 1


def test_id_search_on_ivf_and_embeddings_fallback(local, tmp_path):
    ivf = str(tmp_path / "ivf")
    build_index(local["table"], ivf, shards=2, factory="IVF4,Flat", nprobe=4, recall_queries=20)
    out = str(tmp_path / "o")
    assert main(["search", "--index", ivf, "--id", "img0006", "--out", out, "-k", "3"]) == 0
    for r in _load_results(out)["results"]:
        assert r["hits"][0]["image_id"] == "img0006" and r["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert r["hits"][0]["face_idx"] == r["query"]["face_idx"] and r["query"]["approximate"] is False
    # Vectors read from the embedding shards instead of the index give the same ranking.
    out2 = str(tmp_path / "o2")
    assert main(["search", "--index", ivf, "--id", "img0006", "--out", out2, "-k", "3",
                 f"embeddings={local['emb']}"]) == 0
    a, b = _load_results(out)["results"], _load_results(out2)["results"]
    assert [r["hits"] for r in a] == [r["hits"] for r in b]
    assert b[0]["query"]["source"] == f"embeddings:{local['emb']}"


def test_errors_and_exit_codes(local, tmp_path, capsys):
    assert main(["index", "build", "--embeddings", local["emb"], "--out", str(tmp_path / "x"), "shard=3"]) == 2
    assert "unknown key 'shard'" in capsys.readouterr().err
    assert main(["index", "build", "--embeddings", local["emb"], "--out", str(tmp_path / "x"),
                 "--shards", "0"]) == 2
    assert "'shards'" in capsys.readouterr().err
    assert main(["search", "--index", local["idx"], "--out", str(tmp_path / "o"), "-k", "3", "k_nn=2",
                 "--id", "img0001"]) == 2
    assert "unknown key 'k_nn'" in capsys.readouterr().err
    assert main(["search", "--index", local["idx"], "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of vector= (--vector FILE) or id=" in capsys.readouterr().err
    missing = str(tmp_path / "no-index")
    assert main(["search", "--index", missing, "--id", "img0001", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no published index at" in err and missing in err and "index build" in err
    assert main(["search", "--index", local["idx"], "--id", "nope", "--out", str(tmp_path / "o")]) == 1
    assert "'nope' is not in the index" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((2, D + 1), np.float32))
    assert main(["search", "--index", local["idx"], "--vector", str(tmp_path / "bad.npy"),
                 "--out", str(tmp_path / "o")]) == 1
    assert f"dim {D + 1}" in capsys.readouterr().err
    assert main(["index", "build", "--embeddings", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 1
    assert "no parquet" in capsys.readouterr().err


def test_jobs_entry_point_publishes_next_version(local, tmp_path):
    spec = importlib.util.spec_from_file_location("build_index_job", REPO / "jobs" / "build_index.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    idx = str(tmp_path / "idx")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"embeddings: {local['emb']}\nout: {idx}\nshards: 2\nkeep: 1\nrecall_queries: 10\n")
    assert job.main(["--config", str(cfg)]) == 0
    assert job.main(["--config", str(cfg), "--factory", "IVF4,Flat", "nprobe=4"]) == 0
    summary = json.load(open(os.path.join(idx, "summary.json")))
    assert summary["counts"]["version"] == 2 and summary["counts"]["factory"] == "IVF4,Flat"
    assert sorted(os.listdir(os.path.join(idx, "versions"))) == ["v000002"]  # keep=1 pruned v1


def test_s3_build_and_search(s3_bucket, s3_storage, s3_endpoint, tmp_path):
    root = f"s3://{s3_bucket}/run"
    data = make_inputs(root, s3_storage)
    idx = f"{root}/index"
    assert main(["index", "build", "--embeddings", data["emb"], "--out", idx, "--shards", "2",
                 "--s3-endpoint", s3_endpoint, "recall_queries=20", "storage.s3_region=us-east-1"]) == 0
    summary = storage.read_json(f"{idx}/summary.json", s3_storage)
    assert summary["counts"]["vectors"] == len(data["keys"]) and summary["counts"]["version"] == 1
    assert storage.exists(f"{idx}/versions/v000001/config.resolved.yaml", s3_storage)
    assert storage.exists(f"{idx}/versions/v000001/index.json", s3_storage)
    np.save(tmp_path / "q.npy", data["vec"][9])
    storage.write_bytes(f"{root}/q.npy", (tmp_path / "q.npy").read_bytes(), s3_storage)
    out = f"{root}/search"
    assert main(["search", "--index", idx, "--vector", f"{root}/q.npy", "-k", "3", "--out", out,
                 "--manifest", data["manifest"], "--faces", data["pre"], "--s3-endpoint", s3_endpoint,
                 "storage.s3_region=us-east-1"]) == 0
    doc = _load_results(out, s3_storage)
    top = doc["results"][0]["hits"][0]
    assert (top["image_id"], top["face_idx"]) == data["keys"][9] and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["metadata"]["title"] == f"Title {top['image_id']}"
    with Image.open(io.BytesIO(storage.read_bytes(f"{out}/grid.png", s3_storage))) as im:
        assert im.format == "PNG"
    # The id query reconstructs from S3-loaded shards too.
    assert main(["search", "--index", idx, "--id", "img0009", "-k", "2", "--out", f"{root}/s2",
                 "--s3-endpoint", s3_endpoint, "storage.s3_region=us-east-1"]) == 0
    assert _load_results(f"{root}/s2", s3_storage)["results"][0]["hits"][0]["image_id"] == "img0009"


def test_build_parallel_ray_matches_local(local, tmp_path, ray_session):
    idx = str(tmp_path / "ray")
    assert main(["index", "build", "--embeddings", local["emb"], "--out", idx, "--shards", "3",
                 "--parallel", "ray", "recall_queries=50"]) == 0
    ray_json = json.load(open(os.path.join(idx, "versions", "v000001", "index.json")))
    local_json = json.load(open(os.path.join(local["idx"], "versions", "v000001", "index.json")))
    assert [e["sha256"] for e in ray_json["shards"]] == [e["sha256"] for e in local_json["shards"]]
    assert yaml.safe_load(open(os.path.join(idx, "config.resolved.yaml")))["parallel"] == "ray"
