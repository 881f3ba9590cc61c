"""``artextract evaluate faces``: matching, AP and the image-level rates on hand-made cases, then the
verb end to end on a preprocess-shaped output (relative paths, as a user types them)."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from artextract.core import storage
from artextract.cli import main
from artextract.eval.face_metrics import LabelledImage, average_precision, evaluate, iou, match
from artextract.eval.faces import read_labels, split_of


def test_iou_and_greedy_matching():
    a = np.array([[0, 0, 10, 10]])
    assert iou(a, np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])).tolist() == [[1.0, 1 / 3, 0.0]]
    gt = np.array([[0, 0, 10, 10], [100, 100, 120, 120]])
    det = np.array([[1, 1, 10, 10], [0, 0, 9, 9], [101, 100, 120, 121], [50, 50, 60, 60]])
    tp, hit = match(gt, det, np.array([0.6, 0.9, 0.8, 0.99]), 0.5)
    # the higher-scored of the two boxes on face 0 takes it; the other is a duplicate (FP)
    assert tp.tolist() == [False, True, True, False] and hit.tolist() == [True, True]


def test_average_precision_by_hand():
    # ranked TP, FP, TP over 2 labels: precision 1 up to recall 0.5, then 2/3 up to recall 1
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2) == pytest.approx(
        0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.9]), np.array([1], bool), 4) == pytest.approx(0.25)  # 3 never found
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert average_precision(np.zeros(0), np.zeros(0, bool), 0) is None


def test_image_level_rates_and_recall_by_kind():
    labels = [
        LabelledImage("portrait", np.array([[0, 0, 50, 50], [60, 0, 70, 10]]), ["prominent", "small"],
                      ["frontal", "frontal"]),
        LabelledImage("medal", np.array([[0, 0, 40, 40]]), ["prominent"], ["profile"]),
        LabelledImage("landscape", np.zeros((0, 4))),
        LabelledImage("still_life", np.zeros((0, 4))),
    ]
    dets = {"portrait": (np.array([[1, 1, 50, 50]]), np.array([0.99])),
            "landscape": (np.array([[5, 5, 9, 9]]), np.array([0.95]))}
    m, errors = evaluate(labels, dets)
    assert (m["labelled_faces"], m["detections"], m["true_positives"]) == (3, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(1 / 3)
    assert m["prominent_image_recall"] == 0.5 and m["images_with_prominent_face"] == 2
    assert m["faceless_fp_rate"] == 0.5 and m["faceless_images"] == 2
    assert m["recall_by"]["profile"] == {"recall": 0.0, "faces": 1}
    assert m["recall_by"]["prominent_frontal"] == {"recall": 1.0, "faces": 1}
    assert m["recall_by"]["small"] == {"recall": 0.0, "faces": 1}
    assert sorted((e["image_id"], e["kind"]) for e in errors) == [
        ("landscape", "false_positive"), ("medal", "miss"), ("portrait", "miss")]


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_split_is_stable_and_labels_are_validated(tmp_path):
    assert split_of("12345") == split_of("12345") and {split_of(str(i)) for i in range(20)} == {"dev", "test"}
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,face_idx,x1,y1,x2,y2,size,pose\na,0,10,10,5,20,prominent,frontal\n")
    with pytest.raises(ValueError, match="line 2: bad label"):
        read_labels(str(bad), "all")


def test_evaluate_faces_verb_with_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Originals 800 px wide, stored whole images 400 px: crops for the grid are scaled by 0.5.
    storage.write_parquet("pre/images/part-00000.parquet", pa.table({
        "image_id": ["a", "b", "c", "q"], "status": ["ok", "ok", "ok", "quarantined"],
        "orig_width": [800, 800, 800, None], "whole_jpeg": [_jpeg(400, 300)] * 3 + [None]}))
    storage.write_parquet("pre/faces/part-00000.parquet", pa.table({
        "image_id": ["a", "a", "c"], "face_idx": pa.array([0, 1, 0], pa.int16()),
        "box": [[100.0, 100, 200, 220], [500.0, 100, 540, 140], [10.0, 10, 50, 50]],
        "prob": [0.99, 0.5, 0.97]}))
    (tmp_path / "labels.csv").write_text(
        "image_id,face_idx,x1,y1,x2,y2,size,pose,split\n"
        "a,0,105,98,200,215,prominent,frontal,test\n"
        "b,0,300,300,380,400,prominent,profile,test\n"
        "c,,,,,,none,none,test\n"
        "q,,,,,,none,none,test\n"
        "gone,0,1,1,9,9,small,other,test\n"
        "d,0,1,1,9,9,small,other,dev\n")
    assert main(["evaluate", "faces", "--preprocess", "pre", "--labels", "labels.csv", "--out", "rep"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert (m["images"], m["images_missing"], m["images_quarantined"]) == (4, 1, 1)  # 'gone' counted, dev not
    assert m["prominent_image_recall"] == 0.5 and m["faceless_fp_rate"] == 0.5  # c has a detection, q none
    assert m["recall_by"]["profile"]["recall"] == 0.0 and m["precision"] == pytest.approx(1 / 3)
    with Image.open(tmp_path / "rep" / "errors.png") as grid:
        assert grid.width >= 3 * 96  # b's miss, a's low-score box, c's false positive
    assert "errors.png" in (tmp_path / "rep" / "report.html").read_text()
    # min_prob drops a's 0.5 box: precision rises, recall unchanged
    assert main(["evaluate", "faces", "--preprocess", "pre", "--labels", "labels.csv", "--out", "rep2",
                 "min_prob=0.9"]) == 0
    m2 = json.loads((tmp_path / "rep2" / "metrics.json").read_text())
    assert m2["precision"] == 0.5 and m2["recall"] == m["recall"]
