"""``artextract demo`` end to end, offline: preprocess + tiny classifier report + tiny face similarity."""
from __future__ import annotations

import json

import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_runs_every_stage(demo_full):
    out, printed = demo_full
    assert "sample checks 22/22" in printed and "classifier" in printed and "query grid" in printed
    summary = json.loads((out / "summary.json").read_text())
    clf = summary["classifier"]
    assert clf["epochs"] == 2 and set(clf["test_metrics"]) == {"style", "genre", "artist"}
    report = (out / "classifier" / "report" / "report.html").read_text()
    for name in ("confusion_style.png", "tsne_style.png", "outliers_style.png"):
        assert name in report and (out / "classifier" / "report" / name).exists()
    sim = summary["similarity"]
    assert sim["faces_embedded"] == summary["counts"]["faces"]
    with Image.open(sim["query_grid"]) as grid:
        assert grid.width > 200 and grid.height > 100
    assert (out / "similarity" / "index" / "CURRENT").exists()
    assert 0.0 <= sim["near_duplicate"]["recall@1"] <= 1.0
