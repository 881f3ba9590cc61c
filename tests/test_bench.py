"""Unit tests of the benchmark modules (report helpers, face matching, the index harness at a tiny
size). The preprocess, embed, training, serve, reliability and GPU dry-run harnesses run end to end in
tests/test_bench_suite.py (``python -m benchmarks.suite --quick``). No timing assertions."""
from __future__ import annotations

import re
from pathlib import Path

from benchmarks import preprocess as bp
from benchmarks.__main__ import main


def test_missing_data_fails_clearly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b.md"
    rc = main(["--images", str(tmp_path / "absent"), "--out", str(out), "--work", str(tmp_path / "w")])
    assert rc != 0 and not out.exists()
    assert "no images at" in capsys.readouterr().err


def test_replace_section_keeps_others() -> None:
    doc = "# B\n\nintro\n\n## A\n\na\n\n## Preprocess\n\nold\n\n## C\n\nc\n"
    new = bp.replace_section(doc, "Preprocess", "## Preprocess\n\nnew\n")
    assert new == "# B\n\nintro\n\n## A\n\na\n\n## Preprocess\n\nnew\n\n## C\n\nc\n"
    assert bp.replace_section("# B\n", "Preprocess", "## Preprocess\n\nx\n") == "# B\n\n## Preprocess\n\nx\n"
    # "## Preprocess tuning" is a different section.
    both = bp.replace_section(new, "Preprocess tuning", "## Preprocess tuning\n\nt\n")
    assert bp.replace_section(both, "Preprocess", "## Preprocess\n\nz\n").count("## Preprocess tuning") == 1


def test_face_matching() -> None:
    ref = [("a.jpg", [0, 0, 10, 10, 0.99]), ("a.jpg", [20, 20, 30, 30, 0.95]), ("b.jpg", [0, 0, 10, 10, 0.99])]
    found = [("a.jpg", [1, 1, 11, 11, 0.9]), ("a.jpg", [0, 0, 9, 9, 0.9]), ("b.jpg", [50, 50, 60, 60, 0.9])]
    # Both 'found' boxes overlap the first reference box only: one-to-one gives one match.
    assert bp.matched(ref, found) == 1
    assert bp.matched(ref, ref) == 3 and bp.matched(ref, []) == 0


def test_median_run_ignores_failures() -> None:
    v = bp.NAIVE
    runs = [bp.Run(v, 0, wall_s=5.0, ok=True), bp.Run(v, 1, wall_s=1.0, ok=False), bp.Run(v, 2, wall_s=3.0, ok=True)]
    assert bp.median_run(runs).wall_s == 3.0
    assert bp.median_run([bp.Run(v, 0, ok=False)]) is None


def test_index_bench_writes_section(tmp_path: Path) -> None:
    """The index harness at a tiny size: its one section replaces the old one (whatever size that
    was run at) with every table row; quality checks only, no timings."""
    from benchmarks import index_compressed
    from benchmarks.index import ivf_variants, main as index_main

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Preprocess\n\nkeep me\n\n## Index (sharded FAISS, 1M x 256)\n\nold numbers\n\n"
                   "## Training\n\nkeep too\n")
    # One faiss thread: on a busy shared machine OpenMP barriers, not the work, dominate a tiny run.
    rc = index_main(["--out", str(out), "--n", "10000", "--dim", "16", "--queries", "50", "--min-time", "0.01",
                     "--threads", "1", "--work", str(tmp_path / "work")])
    assert rc == 0
    text = out.read_text()
    assert "old numbers" not in text and "## Preprocess\n\nkeep me\n" in text and "## Training\n\nkeep too\n" in text
    assert text.count("## Index (sharded FAISS") == 1 and "## Index (sharded FAISS, 10k x 16)\n" in text
    assert "Command: `make bench-index`" in text and re.search(r"faiss \d+\.\d+.*OpenMP threads", text)

    section = text.split("## Index (sharded FAISS, 10k x 16)")[1].split("\n## ")[0]
    tables = [[[c.strip() for c in ln.strip("|").split("|")] for ln in block.splitlines()[2:]]
              for block in section.split("\n\n") if block.startswith("| ")]
    exact, ivf, compressed, reindex = tables[:4]
    assert [(r[0], r[1]) for r in exact] == [("Flat", "1"), ("Flat", "4")]
    assert all(float(r[4]) >= 0.99 for r in exact)  # the Flat index is exact
    expected = [(f, str(s), str(p)) for f, sweep, shards in ivf_variants(10000, 16) for s in shards for p in sweep]
    assert [(r[0], r[1], r[2]) for r in ivf] == expected
    assert all(0.0 <= float(r[5]) <= 1.0 and r[9] in ("yes", "no") for r in ivf)
    assert [r[0] for r in reindex] == ["Flat", *[v[0] for v in ivf_variants(10000, 16)[1:]], "IVF512,PQ8x4fs,RFlat"]
    # every compressed type, each refine store it is read with; re-ranking lifts recall over plain PQ
    assert sorted({(r[0], r[1]) for r in compressed}) == sorted(
        (f, s) for f, stores in index_compressed.variants(512, 16) for s in stores)
    tuned = {r[0]: float(r[8]) for r in compressed if r[3].endswith("(tuned)")}
    assert tuned["IVF512,PQ8x4fs,RFlat"] > tuned["IVF512,PQ4x4fs"]
    assert all(r[13] in ("yes", "no") for r in compressed) and "**2b. Compressed indexes**" in section
    # Flat: the update's delta segments give the rebuild's neighbours; every type: compaction changes nothing
    assert reindex[0][5] == "4/4" and float(reindex[0][10]) >= 0.99
    assert all(r[11] == "100.0%" for r in reindex)
    assert "Goal recall@10 >= 0.95" in section and "Goal update <= 5%" in section
    assert "No GPU was available" in section or len(tables) == 5
