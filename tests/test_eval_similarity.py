"""``artextract evaluate similarity``: retrieval metrics by hand, the near-duplicate protocol, the job
end to end on a tiny preprocess-like output (untrained resnet18 at 64 px; no Ray, no network)."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from artextract.core import storage
from artextract.config import EvaluateSimilarityConfig
from artextract.eval import retrieval as R
from artextract.eval.neardup import built_model_args, copy_ranks, make_copies
from artextract.eval.similarity import pair_similarity, read_labels, run
from artextract.stages.embed import EmbedStage

SPEC = "untrained:resnet18"

# --------------------------------------------------------------------------- hand-built case
# Points on the unit circle (degrees); cosine falls monotonically with angular distance, so every
# ranking below was worked out by hand from the angles.
#   a0=0 a1=10 a2=55 (label "a"), b0=30 b1=105 b2=115 (label "b"), c=250 (singleton "c"), u=270 (None)
ANGLES = [0, 10, 55, 30, 105, 115, 250, 270]
LABELS = ["a", "a", "a", "b", "b", "b", "c", None]
# Ranked relevance of the six answerable queries (a0, a1, a2, b0, b1, b2), top 5 (c and u rank
# after every relevant item that matters, except u at rank 4 for a0):
#   a0: a1 b0 a2 b1 b2 | a1: a0 b0 a2 b1 b2 | a2: b0 a1 b1 a0 b2 | b0: a1 a2 a0 b1 b2
#   b1: b2 a2 b0 a1 a0 | b2: b1 a2 b0 a1 a0
REL = np.array([[1, 0, 1, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 1, 0],
                [0, 0, 0, 1, 1], [1, 0, 1, 0, 0], [1, 0, 1, 0, 0]], bool)
N_REL = np.full(6, 2)
EXPECTED = {"precision@1": 4 / 6, "precision@2": 2.5 / 6, "recall@1": 2 / 6, "recall@2": 2.5 / 6,
            "hit_rate@1": 4 / 6, "hit_rate@2": 5 / 6, "recall@5": 1.0,
            # AP@R: a0, a1, b1, b2 = 1/2; a2 = (1/2)/2; b0 = 0.   RR: 1, 1, 1/2, 1/4, 1, 1
            "map@r": (0.5 * 4 + 0.25) / 6, "mrr": (4 + 0.5 + 0.25) / 6}


def _circle(angles) -> np.ndarray:
    rad = np.deg2rad(np.asarray(angles, float))
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


def test_metric_functions_by_hand():
    assert R.precision_at_k(REL, 1) == pytest.approx(EXPECTED["precision@1"])
    assert R.precision_at_k(REL, 2) == pytest.approx(EXPECTED["precision@2"])
    assert R.recall_at_k(REL, N_REL, 1) == pytest.approx(EXPECTED["recall@1"])
    assert R.recall_at_k(REL, N_REL, 5) == pytest.approx(1.0)
    assert R.hit_rate_at_k(REL, 2) == pytest.approx(EXPECTED["hit_rate@2"])
    assert R.map_at_r(REL, N_REL) == pytest.approx(EXPECTED["map@r"])
    assert R.mean_reciprocal_rank(REL) == pytest.approx(EXPECTED["mrr"])
    # MAP@R only looks at the top R ranks: a relevant item at rank R+1 adds nothing.
    assert R.map_at_r(np.array([[0, 1, 1]], bool), np.array([1])) == 0.0
    assert R.map_at_r(np.array([[1, 0, 1]], bool), np.array([2])) == pytest.approx(0.5)


def test_retrieval_metrics_by_hand_and_skipped_singletons():
    X = _circle(ANGLES)
    m = R.retrieval_metrics(X, LABELS, ks=(1, 2, 5))
    assert (m["labelled"], m["queries"], m["skipped_queries"], m["classes"]) == (7, 6, 1, 3)
    for key, want in EXPECTED.items():
        assert m[key] == pytest.approx(want), key
    assert all(isinstance(v, (int, float, bool)) for v in m.values())
    # kNN agrees with the hand ranking, self excluded.
    _, idx = R.knn(X, 5)
    assert idx[0].tolist() == [1, 3, 2, 7, 4]  # u (270) is 90 degrees from a0
    assert idx[3].tolist() == [1, 2, 0, 4, 5]
    # Integer labels with -1 as "unlabelled" give the same answer.
    ints = [0, 0, 0, 1, 1, 1, 2, -1]
    assert R.retrieval_metrics(X, ints, ks=(1, 2, 5)) == m


def test_groups_exclude_same_image():
    X = _circle(ANGLES)
    groups = ["g", "g", "p2", "p3", "p4", "p5", "p6", "p7"]  # a0 and a1 are faces of one painting
    _, idx = R.knn(X, 5, groups=groups)
    assert 1 not in idx[0] and 0 not in idx[1] and idx[0].tolist() == [3, 2, 7, 4, 6]
    m = R.retrieval_metrics(X, LABELS, ks=(1,), groups=groups)
    # a0 and a1 now have R = 1 (only a2) and rank it 2nd: P@1 0, RR 1/2, AP@R 0.
    assert m["precision@1"] == pytest.approx(2 / 6)
    assert m["map@r"] == pytest.approx((0.25 + 0.5 * 2) / 6)
    assert m["mrr"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.25 + 1 + 1) / 6)
    assert m["exclude_same_group"] is True
    # Every row in one group: nothing is retrievable, everything is skipped.
    assert R.retrieval_metrics(X, LABELS, groups=["x"] * 8)["queries"] == 0


def test_knn_chunked_matches_dense_and_pads():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    s_small, i_small = R.knn(X, 7, budget=1000)  # 3 query rows per block
    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    np.testing.assert_array_equal(i_small, np.argsort(-S, axis=1)[:, :7])
    np.testing.assert_allclose(s_small, np.sort(S, axis=1)[:, ::-1][:, :7], atol=1e-6)
    s, i = R.knn(X[:3], 5)  # fewer rows than k
    assert (i[:, 2:] == -1).all() and np.isneginf(s[:, 2:]).all()


def test_clustered_and_random_vectors():
    rng = np.random.default_rng(1)
    centres = np.eye(10, 32, dtype=np.float32)
    labels = np.repeat(np.arange(10), 40)
    X = centres[labels] + 0.02 * rng.normal(size=(400, 32)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    m = R.retrieval_metrics(X, labels, ks=(1, 10))
    assert m["precision@1"] == 1.0 and m["map@r"] == pytest.approx(1.0) and m["mrr"] == 1.0
    assert m["recall@10"] == pytest.approx(10 / 39)
    pos, neg = R.cosine_distributions(X, labels, 2000, seed=0)
    assert len(pos) == len(neg) == 2000 and pos.mean() > 0.9 and abs(neg.mean()) < 0.1
    Y = rng.normal(size=(1000, 32)).astype(np.float32)
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    r = R.retrieval_metrics(Y, rng.integers(0, 10, 1000), ks=(1,))
    assert 0.03 < r["precision@1"] < 0.2 and r["map@r"] < 0.2


def test_ties_rank_by_row_index_in_every_metric():
    """Exact ties (duplicate vectors) follow the one ranking rule, descending score then ascending row,
    in P@k, MAP@R and MRR alike (MRR used to count ties in the query's favour)."""
    X = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [-1, 0]], np.float32)
    m = R.retrieval_metrics(X, [0, 1, 0, 0], ks=(1,))
    # Every query's first neighbour is a tied non-relevant row with the lower index: P@1 0, RR 1/2.
    assert m["queries"] == 3 and m["precision@1"] == 0.0 and m["mrr"] == pytest.approx(0.5)
    # Three identical vectors at 120 degrees and one at 0: the tie at rank 1 goes to the lower row.
    Y = _circle([120, 0, 120, 120])
    _, idx = R.knn(Y, 1)
    assert idx[:, 0].tolist() == [2, 0, 0, 0]
    m = R.retrieval_metrics(Y, [0, 1, 1, 0], ks=(1,))
    assert m["precision@1"] == pytest.approx(0.25)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1) / 4)  # ranks 2, 2, 3, 1


def test_metrics_do_not_depend_on_the_block_size_with_duplicates():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 24)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    X = np.repeat(base, 3, axis=0)  # three reproductions of each work, exactly equal vectors
    labels = rng.integers(0, 8, len(X))  # labels disagree within a work: the tie order matters
    one_row = R.retrieval_metrics(X, labels, ks=(1, 5), budget=1)
    assert R.retrieval_metrics(X, labels, ks=(1, 5)) == one_row
    assert R.retrieval_metrics(X, labels, ks=(1, 5), budget=7 * 2 * len(X)) == one_row
    assert np.array_equal(R.knn(X, 5, budget=1)[1], R.knn(X, 5)[1])


@pytest.mark.parametrize("duplicates", [False, True])
def test_metrics_match_pytorch_metric_learning(duplicates):
    """P@1, MAP@R and MRR against pytorch-metric-learning's AccuracyCalculator (test-only dependency),
    on tie-free data and on data where each work appears several times (ties inside a label only,
    where every tie order gives the same answer)."""
    import torch
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(12), 6)
    centres = rng.normal(size=(12, 16))
    X = (centres[labels] + 1.2 * rng.normal(size=(len(labels), 16))).astype(np.float32)
    if duplicates:
        X[1::2] = X[0::2]  # rows 2i and 2i+1 (same label) are the same vector
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "mean_reciprocal_rank"),
                              k=len(X) - 1, knn_func=CustomKNN(CosineSimilarity()), device=torch.device("cpu"))
    t = torch.from_numpy(X)
    ref = calc.get_accuracy(t, torch.from_numpy(labels), t, torch.from_numpy(labels), ref_includes_query=True)
    ours = R.retrieval_metrics(X, labels, ks=(1,))
    assert ours["precision@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    assert ours["mrr"] == pytest.approx(ref["mean_reciprocal_rank"], abs=1e-6)
    assert 0.2 < ours["map@r"] < 0.95  # neither trivial nor hopeless


# ------------------------------------------------------------------------------- pixels, copies

def _jpeg(seed: int, size: int = 72) -> bytes:
    # Smooth colour blobs rather than noise: JPEG keeps them and augmentations preserve structure.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 4, 2).tolist() + [rng.uniform(0, 6)]
        img[..., c] = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_pair_similarity_and_copies():
    a, b = _jpeg(1), _jpeg(2)
    ssim, rmse = pair_similarity(a, a)
    assert ssim == pytest.approx(1.0) and rmse == pytest.approx(0.0)
    ssim_ab, rmse_ab = pair_similarity(a, b)
    assert ssim_ab < 0.9 and rmse_ab > 0.05
    copies = make_copies([a, b], 2, 48, seed=3)
    assert len(copies) == 4 and make_copies([a, b], 2, 48, seed=3) == copies
    with Image.open(io.BytesIO(copies[0])) as im:
        assert im.size == (48, 48)
    rank, own = copy_ranks(np.eye(3), np.array([[0.9, 0.1, 0], [0.6, 0.8, 0]]), np.array([0, 0]))
    assert rank.tolist() == [1, 2] and own.tolist() == [0.9, 0.6]
    assert built_model_args(SPEC, ["x", f"{SPEC}@seed7/d32"]) == {"seed": 7, "dim": 32}
    assert built_model_args("some/ckpt.pt", ["abcdef0123456789"]) == {}


# ------------------------------------------------------------------------------------ the job

ARTISTS = ["monet", "monet", "monet", "degas", "degas", "degas", "vermeer", "vermeer", "hals", None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """preprocess-like output (images/ + faces/), its embeddings (real schema), 10 images x 2 faces."""
    root = tmp_path_factory.mktemp("tiny")
    pre, emb = str(root / "pre"), str(root / "emb")
    ids = [f"img{i:02d}" for i in range(len(ARTISTS))]
    whole = [_jpeg(100 + i, 96) for i in range(len(ids))]
    images = pa.table({"image_id": ids, "status": ["ok"] * len(ids), "whole_jpeg": pa.array(whole, pa.binary()),
                       "artist": pa.array(ARTISTS, pa.string())})
    f_ids = [i for i in ids for _ in range(2)]
    f_idx = [f for _ in ids for f in range(2)]
    crops = [_jpeg(200 + n) for n in range(len(f_ids))]
    faces = pa.table({"image_id": f_ids, "face_idx": pa.array(f_idx, pa.int16()),
                      "crop_jpeg": pa.array(crops, pa.binary())})
    storage.write_parquet(storage.join(pre, "images", "part-00000.parquet"), images)
    storage.write_parquet(storage.join(pre, "faces", "part-00000.parquet"), faces)
    stage = EmbedStage(SPEC, image_size=64, device="cpu", batch_size=16, dim=32)
    batch = {"image_id": np.array(f_ids + ids, object), "face_idx": np.array(f_idx + [-1] * len(ids)),
             "jpeg": np.array(crops + whole, object)}
    storage.write_parquet(storage.join(emb, "part-00000.parquet"), stage(batch))
    return root, pre, emb


def test_read_labels_from_preprocess_or_manifest(tiny, tmp_path):
    _, pre, _ = tiny
    assert read_labels(pre, "artist")["img00"] == "monet"
    manifest = str(tmp_path / "manifest")
    storage.write_parquet(storage.join(manifest, "part-00000.parquet"),
                          pa.table({"image_id": ["img00"], "artist": ["x"]}))
    assert read_labels(manifest, "artist") == {"img00": "x"}


def test_run_end_to_end(tiny, tmp_path):
    _, pre, emb = tiny
    out = tmp_path / "eval"
    cfg = EvaluateSimilarityConfig(
        embeddings=emb, out=str(out), labels=pre, label_column="artist", what="all", ks=(1, 5),
        preprocess=pre, queries=4, grid_k=3, seed=0,
        near_duplicate={"enabled": True, "model": SPEC, "images": 8, "copies": 1, "image_size": 64})
    summary = run(cfg)
    for name in ("metrics.json", "summary.json", "config.resolved.yaml", "cosine_distributions.png",
                 "pairs.csv", "query_grid.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"retrieval", "top1_cosine", "cosine_distributions", "pairs", "near_duplicate"} <= set(metrics)
    ret = metrics["retrieval"]
    for key in ("precision@1", "precision@5", "recall@5", "hit_rate@5", "map@r", "mrr"):
        assert 0.0 <= ret[key] <= 1.0, key
    counts = summary["counts"]
    assert counts == json.loads((out / "summary.json").read_text())["counts"]
    # 10 images x (2 faces + whole): 27 labelled; hals (one image, all rows in one group) is skipped.
    assert counts["vectors"] == 30 and counts["labelled"] == 27
    assert counts["queries"] + counts["skipped_queries"] == counts["labelled"] and counts["skipped_queries"] == 3
    pairs = list(csv.DictReader(io.StringIO((out / "pairs.csv").read_text())))
    assert len(pairs) == counts["pairs"] == metrics["pairs"]["pairs"] == 4 * 3
    assert all(p["image_id"] != p["query_image_id"] for p in pairs)  # same painting is excluded
    assert -1.0 <= metrics["pairs"]["ssim@1"] <= 1.0 and metrics["pairs"]["rmse@3"] > 0
    with Image.open(out / "query_grid.png") as grid:
        assert grid.size == (4 * 96, 4 * (96 + 14))
    nd = metrics["near_duplicate"]
    assert (nd["originals"], nd["copies"], counts["near_duplicate_copies"]) == (8, 8, 8)
    assert nd["model_version"] == f"{SPEC}@seed0/d32"  # parsed from the shards: same model
    assert 0 <= nd["recall@1"] <= nd["recall@5"] <= 1 and -1 <= nd["mean_cosine"] <= 1


def test_run_without_labels(tiny, tmp_path):
    _, _, emb = tiny
    out = tmp_path / "nolabels"
    summary = run(EvaluateSimilarityConfig(embeddings=emb, out=str(out), what="faces"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "note" in metrics["retrieval"] and metrics["vectors"] == 20 and metrics["top1_cosine"]["mean"] <= 1
    assert not (out / "cosine_distributions.png").exists() and not (out / "pairs.csv").exists()
    assert summary["counts"]["queries"] == 0 and summary["counts"]["vectors"] == 20
