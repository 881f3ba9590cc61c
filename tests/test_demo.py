"""``artextract demo`` end to end, offline: preprocess + tiny classifier report + tiny face similarity."""
from __future__ import annotations

import collections
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
    assert sim["near_duplicate"]["verified_recall@1"] >= sim["near_duplicate"]["recall@1"]
    assert sim["near_duplicate"]["baseline_recall@1"] is not None


@pytest.mark.slow
def test_demo_console_is_for_people(demo_full):
    """What a newcomer sees: our progress bars and summary, no traceback, no Ray internals, no line
    repeated more than 3 times (a progress bar redraws with '\\r' on one line)."""
    _, printed = demo_full
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in printed.splitlines()]
    lines = [ln for ln in lines if ln]
    assert "Traceback" not in printed
    for noise in ("PlacementGroupCleaner", "Token authentication", "core_worker.cc", "UserWarning",
                  "faiss.loader", "logging_progress", "streaming_executor"):
        assert noise not in printed, noise
    counts = collections.Counter(lines)
    assert max(counts.values()) <= 3, counts.most_common(3)
    assert len(lines) < 60, "\n".join(lines)
    for stage in ("preprocess:", "train classifier:", "train similarity:", "embed:"):
        assert stage in printed  # one progress line per stage
    assert "embedding + SIFT/RANSAC verification" in printed and "untrained" in printed
