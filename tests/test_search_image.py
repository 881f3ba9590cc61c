"""``artextract search`` with one Ray actor per shard and by image (``--image``): the actor fan-out
equals the in-process reader exactly; an image's faces find themselves in an index built from
preprocess-made crops; no face falls back to the whole painting; bad inputs and models fail clearly."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from artextract import samples

from artextract.core import storage
from artextract.cli import main
from artextract.config import ConfigError, FacesConfig, SearchConfig
from artextract.index import IndexReader, build_index

D = 16
MODEL = "untrained:resnet18"


def clustered(n: int = 240, clusters: int = 8, seed: int = 0) -> pa.Table:
    """n unit vectors around gaussian centres (keys img{i}/-1): near ties make merge order matter."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, D)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return pa.table({"image_id": [f"img{i:04d}" for i in range(n)], "face_idx": pa.array([-1] * n, pa.int16()),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), D),
                     "model_version": ["synthetic@1"] * n})


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("clustered")
    table = clustered()
    out = {"table": table}
    for name, factory in (("flat", "Flat"), ("ivf", "IVF8,Flat")):
        out[name] = str(root / name)
        build_index(table, out[name], shards=4, factory=factory, nprobe=2, recall_queries=20)
    return out


def _queries(table: pa.Table, n: int = 12) -> np.ndarray:
    # Fewer than faiss' BLAS threshold (20): per-query kernels, independent of the thread count.
    vec = table["vector"].combine_chunks().flatten().to_numpy().reshape(-1, D)
    rng = np.random.default_rng(5)
    return (vec[:n] + 0.05 * rng.normal(size=(n, D))).astype(np.float32)


@pytest.mark.parametrize("name,nprobe", [("flat", None), ("ivf", 3)])
def test_ray_actors_equal_in_process_reader(ray_session, indexes, name, nprobe):
    from artextract.index.ray_search import RayIndexReader

    q = _queries(indexes["table"])
    local = IndexReader(indexes[name])
    with RayIndexReader(indexes[name]) as remote:
        assert len(remote.actors) == 4 and remote.ntotal == local.ntotal == 240
        assert (remote.version, remote.metric, remote.nprobe) == (local.version, local.metric, local.nprobe)
        s1, i1 = local.search_ids(q, 10, nprobe)
        s2, i2 = remote.search_ids(q, 10, nprobe)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
        assert remote.search(q, 5, nprobe)[1] == local.search(q, 5, nprobe)[1]
        keys = [("img0003", -1), ("img0100", -1), ("img0200", -1)]
        np.testing.assert_array_equal(remote.reconstruct(keys), local.reconstruct(keys))
        assert sum(n.startswith("artextract-search-") for n in ray_session.util.list_named_actors()) == 4
    deadline = time.time() + 10
    while time.time() < deadline and any(
            n.startswith("artextract-search-") for n in ray_session.util.list_named_actors()):
        time.sleep(0.2)
    assert not [n for n in ray_session.util.list_named_actors() if n.startswith("artextract-search-")]


def test_ray_reader_reports_a_bad_shard_and_frees_its_actors(ray_session, indexes, tmp_path):
    import shutil

    from artextract.index.ray_search import RayIndexReader

    idx = tmp_path / "idx"
    shutil.copytree(indexes["flat"], idx)
    shard = sorted(idx.glob("versions/*/shards/part-00002.faiss"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="failed to load: .*ChecksumError: checksum mismatch"):
        RayIndexReader(str(idx))
    deadline = time.time() + 10
    while time.time() < deadline and any(
            n.startswith("artextract-search-") for n in ray_session.util.list_named_actors()):
        time.sleep(0.2)
    assert not [n for n in ray_session.util.list_named_actors() if n.startswith("artextract-search-")]


def test_actor_resources_fit_small_clusters():
    from artextract.index.ray_search import actor_resources

    assert actor_resources(4, {"CPU": 2.0}) == {"num_cpus": 0.25}
    assert actor_resources(64, {"CPU": 2.0})["num_cpus"] * 64 <= 2.0
    assert actor_resources(2, {"CPU": 16.0, "GPU": 1.0}) == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert actor_resources(4, {"CPU": 32.0, "GPU": 8.0})["num_gpus"] == 1.0


def test_parallel_auto_picks_ray_for_large_indexes(ray_session, indexes, tmp_path):
    q = tmp_path / "q.npy"
    np.save(q, _queries(indexes["table"], 3))
    docs = {}
    for name, extra in (("default", []), ("auto", ["ray_min_vectors=100"]), ("local", ["parallel=local",
                                                                                     "ray_min_vectors=1"])):
        out = tmp_path / name
        assert main(["search", "--index", indexes["ivf"], "--vector", str(q), "--out", str(out), "-k", "4",
                     *extra]) == 0
        docs[name] = json.loads((out / "results.json").read_text())
        assert json.loads((out / "summary.json").read_text())["counts"]["fan_out"] == docs[name]["fan_out"]
    assert [docs[n]["fan_out"] for n in ("default", "auto", "local")] == ["local", "ray_actors", "local"]
    assert docs["auto"]["results"] == docs["default"]["results"]


# ------------------------------------------------------------------------------------- by image

FACE_IMAGES = ("double_portrait", "astronaut", "landscape_1")


@pytest.fixture(scope="module")
def face_index(tmp_path_factory) -> dict[str, str]:
    """Images -> preprocess stages (ReadDecodeStage + FaceStage, i.e. the crops preprocess makes) ->
    EmbedStage vectors of every face and whole painting -> embed run record -> ``index build``."""
    from conftest import faces_and_embeddings

    root = tmp_path_factory.mktemp("faces")
    uris = {}
    for name in FACE_IMAGES:
        fname, make, _ = samples.CASES[name]
        (root / fname).write_bytes(make())
        uris[name] = str(root / fname)
    rows = faces_and_embeddings(uris, root, MODEL, image_size=160, dim=256)
    pre, emb = root / "pre", root / "emb"
    idx = str(root / "idx")
    assert main(["index", "build", "--embeddings", str(emb), "--out", idx, "--shards", "2"]) == 0
    n_faces = {i: n for i, n in zip(rows["image_id"].to_pylist(), rows["n_faces"].to_pylist())}
    return {"idx": idx, "pre": str(pre), "root": str(root), "n_faces": n_faces, **uris}


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_image_query_finds_its_own_faces(face_index, tmp_path):
    out = tmp_path / "o"
    assert face_index["n_faces"]["double_portrait"] == 2
    assert main(["search", "--index", face_index["idx"], "--image", face_index["double_portrait"],
                 "--out", str(out), "-k", "3", "--faces", face_index["pre"], "--pose", "rerank"]) == 0
    doc = _results(out)
    assert [r["query"]["face_idx"] for r in doc["results"]] == [0, 1]
    for r in doc["results"]:
        q, top = r["query"], r["hits"][0]
        assert (top["image_id"], top["face_idx"]) == ("double_portrait", q["face_idx"])
        assert top["score"] == pytest.approx(1.0, abs=1e-3) and top["pose_distance_deg"] == pytest.approx(0, abs=0.1)
        assert q["source"] == "image" and q["image"] == face_index["double_portrait"] and "fallback" not in q
        assert len(q["box"]) == 4 and q["box"] == pytest.approx(top["box"], abs=0.05)
        assert len(q["pose"]) == 3 and all(isinstance(v, float) for v in q["pose"])
        assert q["model"] == MODEL and q["model_version"] == f"{MODEL}@seed0/d256"
        assert q["model_from"].startswith("embed run") and "jpeg" not in q
    assert (out / "grid.png").stat().st_size > 0 and doc["fan_out"] == "local"


def test_image_query_without_face_uses_whole_painting(face_index, tmp_path):
    out = tmp_path / "o"
    assert main(["search", "--index", face_index["idx"], "--image", face_index["landscape_1"],
                 "--out", str(out), "-k", "2", f"model={MODEL}"]) == 0
    (r,) = _results(out)["results"]
    assert r["query"]["face_idx"] == -1 and r["query"]["box"] is None and r["query"]["pose"] is None
    assert r["query"]["fallback"] == "no face detected: whole-painting embedding"
    assert (r["hits"][0]["image_id"], r["hits"][0]["face_idx"]) == ("landscape_1", -1)
    assert r["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_image_query_errors(face_index, indexes, tmp_path, capsys):
    base = ["search", "--index", face_index["idx"], "--out", str(tmp_path / "o")]
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"not an image at all\n" * 10)
    assert main(base + ["--image", str(notes)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not_an_image" in err and str(notes) in err
    assert main(base + ["--image", str(tmp_path / "missing.jpg")]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(base + ["--image", face_index["landscape_1"], "--model", "untrained:resnet34"]) == 1
    err = capsys.readouterr().err
    assert "not comparable" in err and "untrained:resnet34@seed0/d256" in err
    assert main(base + ["--image", face_index["landscape_1"], "--id", "x"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    # An index whose build left no model record: the error names model=.
    assert main(["search", "--index", indexes["flat"], "--out", str(tmp_path / "o2"),
                 "--image", face_index["landscape_1"]]) == 2
    assert "model=" in capsys.readouterr().err


def test_model_resolution_prefers_index_manifest_embed():
    from artextract.search.query import check_model_version, resolve_embed_spec

    reader = SimpleNamespace(manifest={"dim": 64, "model_versions": [],
                                       "embed": {"model": "s3://m/model.pt", "image_size": 112, "dim": 64,
                                                 "seed": 3}}, out_uri="/nonexistent", version=1)
    spec = resolve_embed_spec(reader, SearchConfig(index="/x", image="a.jpg"))
    assert (spec.model, spec.image_size, spec.dim, spec.seed, spec.origin) == (
        "s3://m/model.pt", 112, 64, 3, "index.json embed")
    spec = resolve_embed_spec(reader, SearchConfig(index="/x", image="a.jpg", model=MODEL))
    assert (spec.model, spec.image_size, spec.origin) == (MODEL, 112, "model=")
    check_model_version("v1", {"model_versions": []}, spec)  # no list recorded: nothing to check
    with pytest.raises(ValueError, match="not comparable"):
        check_model_version("v1", {"model_versions": ["v2"]}, spec)
    with pytest.raises(ConfigError, match="model="):
        resolve_embed_spec(SimpleNamespace(manifest={"dim": 8}, out_uri="/nonexistent-index", version=1),
                           SearchConfig(index="/x", image="a.jpg"))


def test_query_faces_are_the_crops_preprocess_stored(face_index):
    """Image queries and FaceStage share face_record: same crop bytes, box and pose per face."""
    from artextract.search.query import detect_faces, read_image

    cfg = SearchConfig(index=face_index["idx"], image=face_index["double_portrait"],
                       detect=FacesConfig(device="cpu"))
    query = detect_faces(read_image(cfg.image, cfg), cfg)
    stored = [f for f in storage.read_parquet(str(Path(face_index["pre"]) / "faces")).to_pylist()
              if f["image_id"] == "double_portrait"]
    assert len(query) == len(stored) == 2
    for a, b in zip(sorted(stored, key=lambda f: f["face_idx"]), query):
        assert a["crop_jpeg"] == b["crop_jpeg"] and a["face_idx"] == b["face_idx"]
        assert a["box"] == pytest.approx(b["box"]) and a["yaw"] == pytest.approx(b["yaw"])


def test_copies_rerank_puts_verified_reproductions_first(face_index, tmp_path):
    """copies=true: the astronaut's stored face verifies against itself and against the double
    portrait's two copies of the same head (one mirrored); the landscape never verifies."""
    out = tmp_path / "o"
    assert main(["search", "--index", face_index["idx"], "--id", "astronaut", "--out", str(out), "-k", "5",
                 "--faces", face_index["pre"], "copies=true", "copies_shortlist=20"]) == 0
    doc = _results(out)
    (r,) = [r for r in doc["results"] if r["query"]["face_idx"] == 0]
    hits = r["hits"]
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    verified = {(h["image_id"], h["face_idx"]) for h in hits if h["verified"]}
    assert {("astronaut", 0), ("double_portrait", 0), ("double_portrait", 1)} <= verified
    assert not any(h["verified"] for h in hits if h["image_id"] == "landscape_1")
    flags = [h["verified"] for h in hits]
    assert flags == sorted(flags, reverse=True)  # every verified hit ranks above every unverified one
    assert all(isinstance(h["inliers"], int) for h in hits)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["verified_hits"] >= 3
    # one re-ranking at a time, and verification needs the crops
    with pytest.raises(ConfigError, match="copies=true"):
        from artextract.jobs.search import run_search
        run_search(SearchConfig(index=face_index["idx"], id="astronaut", out=str(tmp_path / "x"), copies=True))
