"""The preprocess benchmark harness (``python -m artextract.bench``): exercised end to end on a few
generated images with ``--quick``. No timing assertions: numbers come from ``make bench`` only."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from artextract.bench import preprocess as bp
from artextract.bench.__main__ import main


def _table_rows(text: str, first_header: str) -> list[list[str]]:
    """Rows (cells) of the markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} "))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_quick_bench_writes_tables(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Preprocess\n\nold numbers\n\n## Training\n\nkeep me\n")
    rc = main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")])
    assert rc == 0
    text = out.read_text()
    assert "old numbers" not in text and "## Training\n\nkeep me" in text
    assert text.count("## Preprocess\n") == 1 and "Quick smoke run" in text
    assert re.search(r"Machine: \d+ logical .* cores, .+ RAM", text)
    assert "Versions: python 3.11" in text and "ray " in text and "torch " in text

    rows = _table_rows(text, "variant")
    assert [r[0].split(",")[0].split(" (")[0] for r in rows] == ["naive loop", "Ray pipeline", "Ray pipeline"]
    naive, local, s3 = rows
    # 6 sample images; the truncated JPEG is skipped by the loop and quarantined by the pipeline.
    assert naive[7] == "6 (1 skipped)"
    assert local[7] == s3[7] == "6 (1 quarantined)"
    for row in rows:
        median, best, ips = float(row[1]), float(row[2]), float(row[4])
        assert median > 0 and best > 0 and ips > 0 and best <= median
        assert re.fullmatch(r"\d+\.\d \((\d+\.\d\d?|–)\)", row[3])  # one run: "wall (load)"
        assert row[5].endswith("x") and row[6].endswith("x")  # speedups vs naive are numbers
    # astronaut (1) + double portrait (2) at least; the landscape and the coffee cup have none.
    faces = [int(r[8]) for r in rows]
    assert 3 <= faces[0] <= 6 and all(3 <= f <= 8 for f in faces[1:])
    assert faces[1] == faces[2]  # same images, same config: local and S3 find the same faces
    # Every face the naive loop keeps is found by the pipeline too.
    for row in rows:
        hit, total = re.match(r"(\d+)/(\d+)", row[10]).groups()
        assert int(total) == faces[0] and int(hit) == int(total)
    assert re.search(r"S3 over HTTP vs local dir: \*\*\d+\.\d+x\*\*", text)

    timings = _table_rows(text, "variant | wall s |")
    assert len(timings) == 3

    # runs.json holds every run: --render rewrites the same report without rerunning.
    again = tmp_path / "again.md"
    assert main(["--render", str(tmp_path / "work" / "runs.json"), "--out", str(again)]) == 0
    assert _table_rows(again.read_text(), "variant") == rows


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
    from artextract.bench.index import ivf_variants, main as index_main

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
    exact, ivf, reindex = tables[:3]
    assert [(r[0], r[1]) for r in exact] == [("Flat", "1"), ("Flat", "4")]
    assert all(float(r[4]) >= 0.99 for r in exact)  # the Flat index is exact
    expected = [(f, str(s), str(p)) for f, sweep, shards in ivf_variants(10000, 16) for s in shards for p in sweep]
    assert [(r[0], r[1], r[2]) for r in ivf] == expected
    assert all(0.0 <= float(r[5]) <= 1.0 and r[9] in ("yes", "no") for r in ivf)
    assert [r[0] for r in reindex] == ["Flat", *[v[0] for v in ivf_variants(10000, 16)[1:]]]
    assert reindex[0][5] == "4/4" and float(reindex[0][7]) >= 0.99  # Flat: same neighbours after update
    assert "Goal recall@10 >= 0.95" in section and "Goal update <= 5%" in section
    assert "No GPU was available" in section or len(tables) == 4


def test_gpu_stage_script_dry_run(tmp_path):
    """The GPU stage benchmark end to end at toy sizes on the CPU (no timing assertions)."""
    from artextract.bench import gpu

    out, raw = tmp_path / "bench.md", tmp_path / "gpu.json"
    out.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert gpu.main(["--dry-run", "--out", str(out), "--json", str(raw)]) == 0
    text = out.read_text()
    assert "## Other\n\nkept" in text and "## GPU stages" in text and "**Dry run**" in text
    results = json.loads(raw.read_text())["results"]
    assert [r["stage"].split(" ")[0] for r in results] == ["MTCNN", "embedding", "exact", "DDP"]
    assert all("error" not in r for r in results)
    assert results[0]["faces_in_first_batch"] >= 1  # the portraits really went through MTCNN
    for key in ("img_s_excl_decode", "img_s_incl_decode"):
        assert results[0][key] > 0 and results[1][key] > 0
