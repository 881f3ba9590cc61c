"""Embedding stage and pipeline: tiny untrained resnet18 at 64 px, the built-in demo collection."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from artextract.cli import main
from artextract.stages.embed import EmbedStage, load_model, model_version_of, save_checkpoint

SPEC = "untrained:resnet18"


def _jpeg(seed: int, size: int = 80) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    return buf.getvalue()


def _batch(n: int = 5) -> dict:
    return {"image_id": np.array([f"img{i}" for i in range(n)], object),
            "face_idx": np.array([0, 1, -1, 0, 2][:n]),
            "jpeg": np.array([_jpeg(i) for i in range(n)], object),
            "yaw": np.array([1.5, None, None, 2.0, 3.0][:n], object)}


def _vectors(table: pa.Table) -> np.ndarray:
    col = table["vector"].combine_chunks()
    return col.values.to_numpy().reshape(len(table), col.type.list_size)


@pytest.fixture(scope="module")
def stage() -> EmbedStage:
    return EmbedStage(SPEC, image_size=64, device="cpu", batch_size=2, dim=32)


def test_stage_shapes_norm_determinism(stage):
    out = stage(_batch())
    assert out.column_names == ["image_id", "face_idx", "vector", "model_version", "yaw", "pitch", "roll"]
    assert out.schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert out.schema.field("face_idx").type == pa.int16()
    v = _vectors(out)
    assert v.shape == (5, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(r, 5)) for r in v}) == 5  # different images -> different vectors
    assert out["model_version"].to_pylist() == [model_version_of(SPEC, 32, 0)] * 5
    yaw = out["yaw"].to_pylist()
    assert yaw[0] == 1.5 and np.isnan(yaw[1]) and np.isnan(out["pitch"][0].as_py())
    # A fresh stage (same spec and seed) gives the same numbers; an empty batch is fine.
    again = EmbedStage(SPEC, image_size=64, device="cpu", batch_size=2, dim=32)(_batch())
    np.testing.assert_array_equal(_vectors(again), v)
    assert len(stage({"image_id": np.array([], object), "jpeg": np.array([], object)})) == 0


def test_checkpoint_round_trip(tmp_path, stage):
    uri = str(tmp_path / "model.pt")
    version = save_checkpoint(stage.model, {"backbone": "resnet18", "dim": 32}, uri)
    loaded = EmbedStage(uri, image_size=64, device="cpu", batch_size=2)
    assert loaded.model_version == version == model_version_of(uri) and len(version) == 16
    np.testing.assert_array_equal(_vectors(loaded(_batch())), _vectors(stage(_batch())))


def test_checkpoint_mismatch_fails_clearly(tmp_path, stage):
    state = dict(stage.model.state_dict())
    state.pop("head.3.weight")
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save({"config": {"backbone": "resnet18", "dim": 32}, "state_dict": state}, bad)
    with pytest.raises(ValueError, match=r"missing \['head.3.weight'\].*unexpected \['extra.weight'\]"):
        load_model(str(bad))
    wrong_dim = tmp_path / "dim.pt"
    torch.save({"config": {"backbone": "resnet18", "dim": 16}, "state_dict": stage.model.state_dict()}, wrong_dim)
    with pytest.raises(ValueError, match="wrong shape"):
        load_model(str(wrong_dim))
    not_ckpt = tmp_path / "raw.pt"
    torch.save(stage.model.state_dict(), not_ckpt)
    with pytest.raises(ValueError, match="'config' and 'state_dict'"):
        load_model(str(not_ckpt))


# ------------------------------------------------------------------------------- pipeline (Ray)

TINY = ["image_size=64", "dim=32", "batch_size=16", "shard_rows=8"]


@pytest.fixture(scope="module")
def demo(demo_full, ray_session):
    """The demo collection as the session's demo run preprocessed it (22 images, 15 ok, 14 faces)."""
    return demo_full[0] / "preprocess"


def _embed(demo, out, what: str, *overrides: str) -> int:
    return main(["embed", "--model", SPEC, "--input", str(demo), "--out", str(out), "--what", what,
                 *TINY, *overrides])


def _read(out) -> pa.Table:
    from artextract.core import storage

    return storage.read_parquet(str(out))


@pytest.mark.slow
def test_pipeline_rerun_identical_and_search(demo, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _embed(demo, a, "both") == 0
    summary = json.loads((a / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["rows_in"] == counts["vectors_out"] == 29
    assert (counts["faces"], counts["whole_images"], counts["shards"]) == (14, 15, 4)
    assert summary["model_version"] == model_version_of(SPEC, 32, 0)
    ta = _read(a)
    keys = list(zip(ta["image_id"].to_pylist(), ta["face_idx"].to_pylist()))
    assert keys == sorted(keys) and len(set(keys)) == 29
    assert ta.schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert ta.schema.field("face_idx").type == pa.int16()
    whole = np.asarray(ta["face_idx"].to_pylist()) == -1
    assert np.isnan(np.asarray(ta["yaw"].to_pylist(), np.float32)[whole]).all()
    assert not np.isnan(np.asarray(ta["yaw"].to_pylist(), np.float32)[~whole]).any()
    np.testing.assert_allclose(np.linalg.norm(_vectors(ta), axis=1), 1.0, atol=1e-5)
    # Rerun: every shard is skipped; another model or selection into the same out is refused.
    assert _embed(demo, a, "both") == 0
    again = json.loads((a / "summary.json").read_text())["counts"]
    assert again["shards_skipped"] == 4 and again["shards_written_now"] == 0
    capsys.readouterr()
    assert _embed(demo, a, "both", "seed=1") == 1
    assert _embed(demo, a, "faces") == 1
    assert "different input, model" in capsys.readouterr().err
    # A second run into a new dir gives bit-identical vectors; given relative paths, as a user types
    # them from another directory (the actor resolves nothing itself: the config carries absolute paths).
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert main(["embed", "--model", SPEC, "--input", os.path.relpath(demo), "--out", "b", "--what", "both",
                     *TINY, "actors=1"]) == 0
    tb = _read(b)
    assert tb.select(["image_id", "face_idx"]).equals(ta.select(["image_id", "face_idx"]))
    np.testing.assert_array_equal(_vectors(tb), _vectors(ta))

    # End to end: index build + search by image_id (its face and its whole painting) with the grid.
    idx, res = tmp_path / "idx", tmp_path / "res"
    assert main(["index", "build", "--embeddings", str(a), "--out", str(idx), "--shards", "2"]) == 0
    assert main(["search", "--index", str(idx), "--id", "astronaut", "--faces", str(demo),
                 "-k", "3", "--out", str(res)]) == 0
    results = {r["query"]["face_idx"]: r["hits"] for r in json.loads((res / "results.json").read_text())["results"]}
    assert set(results) == {-1, 0}  # the whole painting and its one face
    for face_idx, hits in results.items():
        top = hits[0]
        assert (top["image_id"], top["face_idx"], top["rank"]) == ("astronaut", face_idx, 1)
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert (res / "grid.png").stat().st_size > 0

    # Similar poses: the same query re-ranked and filtered by head-pose distance to the query face.
    pose_res = tmp_path / "pose"
    assert main(["search", "--index", str(idx), "--id", "astronaut", "--face-idx", "0", "--faces", str(demo),
                 "-k", "5", "--pose", "filter", "pose_max_deg=15", "--out", str(pose_res)]) == 0
    doc = json.loads((pose_res / "results.json").read_text())["results"][0]
    assert doc["query"]["pose"] is not None and doc["hits"][0]["image_id"] == "astronaut"
    dists = [h["pose_distance_deg"] for h in doc["hits"]]
    assert all(d is None or d <= 15 for d in dists) and [h["rank"] for h in doc["hits"]] == list(
        range(1, len(doc["hits"]) + 1))
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--id", "astronaut", "--pose", "rerank", "--out",
                 str(tmp_path / "p2")]) == 2
    assert "needs faces=" in capsys.readouterr().err


def test_pose_rerank_and_filter_orders_by_pose():
    from artextract.search.rerank import apply_pose, pose_distance

    assert pose_distance((10, 0, 0), (13, 4, 0)) == pytest.approx(5.0)
    assert pose_distance((10, 0, 0), (float("nan"), 0, 0)) is None
    poses = {("a", 0): (0.0, 0.0, 0.0), ("b", 0): (40.0, 0.0, 0.0), ("c", 0): (5.0, 0.0, 0.0),
             ("d", -1): (float("nan"),) * 3}

    def hits():
        return [{"rank": i + 1, "image_id": k, "face_idx": f, "score": s}
                for i, (k, f, s) in enumerate([("b", 0, 0.95), ("d", -1, 0.9), ("c", 0, 0.85), ("a", 0, 0.8)])]

    kept = apply_pose(hits(), (0.0, 0.0, 0.0), poses, "filter", k=3, max_deg=10)
    assert [h["image_id"] for h in kept] == ["d", "c", "a"]  # b is 40 degrees away; unknown d is kept
    ranked = apply_pose(hits(), (0.0, 0.0, 0.0), poses, "rerank", k=4, weight=1.0)
    # a: .8; c: .85-5/90=.794; b: .95-40/90=.506; d (unknown -> worst 40): .9-.444=.456
    assert [h["image_id"] for h in ranked] == ["a", "c", "b", "d"]
    assert [h["rank"] for h in ranked] == [1, 2, 3, 4]
    # No query pose: the similarity order stands.
    assert [h["image_id"] for h in apply_pose(hits(), None, poses, "rerank", k=4)] == ["b", "d", "c", "a"]
