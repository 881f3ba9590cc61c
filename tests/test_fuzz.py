"""Fuzz (issue 7 item 4): 200 generated broken and odd inputs. Decode alone must turn every one into
a Decoded or a Quarantine with a known reason; the whole ingest + preprocess job must finish,
account for every input, and put each kind in the outcome class it belongs to."""
from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from artextract.core import storage
from fixtures import fuzz
from artextract.cli import main
from artextract.config import DecodeConfig
from artextract.stages.decode import REASONS, Decoded, Quarantine, configure_pil, decode

N = 200


@pytest.fixture(scope="module")
def corpus() -> list[fuzz.Item]:
    return fuzz.generate(N, seed=0)


def _marker_upright(rgb: np.ndarray) -> bool:
    """The upright picture's top-left quadrant is MARKER_RGB; no other quadrant is."""
    h, w = rgb.shape[:2]
    quads = [rgb[: h // 2, : w // 2], rgb[: h // 2, w - w // 2:], rgb[h - h // 2:, : w // 2], rgb[h - h // 2:, w - w // 2:]]
    near = [float(np.abs(q[2:-2, 2:-2].reshape(-1, 3).mean(0) - fuzz.MARKER_RGB).max()) < 30 for q in quads]
    return near == [True, False, False, False]


def _check_outcome(kind: str, outcome: str) -> None:
    allowed = fuzz.EXPECTED[kind]
    assert outcome == "ok" or outcome in REASONS, (kind, outcome)
    assert allowed is None or outcome in allowed, f"{kind}: got {outcome!r}, expected one of {sorted(allowed)}"


def test_corpus_is_deterministic_and_covers_every_kind(corpus):
    assert len(corpus) == N
    assert corpus == fuzz.generate(N, seed=0)
    assert fuzz.generate(N, seed=1) != corpus
    assert fuzz.generate(30, seed=0) == corpus[:30]  # item i does not depend on n
    assert len({name for name, _, _ in corpus}) == N
    assert {kind for _, _, kind in corpus} == set(fuzz.KINDS)
    assert all(fuzz.kind_of(name) == kind for name, _, kind in corpus)
    by_kind = {kind: data for _, data, kind in corpus}
    assert by_kind["zero_size"] == b""
    assert by_kind["png_named_jpg"].startswith(b"\x89PNG") and by_kind["jpeg_named_png"].startswith(b"\xff\xd8")


def test_decode_never_raises_anything_but_quarantine(corpus):
    cfg = DecodeConfig()
    configure_pil(cfg)
    table: dict[str, Counter] = defaultdict(Counter)
    for name, data, kind in corpus:
        try:
            d = decode(data, cfg)
        except Quarantine as q:
            assert q.reason in REASONS and REASONS[q.reason], name
            outcome = q.reason
        else:
            assert isinstance(d, Decoded) and d.det_image.dtype == np.uint8 and d.det_image.ndim == 3
            assert d.det_image.shape[2] == 3 and min(d.det_image.shape[:2]) >= 1
            outcome = "ok"
            if kind == "exif_rotated":
                assert _marker_upright(d.det_image), name
            if kind in ("animated_gif", "animated_png"):
                assert d.n_frames >= 2, name
            if kind == "gray16_png":
                assert d.orig_mode.startswith("I;16"), (name, d.orig_mode)
            if kind == "cmyk_jpeg":
                assert d.orig_mode == "CMYK", name
            if kind == "rgba_png":  # transparent corners are composited over white, not black
                assert d.det_image[0, 0].min() > 240, (name, d.det_image[0, 0])
        table[kind][outcome] += 1
        _check_outcome(kind, outcome)
    print("\n" + "\n".join(f"{k:24s} {dict(c)}" for k, c in sorted(table.items())))
    assert set(table) == set(fuzz.KINDS)
    outcomes = Counter(o for c in table.values() for o in c.elements())
    assert outcomes["ok"] > 60 and sum(outcomes.values()) == N
    # The corpus reaches most of the quarantine reasons decode can give, not just one or two.
    assert {"empty", "not_an_image", "truncated", "decode_error", "decompression_bomb", "too_small",
            "extreme_aspect"} <= set(outcomes)


def test_tiff_with_corrupt_second_page_is_quarantined_not_raised():
    """Regression: PIL raised TypeError('Missing dimensions') from ``n_frames`` on this file, which
    escaped decode() and would have failed a whole Ray batch."""
    data = next(d for _, d, k in fuzz.generate(len(fuzz.KINDS)) if k == "tiff_broken_second_page")
    assert Image.open(io.BytesIO(data)).size[0] > 0  # the first page opens fine
    with pytest.raises(TypeError):
        Image.open(io.BytesIO(data)).n_frames  # noqa: B018 - PIL itself still raises
    with pytest.raises(Quarantine) as q:
        decode(data, DecodeConfig())
    assert q.value.reason == "decode_error" and "TypeError" in q.value.detail


@pytest.mark.slow
def test_fuzz_corpus_end_to_end(corpus, tmp_path, ray_session):
    images_dir = tmp_path / "fuzz"
    written = fuzz.write_tree(images_dir, corpus)
    assert len(written) == N and len(list(images_dir.iterdir())) == N
    man, pre = tmp_path / "manifest", tmp_path / "pre"
    assert main(["ingest", "folder", "--images", str(images_dir), "--out", str(man), "include_all_files=true"]) == 0
    assert main(["preprocess", "--manifest", str(man), "--out", str(pre), "shard_rows=50"]) == 0

    c = json.loads((pre / "summary.json").read_text())["counts"]
    assert c["images_rows"] == c["manifest_rows"] == N
    assert c["processed"] + c["quarantined"] == N and c["shards"] == 4

    images = storage.read_parquet(str(pre / "images")).to_pylist()
    quarantine = storage.read_parquet(str(pre / "quarantine")).to_pylist()
    assert len(images) == N and {r["relpath"] for r in images} == set(written)
    assert all(q["reason"] in REASONS and q["uri"] for q in quarantine)
    assert Counter(q["reason"] for q in quarantine) == Counter(
        r["reason"] for r in images if r["status"] == "quarantined") == Counter(c["quarantine_reasons"])
    table: dict[str, Counter] = defaultdict(Counter)
    for row in images:
        kind = written[row["relpath"]]
        outcome = "ok" if row["status"] == "ok" else row["reason"]
        assert (row["status"] == "ok") == (row["reason"] == ""), row["relpath"]
        _check_outcome(kind, outcome)
        table[kind][outcome] += 1
        if kind == "exif_rotated":  # the stored whole image is upright, whatever the orientation tag
            whole = np.asarray(Image.open(io.BytesIO(row["whole_jpeg"])).convert("RGB"))
            assert _marker_upright(whole), row["relpath"]
        if kind in ("animated_gif", "animated_png"):
            assert row["n_frames"] >= 2, row["relpath"]
    assert set(table) == set(fuzz.KINDS)
