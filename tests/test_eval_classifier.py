"""Evaluation/report layer: metrics with known answers, outlier detection, plots and the full report
written locally and to S3 (moto)."""
from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from artextract.core import storage
from artextract.eval.classifier_report import (ClassifierPredictions, TaskPredictions,
                                               write_classifier_report)
from artextract.eval.metrics import classification_metrics, confusion
from artextract.eval.outliers import OUTLIER_METHODS, class_distance_outliers, confident_mispredictions
from artextract.eval.plots import confusion_png, image_grid_png, stratified_subsample, tsne_png

HTML_CLASS = "<b>Naïve & Co</b>"


def one_hot_probs(pred: list[int], n_classes: int, p: float = 0.7) -> np.ndarray:
    """Probabilities with argmax = pred and the rest spread evenly."""
    probs = np.full((len(pred), n_classes), (1 - p) / (n_classes - 1), dtype=np.float32)
    probs[np.arange(len(pred)), pred] = p
    return probs


# ---------------------------------------------------------------- metrics

def test_metrics_known_answers_and_masking():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 2, -1, -1], dtype=np.int64)
    y_pred = [0, 1, 1, 2, 2, 2]  # unknown rows predicted wrongly-ish: must not count
    m = classification_metrics(y_true, one_hot_probs(y_pred, 3), classes)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    # per class: a P=1 R=.5 F=2/3; b P=.5 R=1 F=2/3; c P=1 R=1 F=1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["top3"] == 1.0 and m["top5"] == 1.0  # C <= k: trivially 1
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["support"] == 1
    assert "a" in m["report"] and "0.750" in m["report"]
    json.dumps(m)  # plain Python types only
    assert all(type(m[k]) is float for k in ("accuracy", "top3", "macro_f1", "weighted_f1"))


def test_topk_with_class_absent_from_y_true():
    classes = [f"c{i}" for i in range(6)]
    y_true = np.array([0, 1, 1, 2], dtype=np.int64)  # classes 3..5 never appear
    probs = np.array([
        [0.10, 0.50, 0.20, 0.15, 0.05, 0.00],   # true 0 ranks 4th -> in top5, not top3
        [0.05, 0.60, 0.10, 0.10, 0.10, 0.05],   # true 1 top1
        [0.40, 0.30, 0.10, 0.10, 0.05, 0.05],   # true 1 ranks 2nd
        [0.30, 0.30, 0.02, 0.20, 0.10, 0.08],   # true 2 ranks 6th -> in neither
    ], dtype=np.float32)
    m = classification_metrics(y_true, probs, classes)
    assert m["top3"] == pytest.approx(0.5)
    assert m["top5"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.25)
    # macro F1 over classes present in y_true or predictions: {0, 1, 2}; only class 1 has F1 > 0.
    f1_1 = 2 * 0.5 * 0.5 / (0.5 + 0.5)  # predicted 1 twice (1 right), true 1 twice
    assert m["macro_f1"] == pytest.approx(f1_1 / 3)
    assert set(m["per_class"]) == set(classes)


def test_zero_rows_and_single_class():
    m = classification_metrics(np.full(4, -1), one_hot_probs([0, 1, 0, 1], 2), ["x", "y"])
    assert m["n"] == 0 and m["accuracy"] is None and m["macro_f1"] is None
    json.dumps(m)
    m0 = classification_metrics(np.zeros(0, dtype=np.int64), np.zeros((0, 2), np.float32), ["x", "y"])
    assert m0["n"] == 0
    m1 = classification_metrics(np.zeros(3, dtype=np.int64), np.ones((3, 1), np.float32), ["only"])
    assert m1["n"] == 3 and m1["accuracy"] == 1.0 and m1["macro_f1"] == 1.0 and m1["top3"] == 1.0


def test_confusion_drops_unknown_rows():
    cm = confusion(np.array([0, 1, 1, -1, 2]), np.array([0, 0, 1, 2, 2]), 4)
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    assert cm.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert confusion(np.array([-1]), np.array([0]), 2).sum() == 0


# ---------------------------------------------------------------- outliers

def clustered(seed: int = 0, per_class: int = 20, dim: int = 16):
    """3 tight clusters (20 each) + 2 rows labelled 0 that sit in class 2's cluster (rows 60, 61)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 5
    x = np.concatenate([centres[c] + rng.normal(scale=0.3, size=(per_class, dim)) for c in range(3)])
    y = np.repeat(np.arange(3), per_class)
    planted = centres[2] + rng.normal(scale=0.3, size=(2, dim))
    return (np.concatenate([x, planted]).astype(np.float32),
            np.concatenate([y, [0, 0]]).astype(np.int64))


def test_robust_distance_finds_planted_rows():
    x, y = clustered()
    out = class_distance_outliers(x, y, ["a", "b", "c"], top=5, method="robust_distance")
    assert {o["row"] for o in out[:2]} == {60, 61}
    assert all(o["label"] == "a" for o in out[:2])
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    assert out[0]["distance"] is not None and out[0]["distance"] > 0.5
    assert out[2]["score"] < out[1]["score"] / 3  # a clear gap to the first genuine member


def test_isolation_forest_finds_planted_rows():
    x, y = clustered()
    out = class_distance_outliers(x, y, ["a", "b", "c"], top=4, method="isolation_forest", seed=0)
    assert {60, 61} <= {o["row"] for o in out}
    assert all(o["distance"] is None for o in out)
    assert set(OUTLIER_METHODS) == {"robust_distance", "isolation_forest"}
    with pytest.raises(ValueError, match="unknown outlier method"):
        class_distance_outliers(x, y, ["a", "b", "c"], top=4, method="nope")


def test_outliers_skip_small_classes_and_unknown():
    x, y = clustered()
    y = y.copy()
    y[:57] = -1  # class 2 keeps rows 57-59 (3 members: scored); class 0 keeps only 60, 61 (skipped)
    out = class_distance_outliers(x, y, ["a", "b", "c"], top=100, method="robust_distance")
    assert sorted(o["row"] for o in out) == [57, 58, 59]
    assert all(o["label"] == "c" for o in out)
    assert class_distance_outliers(x, np.full(len(y), -1), ["a", "b", "c"], top=5) == []


def test_confident_mispredictions_order_and_threshold():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 2, -1, 1], dtype=np.int64)
    probs = np.array([
        [0.10, 0.85, 0.05],   # wrong, 0.85
        [0.90, 0.05, 0.05],   # right
        [0.95, 0.03, 0.02],   # wrong, 0.95
        [0.30, 0.60, 0.10],   # wrong but below threshold
        [0.99, 0.00, 0.01],   # unknown label
        [0.05, 0.15, 0.80],   # wrong, exactly at threshold
    ], dtype=np.float32)
    out = confident_mispredictions(y_true, probs, classes, min_prob=0.8, top=10)
    assert [o["row"] for o in out] == [2, 0, 5]
    assert out[0] == {"row": 2, "label": "b", "predicted": "a", "prob": pytest.approx(0.95),
                      "prob_true": pytest.approx(0.03)}
    assert confident_mispredictions(y_true, probs, classes, 0.8, top=1)[0]["row"] == 2


# ---------------------------------------------------------------- plots

def png_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img.size


def jpeg(colour: tuple[int, int, int], size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_plots_small_inputs(tmp_path):
    cm = np.array([[3, 1], [0, 0]])
    buf = io.BytesIO()
    data = confusion_png(cm, ["$x$", HTML_CLASS], buf, "t")
    assert buf.getvalue() == data and png_size(data)[0] > 100
    assert png_size(confusion_png(np.eye(30, dtype=int) * 2, [f"class {i}" for i in range(30)]))[0] > 800
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    png_size(tsne_png(emb, np.array([0, 0, 1, -1, 1]), ["a", "b"], title="tiny", seed=0))
    png_size(tsne_png(emb[:3], np.array([0, 1, -1]), ["a", "b"], title="too few"))
    # A collapsed model's identical embeddings: a placeholder, not the segfault sklearn's Barnes-Hut
    # gives on them (PCA init divides by zero spread); non-finite rows are left out, not fatal.
    png_size(tsne_png(np.ones((48, 8)), np.arange(48) % 2, ["a", "b"], title="collapsed"))
    bad = np.random.default_rng(0).normal(size=(12, 4))
    bad[3, 1] = np.nan
    png_size(tsne_png(bad, np.arange(12) % 2, ["a", "b"], title="nan"))
    grid = image_grid_png([jpeg((255, 0, 0)), None, b"not a jpeg"], ["red\n0.9", "none", "bad ü"],
                          str(tmp_path / "g.png"), cols=2, thumb=64)
    w, h = png_size(grid)
    assert w == 2 * (64 + 8) and (tmp_path / "g.png").read_bytes() == grid
    img = Image.open(io.BytesIO(grid)).convert("RGB")
    assert img.getpixel((4 + 32, 4 + 32)) [0] > 200  # red thumbnail centred in the first cell
    png_size(image_grid_png([], []))


def test_stratified_subsample_deterministic():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 9 + [-1])
    a = stratified_subsample(labels, 100, seed=3)
    assert len(a) == 100 and np.array_equal(a, stratified_subsample(labels, 100, seed=3))
    assert set(labels[a]) == {0, 1, 2, -1}  # every group keeps at least one row
    assert np.array_equal(stratified_subsample(labels[:50], 100), np.arange(50))


# ---------------------------------------------------------------- full report

def make_preds(n: int = 40, seed: int = 0) -> ClassifierPredictions:
    rng = np.random.default_rng(seed)
    style_classes = ["Impressionism", HTML_CLASS, "Cubism"]
    genre_classes = ["portrait", "landscape", "still life", "abstract"]
    y_style = rng.integers(0, 3, n)
    y_genre = rng.integers(0, 4, n)
    y_genre[::3] = -1  # some unknown genre labels
    centres = rng.normal(size=(3, 12)) * 3
    emb = (centres[y_style] + rng.normal(scale=0.5, size=(n, 12))).astype(np.float32)

    def probs_for(y, c):
        logits = rng.normal(size=(n, c))
        logits[np.arange(n), np.where(y >= 0, y, 0)] += 2.5  # mostly right, some confident wrong
        p = np.exp(logits)
        return (p / p.sum(1, keepdims=True)).astype(np.float32)

    palette = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    thumbs = [jpeg(palette[y_style[i]]) if i % 7 else None for i in range(n)]
    thumbs[5] = b"\xff\xd8garbage"
    return ClassifierPredictions(
        image_ids=[f"img-{i:03d}" for i in range(n)],
        tasks={"style": TaskPredictions(style_classes, y_style.astype(np.int64), probs_for(y_style, 3)),
               "genre": TaskPredictions(genre_classes, y_genre.astype(np.int64), probs_for(y_genre, 4))},
        embeddings=emb, thumbnails=thumbs, titles=[f"painting_{i}.jpg" for i in range(n)])


def expected_files(task: str) -> list[str]:
    return [f"confusion_{task}.png", f"confusion_{task}.csv", f"classification_report_{task}.txt",
            f"tsne_{task}.png", f"outliers_{task}.csv", f"outliers_{task}.png",
            f"mispredictions_{task}.csv", f"mispredictions_{task}.png"]


def check_against_sklearn(result: dict, preds: ClassifierPredictions) -> None:
    for name, task in preds.tasks.items():
        m = result["tasks"][name]
        mask = task.y_true >= 0
        if not mask.any():
            assert m["n"] == 0 and m["accuracy"] is None
            continue
        yt, yp = task.y_true[mask], task.probs[mask].argmax(1)
        labels = np.union1d(yt, yp)
        assert m["n"] == int(mask.sum())
        assert m["accuracy"] == pytest.approx(accuracy_score(yt, yp))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, yp))
        assert m["macro_f1"] == pytest.approx(f1_score(yt, yp, labels=labels, average="macro", zero_division=0))
        assert m["weighted_f1"] == pytest.approx(
            f1_score(yt, yp, labels=labels, average="weighted", zero_division=0))
        assert "report" not in m


def test_write_report_local(tmp_path):
    preds = make_preds()
    preds.tasks["empty"] = TaskPredictions(["p", "q"], np.full(40, -1, np.int64),
                                           np.full((40, 2), 0.5, np.float32))
    out = tmp_path / "report"
    extra = {"checkpoint_epoch": 7, "run": {"lr": 0.001, "note": "<script>"}}
    result = write_classifier_report(str(out), preds, tsne_max_points=30, outlier_top=6,
                                     mispredict_min_prob=0.5, extra=extra)
    names = {p.name for p in out.iterdir()}
    want = set(expected_files("style") + expected_files("genre") + ["metrics.json", "report.html"])
    assert want <= names
    assert not any(n.endswith("_empty.png") or n.startswith(".tmp") for n in names)
    for name in names:
        if name.endswith(".png"):
            png_size((out / name).read_bytes())

    rows = list(csv.reader((out / "confusion_style.csv").open(encoding="utf-8")))
    assert rows[0] == ["true\\predicted", "Impressionism", HTML_CLASS, "Cubism"]
    assert [r[0] for r in rows[1:]] == preds.tasks["style"].classes
    cm_total = sum(int(v) for r in rows[1:] for v in r[1:])
    assert cm_total == 40
    assert next(csv.reader((out / "outliers_style.csv").open()))[:4] == ["image_id", "label", "score", "distance"]
    mis = list(csv.reader((out / "mispredictions_genre.csv").open()))
    assert mis[0] == ["image_id", "label", "predicted", "prob"]
    assert all(float(r[3]) >= 0.5 and r[1] != r[2] for r in mis[1:])
    assert "Impressionism" in (out / "classification_report_style.txt").read_text()

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["n_images"] == 40 and on_disk["checkpoint_epoch"] == 7
    assert on_disk["tasks"]["empty"]["n"] == 0
    assert on_disk["tasks"]["genre"]["n"] == int((preds.tasks["genre"].y_true >= 0).sum()) < 40
    check_against_sklearn(on_disk, preds)

    page = (out / "report.html").read_text(encoding="utf-8")
    for task in ("style", "genre"):
        for f in expected_files(task):
            if f.endswith(".png"):
                assert f"src='{f}'" in page
            else:
                assert f"href='{f}'" in page
    assert HTML_CLASS not in page and "&lt;b&gt;Naïve &amp; Co&lt;/b&gt;" in page
    assert "<script>" not in page and "checkpoint_epoch" in page
    assert "No row has a known label" in page
    assert "http://" not in page and "https://" not in page  # self-contained

    with pytest.raises(ValueError, match="reserved"):
        write_classifier_report(str(out), preds, extra={"tasks": 1})


def test_write_report_s3(s3_bucket, s3_storage):
    preds = make_preds(seed=1)
    out = f"s3://{s3_bucket}/eval/run1"
    result = write_classifier_report(out, preds, storage_cfg=s3_storage, tsne_max_points=25,
                                     outlier_method="isolation_forest", outlier_top=4, extra={"epoch": 3})
    back = storage.read_json(storage.join(out, "metrics.json"), s3_storage)
    assert back == json.loads(json.dumps(result)) and back["epoch"] == 3
    check_against_sklearn(back, preds)
    listed = {f.path.rsplit("/", 1)[-1] for f in storage.list_files(out, s3_storage)}
    assert set(expected_files("style") + expected_files("genre") + ["report.html"]) <= listed
    png_size(storage.read_bytes(storage.join(out, "tsne_style.png"), s3_storage))
