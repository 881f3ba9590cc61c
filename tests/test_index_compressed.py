"""Compressed indexes (issue 22): OPQ, PQ fast-scan and a re-ranking stage through build, tuning,
delta segments, tombstones, compaction, the refine store on disk, the Ray shard actors and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from artextract.index import build as B
from artextract.index import refine as R
from artextract.index import versions as V
from artextract.index import IndexReader, build_index, exact_search, update_index

from test_index import D, keys_of, make_table

FACTORIES = ["IVF16,PQ8x4fs", "OPQ8,IVF16,PQ8", "IVF16,SQ8", "IVF16,PQ8x4fs,RFlat", "OPQ8,IVF16,PQ16x4fs,Refine(SQfp16)",
             "PQ8,RFlat"]


@pytest.fixture(scope="module")
def data() -> pa.Table:
    return make_table(3000, clusters=40)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    q = np.random.default_rng(7).normal(size=(25, D)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_keys(table: pa.Table, q: np.ndarray, k: int) -> list[list[tuple[str, int]]]:
    _, pos = exact_search(V.vectors_of(table), q, k, backend="faiss")
    keys = keys_of(table)
    return [[keys[p] for p in row] for row in pos]


def recall(got: list[list], want: list[list]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))


def test_split_factory_and_effective_factory():
    assert R.split_factory("OPQ64,IVF4096,PQ64x4fs,RFlat") == ("OPQ64,IVF4096,PQ64x4fs", "Flat")
    assert R.split_factory("IVF64,PQ8,Refine(SQ8)") == ("IVF64,PQ8", "SQ8")
    assert R.split_factory("IVF64,Flat") == ("IVF64,Flat", None)
    assert B.effective_factory("PQ8,RFlat") == "IDMap2,PQ8,RFlat"
    assert B.effective_factory("IVF8,PQ4,Refine(SQfp16)") == "IVF8,PQ4,Refine(SQfp16)"
    # the size-based default: compressed with exact re-ranking only from compress_threshold on
    assert B.choose_factory(1_000_000) == "IVF4000,Flat"
    assert B.choose_factory(25_000_000, dim=256) == "IVF20000,PQ128x4fs,RFlat"
    with pytest.raises(ValueError, match="flat-codes"):
        R.train_codec("IVF4,Flat", D, 0, np.zeros((10, D), np.float32))


@pytest.mark.parametrize("factory", FACTORIES)
def test_compressed_types_build_tune_update_compact(tmp_path, data, queries, factory):
    """Every supported type: tuned nprobe/k_factor recorded; base + delta + tombstones search exactly
    like the compacted shard; refine codes on disk give the very same results as in memory."""
    a, b = data.slice(0, 2400), data.slice(2400, 600)
    uris = {mode: str(tmp_path / mode) for mode in ("delta", "compact")}
    moved = a.slice(0, 5)
    moved = moved.set_column(2, "vector", pa.FixedSizeListArray.from_arrays(pa.array((-V.vectors_of(moved)).ravel()), D))
    for mode, uri in uris.items():
        m = build_index(a, uri, shards=2, factory=factory, keep=1, train_size=2400, target_recall=0.9)
        assert m["factory"] == B.effective_factory(factory)
        refined = R.split_factory(factory)[1] is not None
        assert ("refine" in m) == refined and all(("refine" in e) == refined for e in m["shards"])
        if "IVF" in factory:
            chosen = m["tuning"]["chosen"]
            assert m["nprobe"] == chosen["nprobe"] and m["tuning"]["points"]
            assert (m["refine"]["k_factor"] == chosen["k_factor"]) if refined else chosen["k_factor"] == 1
        update_index(uri, add_embeddings=pa.concat_tables([b.slice(0, 300), moved]),
                     remove_keys=keys_of(a)[10:60], keep=1, compact_ratio=10.0 if mode == "delta" else 0.0)
        m = update_index(uri, add_embeddings=b.slice(300, 300), remove_keys=keys_of(b)[:40] + keys_of(a)[60:70],
                         keep=1, compact_ratio=10.0 if mode == "delta" else 0.0)
    assert all(e.get("delta") and e.get("tombstones") for e in V.read_manifest(uris["delta"])["shards"])
    assert not any(e.get("delta") for e in V.read_manifest(uris["compact"])["shards"])
    r_d, r_c = IndexReader(uris["delta"]), IndexReader(uris["compact"])
    assert r_d.ntotal == r_c.ntotal == m["total"] == 2400 + 300 + 300 - 50 - 40 - 10
    for nprobe in (2, 16):
        s_d, k_d = r_d.search(queries, 10, nprobe)
        s_c, k_c = r_c.search(queries, 10, nprobe)
        assert k_d == k_c
        np.testing.assert_allclose(s_d, s_c, rtol=1e-5, atol=1e-5)
    live = pa.concat_tables([a.slice(70), moved, b.slice(40)])
    got = r_d.search(queries, 10, 16, 32)[1]  # the tuning aimed at collection rows; these are off-manifold
    floor = 0.9 if R.split_factory(factory)[1] == "Flat" else 0.1  # 4-bit PQ of 32 dims alone is coarse; chance: 0.003
    assert recall(got, exact_keys(live, queries, 10)) >= floor
    if R.split_factory(factory)[1] == "Flat":  # upserted rows reconstruct exactly from the refine codes
        np.testing.assert_array_equal(r_d.reconstruct(keys_of(moved)), V.vectors_of(moved))
        assert V.read_manifest(uris["delta"])["refine"]["store"] == "disk"  # the default
        mem = IndexReader(uris["delta"], store="memory")
        s_mem, k_mem = mem.search(queries, 10, 16, 32)
        assert k_mem == got and np.array_equal(s_mem, r_d.search(queries, 10, 16, 32)[0])
        assert all(s.refine.nbytes_in_memory == 0 for s in r_d.searchers)
        assert all(s.refine.nbytes_in_memory > 0 for s in mem.searchers)


def test_refine_raises_recall_and_k_factor_is_a_search_option(tmp_path, data, queries):
    plain, refined = str(tmp_path / "pq"), str(tmp_path / "pqr")
    build_index(data, plain, shards=2, factory="IVF16,PQ8x4fs", nprobe=16)
    m = build_index(data, refined, shards=2, factory="IVF16,PQ8x4fs,RFlat", nprobe=16, k_factor=16)
    assert m["refine"]["k_factor"] == 16 and "tuning" not in m
    want = exact_keys(data, queries, 10)
    r_plain = recall(IndexReader(plain).search(queries, 10)[1], want)
    reader = IndexReader(refined)
    r_ref = recall(reader.search(queries, 10)[1], want)
    r_k1 = recall(reader.search(queries, 10, k_factor=1)[1], want)
    assert r_ref >= 0.95 > r_plain and r_k1 < r_ref
    # re-ranked scores are the exact inner products of the returned vectors
    scores, keys = reader.search(queries[:3], 5)
    vec = reader.reconstruct([k for row in keys for k in row]).reshape(3, 5, D)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries[:3], vec), atol=1e-6)


def test_ray_shard_actors_serve_compressed_index(tmp_path, ray_session, data, queries):
    from artextract.index.ray_search import RayIndexReader

    uri = str(tmp_path / "idx")
    build_index(data, uri, shards=3, factory="IVF16,PQ8x4fs,RFlat", refine_store="disk", target_recall=0.9)
    update_index(uri, add_embeddings=make_table(100, seed=3, start=90_000), remove_keys=keys_of(data)[:30])
    local = IndexReader(uri)
    with RayIndexReader(uri) as remote:
        assert all(r["memory"] > 0 for r in remote.resources)
        a, b = local.search(queries, 10), remote.search(queries, 10)
        assert a[1] == b[1] and np.array_equal(a[0], b[0])
        assert remote.stats == {"queries": len(queries), "retried": 0, "failed": 0}


def test_cli_builds_and_searches_compressed(tmp_path, data, queries):
    from artextract.cli import main
    from test_index import write_embeddings

    emb = write_embeddings(data, str(tmp_path / "emb"))
    idx = str(tmp_path / "idx")
    assert main(["index", "build", "--embeddings", emb, "--out", idx, "--factory", "IVF16,PQ8x4fs,RFlat",
                 "refine_store=disk", "target_recall=0.9"]) == 0
    m = V.read_manifest(idx)
    assert m["refine"]["store"] == "disk" and m["recall_at_10"] >= 0.9
    summary = json.loads((tmp_path / "idx" / "summary.json").read_text())["counts"]
    assert summary["k_factor"] == m["refine"]["k_factor"] and summary["nprobe"] == m["nprobe"]
    np.save(tmp_path / "q.npy", queries[:2])
    out = tmp_path / "res"
    assert main(["search", "--index", idx, "--vector", str(tmp_path / "q.npy"), "--out", str(out), "k_factor=4"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["k_factor"] == 4 and len(res["results"][0]["hits"]) == 10


def test_ray_shard_actor_too_big_for_any_node_fails_bounded(tmp_path, ray_session, data):
    from artextract.index.ray_search import RayIndexReader

    uri = str(tmp_path / "idx")
    build_index(data.slice(0, 500), uri, shards=2, factory="Flat")
    with pytest.raises(RuntimeError, match="not placed within 3 s.*node memory GiB"):
        RayIndexReader(uri, memory_factor=1e9, place_timeout_s=3)


def test_s3_index_with_codes_on_disk_uses_a_local_cached_copy(tmp_path, s3_bucket, s3_storage, data, queries):
    """A remote index with refine_store=disk: each segment's codes are copied once into refine_cache
    (named by sha256, checked) and memory-mapped; results equal the same build read locally."""
    a, b = data.slice(0, 2000), data.slice(2000, 200)
    remote, local = f"s3://{s3_bucket}/idx", str(tmp_path / "local")
    for uri, cfg in ((remote, s3_storage), (local, None)):
        build_index(a, uri, shards=2, factory="IVF16,PQ8x4fs,RFlat", nprobe=8, k_factor=8, storage_cfg=cfg)
        update_index(uri, add_embeddings=b, remove_keys=keys_of(a)[:20], storage_cfg=cfg, compact_ratio=10.0)
    cache = tmp_path / "cache"
    r = IndexReader(remote, s3_storage, cache_dir=str(cache))
    m = r.manifest
    want = {e["refine"]["sha256"] for e in m["shards"]} | {e["delta"]["refine"]["sha256"] for e in m["shards"]}
    assert {p.stem for p in cache.glob("*.npy")} == want and not list(cache.glob("*.tmp"))
    assert all(s.refine.nbytes_in_memory == 0 for s in r.searchers)
    got, ref = r.search(queries, 10), IndexReader(local).search(queries, 10)
    assert got[1] == ref[1] and np.array_equal(got[0], ref[0])
    # a second reader finds the copies in place (nothing downloaded: the cache files are not rewritten)
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    IndexReader(remote, s3_storage, cache_dir=str(cache))
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == stamps


def test_fast_scan_conversion_frees_the_4bit_copy():
    """The shard keeps one copy of its codes: nothing inside the fast-scan index keeps the loaded 4-bit
    index alive (faiss's Python constructor records its argument), so it is freed once the loader lets go
    of it, and the fast-scan index, which now owns the coarse quantizer, still searches."""
    import gc
    import weakref

    import faiss

    from artextract.index.fastscan import to_fast_scan

    x = np.random.default_rng(0).normal(size=(2000, D)).astype(np.float32)
    four_bit = faiss.index_factory(D, "IVF8,PQ8x4np")
    four_bit.train(x)
    four_bit.add(x)
    gone = weakref.ref(four_bit)
    fs = to_fast_scan(four_bit)
    del four_bit
    gc.collect()
    assert gone() is None and fs.ntotal == 2000
    fs.nprobe = 8
    assert (fs.search(x[:5], 1)[1][:, 0] == np.arange(5)).mean() >= 0.6


def test_tuning_sweeps_only_what_is_not_fixed(tmp_path, data):
    m = build_index(data, str(tmp_path / "a"), shards=2, factory="IVF16,PQ8x4fs,RFlat", nprobe=4, target_recall=0.9)
    assert m["nprobe"] == 4 and {p["nprobe"] for p in m["tuning"]["points"]} == {4}
    assert m["refine"]["k_factor"] == m["tuning"]["chosen"]["k_factor"]
    # no IVF lists: the re-ranking depth is still tuned (k_factor 1 would only reorder the top k)
    m = build_index(data, str(tmp_path / "b"), shards=2, factory="PQ4x4fs,RFlat", target_recall=0.9)
    assert {p["nprobe"] for p in m["tuning"]["points"]} == {None} and m["refine"]["k_factor"] > 1
    assert m["recall_at_10"] >= 0.9
