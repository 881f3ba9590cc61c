"""The benchmark suite (``python -m benchmarks.suite``): the whole harness once at ``--quick``
sizes (every benchmark's section and summary row; no timing assertions: numbers come from
``make bench`` only), plus unit tests of the summary merge and of failure recording."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from benchmarks import rows as R
from benchmarks import suite

SECTIONS = ("## Preprocess\n", "## Embed (Ray Data vs DataLoader)\n", "## Index (sharded FAISS, 10k x 16)\n",
            "## Training scaling (Ray Train, 1 vs 2 workers)\n", "## Web search latency (2k x 256)\n",
            "## Reliability (S3 faults)\n", "## GPU stages\n")
RAN = ("preprocess", "embed", "index", "train", "serve", "reliability", "gpu")


@pytest.fixture(scope="module")
def quick_suite(ray_session, tmp_path_factory):
    """One ``--quick`` run of every benchmark into a doc that already has an unrelated section."""
    tmp = tmp_path_factory.mktemp("suite")
    out = tmp / "benchmarks.md"
    out.write_text("# Benchmarks\n\nintro\n\n## Other\n\nkept\n")
    t0 = time.perf_counter()
    rc = suite.main(["--quick", "--out", str(out), "--work", str(tmp / "work")])
    print(f"quick suite: {time.perf_counter() - t0:.0f} s")
    return rc, out.read_text()


@pytest.mark.slow
def test_quick_suite_writes_every_section_and_summary(quick_suite):
    rc, text = quick_suite
    assert rc == 0, text.split("## Summary")[1][:3000]
    assert "## Other\n\nkept\n" in text and text.startswith("# Benchmarks\n\nintro\n\n## Summary\n")
    for title in SECTIONS:
        assert text.count(title) == 1, title
    summary = R.parse_rows(text)
    by_bench = {b: [r for r in summary if r["benchmark"] == b] for b in suite.BENCHMARKS}
    for b in RAN:
        assert by_bench[b], b
        for r in by_bench[b]:
            assert re.fullmatch(r"[0-9.e+-]+x", r["ratio"]), r  # a number, measured in this run
            assert r["met?"] in ("yes", "**no**", "–") and re.match(r"\d{4}-\d\d-\d\d", r["run date"])
    assert len(by_bench["preprocess"]) == 2 and len(by_bench["embed"]) == 2 and len(by_bench["index"]) == 2
    for b in ("similarity", "classifier"):
        assert [r["comparison"].split(":")[0] for r in by_bench[b]] == ["skipped in --quick"]
    assert "Total wall time:" in text and "Quick smoke run" in text and "Commit:" in text
    # The harness details the old per-module tests checked: preprocess variants, vectors, GPU dry run.
    pre = text.split("## Preprocess\n")[1].split("\n## ")[0]
    assert len(re.findall(r"^\| (naive loop|Ray pipeline)", pre, re.M)) >= 3 and "6 (1 quarantined)" in pre
    assert re.search(r"max abs difference \d\.\d\de[+-]\d\d", text)
    assert "**Dry run**" in text.split("## GPU stages")[1]


def _row(bench: str, comp: str, date: str) -> dict[str, str]:
    return R.row(bench, comp, "2 img/s", "1 img/s", 2.0, "≥ 1x", True, date)


def test_merge_keeps_rows_of_benchmarks_not_run(tmp_path: Path):
    out = tmp_path / "b.md"
    out.write_text("# Benchmarks\n\nintro\n\n## Preprocess\n\np\n")
    meta = {"date": "d", "machine": "m", "command": "c", "commit": "x", "wall": "1 min", "quick": "False"}
    suite.write_summary(out, [_row("index", "a", "2020-01-01"), _row("embed", "b", "2020-01-01")],
                        ["index", "embed"], meta)
    suite.write_summary(out, [_row("embed", "new", "2021-01-01")], ["embed"], meta)
    text = out.read_text()
    assert text.count("## Summary") == 1 and text.index("## Summary") < text.index("## Preprocess")
    rows = R.parse_rows(text)
    got = [(r["benchmark"], r["comparison"], r["run date"]) for r in rows if r["run date"] != "–"]
    # embed's old row is replaced; index (not run this time) keeps its older row; suite order.
    assert got == [("embed", "new", "2021-01-01"), ("index", "a", "2020-01-01")]
    # Benchmarks without any row say that they were not run.
    assert sorted(r["benchmark"] for r in rows if r["run date"] == "–") == sorted(
        set(suite.BENCHMARKS) - {"embed", "index"})
    assert all(r["comparison"].startswith("not run by this command") for r in rows if r["run date"] == "–")
    assert R.merge([], [_row("gpu", "g", "d"), _row("preprocess", "p", "d")], ["gpu", "preprocess"],
                   list(suite.BENCHMARKS))[0]["benchmark"] == "preprocess"


def test_failure_is_recorded_and_others_still_run(tmp_path: Path, monkeypatch, capsys):
    def boom(quick, out, work):
        raise RuntimeError("disk on fire\nsecond line")

    def fine(quick, out, work):
        Path(out).write_text(Path(out).read_text() + "\n## Fine\n\nok\n")
        return 0, {"samples_s_1": 1.0, "samples_s_2": 1.5, "ratio": 1.5, "started": "2022-02-02 00:00 UTC"}

    monkeypatch.setitem(suite.BENCHMARKS, "embed", (boom, R.embed))
    monkeypatch.setitem(suite.BENCHMARKS, "train", (fine, R.train))
    monkeypatch.setitem(suite.BENCHMARKS, "serve", (lambda q, o, w: (3, {}), R.serve))
    out = tmp_path / "b.md"
    out.write_text("# Benchmarks\n")
    assert suite.main(["--only", "embed,train,serve", "--out", str(out), "--work", str(tmp_path / "w")]) == 1
    rows = {r["benchmark"]: r for r in R.parse_rows(out.read_text())}
    assert rows["embed"]["met?"] == "FAILED" and "RuntimeError: disk on fire" in rows["embed"]["comparison"]
    assert rows["serve"]["met?"] == "FAILED" and "exit code 3" in rows["serve"]["comparison"]
    assert rows["train"]["ratio"] == "1.5x" and rows["train"]["run date"] == "2022-02-02 00:00 UTC"
    assert "## Fine\n\nok" in out.read_text()
    assert "embed: FAILED" in capsys.readouterr().err


def test_unknown_benchmark_is_refused():
    with pytest.raises(SystemExit, match="unknown benchmark"):
        suite.main(["--only", "nope", "--quick"])


def test_index_row_has_a_ratio_even_when_no_ivf_reaches_the_recall():
    meta = {"goal_recall": 0.95, "goal_speedup": 20.0, "goal_reindex": 0.05, "started": "2023-03-03 00:00 UTC"}
    ivf = [{"factory": "IVF64,Flat", "shards": 1, "nprobe": n, "recall": rec, "qps": q, "speedup": q / 100.0}
           for n, rec, q in ((1, 0.5, 5000.0), (8, 0.9, 1500.0))]
    res = {"exact": [{"qps_all": 100.0}], "ivf": ivf, "reindex": [{"factory": "Flat", "update_s": 1.0, "rebuild_s": 4.0}]}
    top, reindex = R.index({"res": res, "meta": meta}, "d")
    assert top["ratio"] == "15x" and top["met?"] == "**no**" and "nprobe 8" in top["comparison"]
    assert reindex["ratio"] == "0.25x" and reindex["run date"] == "2023-03-03 00:00 UTC"
    ivf[1]["recall"] = 0.97
    assert R.index({"res": res, "meta": meta}, "d")[0]["met?"] == "**no**"  # 15x < 20x
    ivf[0].update(recall=0.99)
    assert R.index({"res": res, "meta": meta}, "d")[0]["met?"] == "yes"  # 50x at recall 0.99


def test_classifier_and_similarity_rows_pair_each_model_with_its_baseline():
    def task(x):
        return {"style": {"balanced_accuracy": x}}

    res = {"results": {"pretrained": task(0.76), "probe": task(0.68), "scratch": task(0.37), "baseline": task(0.31)},
           "started": "2026-12-02 05:00 UTC"}
    rows = R.classifier(res, "d")
    assert [(r["measured"], r["baseline"], r["met?"]) for r in rows] == [("0.760", "0.680", "yes"),
                                                                       ("0.370", "0.310", "**no**")]
    assert "linear probe" in rows[0]["comparison"] and rows[0]["run date"] == "2026-12-02 05:00 UTC"
    # Only the rows a run measured (--rows): a lone from-scratch run still pairs with its baseline.
    assert len(R.classifier({"results": {"scratch": task(0.4), "baseline": task(0.3)}}, "d")) == 1
    # Similarity: the last naive row (ImageNet features) is the baseline; goals 0.95 plain, 0.99 verified.
    nga = {"rows": {"naive: untrained resnet18 + cosine": {"recall@1": 0.3},
                    "naive: ImageNet MobileNetV2 features + cosine": {"recall@1": 0.8},
                    "supcon fine-tuned from ImageNet MobileNetV2": {"recall@1": 0.96},
                    "supcon fine-tuned from ImageNet MobileNetV2 + geometric verification of its top 10":
                        {"recall@1": 0.98}}}
    wa = {"rows": {"naive: ImageNet MobileNetV2 features + cosine": {"map@r": 0.5},
                   "supcon fine-tuned from ImageNet MobileNetV2": {"map@r": 0.6}}}
    sim = R.similarity({"nga": nga, "wikiart": wa}, "d")
    assert [(r["baseline"], r["goal"], r["met?"]) for r in sim] == [
        ("0.800", "recall@1 ≥ 0.95", "yes"), ("0.800", "recall@1 ≥ 0.99", "**no**"), ("0.500", "none set", "–")]
