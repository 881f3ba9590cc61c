"""Sharded FAISS index on synthetic clustered vectors: build, search, update, publish, lock, S3, Ray."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pytest

from artextract.core import storage
from artextract.index import build as B
from artextract.index import lock as L
from artextract.index import versions as V
from artextract.index.segments import homes
from artextract.index import (ChecksumError, IndexReader, LockError, build_index, exact_search,
                              rollback, torch_exact_search, update_index)

D = 32


def make_table(n: int, seed: int = 0, start: int = 0, clusters: int = 20) -> pa.Table:
    """n L2-normalised vectors around ``clusters`` gaussian centres, keys img{start+i}/face."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(clusters, D)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"img{start + i:06d}" for i in range(n)]
    faces = [((start + i) % 3) - 1 for i in range(n)]
    return pa.table({"image_id": pa.array(ids, pa.string()), "face_idx": pa.array(faces, pa.int16()),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), D),
                     "model_version": pa.array(["clip-test@1"] * n, pa.string())})


def write_embeddings(table: pa.Table, uri: str, cfg=None, parts: int = 3) -> str:
    step = -(-len(table) // parts)
    for i in range(parts):
        storage.write_parquet(storage.join(uri, f"part-{i:05d}.parquet"), table.slice(i * step, step), cfg)
    return uri


def keys_of(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table["image_id"].to_pylist(), table["face_idx"].to_pylist()))


def reference(table: pa.Table, queries: np.ndarray, k: int):
    """Exact unsharded top-k as keys and scores."""
    scores, pos = exact_search(V.vectors_of(table), queries, k, backend="faiss")
    keys = keys_of(table)
    return scores, [[keys[p] for p in row] for row in pos]


@pytest.fixture(scope="module")
def data() -> pa.Table:
    return make_table(3000)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    q = V.vectors_of(make_table(50, seed=7))
    return q


def test_sharded_exact_matches_unsharded(tmp_path, data, queries):
    emb = write_embeddings(data, str(tmp_path / "emb"))
    m = build_index(emb, str(tmp_path / "idx"), shards=4)
    assert m["factory"] == "IDMap2,Flat" and m["num_shards"] == 4 and m["total"] == len(data)
    assert sum(m["counts"]) == len(data) and min(m["counts"]) > 0
    assert m["recall_at_10"] == 1.0 and m["model_versions"] == ["clip-test@1"] and m["dim"] == D
    scores, keys = IndexReader(str(tmp_path / "idx")).search(queries, 10)
    ref_scores, ref_keys = reference(data, queries, 10)
    assert keys == ref_keys
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_ivf_recall_recorded(tmp_path, data, queries):
    m = build_index(data, str(tmp_path / "idx"), shards=3, factory="IVF32,Flat", nprobe=8)
    assert m["factory"] == "IVF32,Flat"
    assert m["recall_at_10"] >= 0.9, m["recall_at_10"]
    reader = IndexReader(str(tmp_path / "idx"))
    # All shards share one trained quantizer.
    import faiss

    cents = [faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, 32) for ix in reader.indexes]
    assert all(np.array_equal(cents[0], c) for c in cents[1:])
    _, keys = reader.search(queries, 10)
    _, ref_keys = reference(data, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(keys, ref_keys)])
    assert recall >= 0.9
    assert B.choose_factory(1000) == "Flat" and B.choose_factory(1_000_000) == "IVF4000,Flat"


@pytest.mark.parametrize("compact_ratio", [0.0, 10.0], ids=["compact", "delta"])
def test_update_equals_rebuild(tmp_path, data, queries, compact_ratio):
    a, b = data.slice(0, 2500), make_table(300, seed=3, start=10_000)
    removed = keys_of(data)[100:400:2]
    idx = str(tmp_path / "idx")
    build_index(a, idx, shards=4)
    m = update_index(idx, add_embeddings=b, remove_keys=removed + [("no-such-image", -1)],
                     compact_ratio=compact_ratio)
    assert m["version"] == 2 and m["parent"] == 1 and m["update"]["removed_rows"] == len(removed)
    mode = "compacted_shards" if compact_ratio == 0 else "delta_shards"
    assert m["update"][mode] == [0, 1, 2, 3]
    expected = pa.concat_tables([a, b])
    gone = set(removed)
    expected = expected.filter(pa.array([k not in gone for k in keys_of(expected)]))
    assert m["total"] == len(expected)
    build_index(expected, str(tmp_path / "full"), shards=4)
    s1, k1 = IndexReader(idx).search(queries, 10)
    s2, k2 = IndexReader(str(tmp_path / "full")).search(queries, 10)
    assert k1 == k2
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
    assert sorted(IndexReader(idx).keys_of_image(keys_of(b)[0][0])) == [keys_of(b)[0]]
    # Only the shard owning the one removed key changes; the others are referred to unchanged.
    only = [k for k in keys_of(b)[:1]]
    shard = V.key_id(*only[0]) % 4
    m3 = update_index(idx, remove_keys=only, compact_ratio=compact_ratio)
    assert m3["update"]["touched_shards"] == [shard] and m3["update"]["removed_rows"] == 1
    for old, new in zip(m["shards"], m3["shards"]):
        same = {k: v for k, v in old.items() if k != "home"} == {k: v for k, v in new.items() if k != "home"}
        assert same == (old["shard"] != shard)
        assert same <= (new["home"] == old.get("home", 2))


def test_delta_segments_equal_compaction_on_ivf(tmp_path, data, queries):
    """Delta segments share the build's quantizer, so base + delta searched at the same nprobe finds
    exactly what the compacted shard finds, through upserts, deletions from the delta and re-adds."""
    a, b, c = data.slice(0, 2000), data.slice(2000, 300), data.slice(2300, 200)
    idx = {mode: str(tmp_path / mode) for mode in ("delta", "compact")}
    ratio = {"delta": 10.0, "compact": 0.0}
    moved = a.slice(0, 5)
    moved = moved.set_column(2, "vector", pa.FixedSizeListArray.from_arrays(
        pa.array((-V.vectors_of(moved)).ravel()), D))
    steps = [dict(add_embeddings=pa.concat_tables([b, moved]), remove_keys=keys_of(a)[10:60]),
             dict(add_embeddings=c, remove_keys=keys_of(b)[:40] + keys_of(a)[60:70]),  # from delta and base
             dict(add_embeddings=a.slice(10, 20), remove_keys=keys_of(c)[:5])]  # re-add tombstoned keys
    for mode, uri in idx.items():
        build_index(a, uri, shards=2, factory="IVF16,Flat", nprobe=3, keep=1)
        for step in steps:
            m = update_index(uri, compact_ratio=ratio[mode], keep=1, **step)
    r_d, r_c = IndexReader(idx["delta"]), IndexReader(idx["compact"])
    assert r_d.ntotal == r_c.ntotal == m["total"] == 2000 + 300 + 200 - 50 - 40 - 10 + 20 - 5
    assert all(e.get("delta") and e.get("tombstones") for e in V.read_manifest(idx["delta"])["shards"])
    for nprobe in (1, 3, 16):
        s_d, k_d = r_d.search(queries, 10, nprobe)
        s_c, k_c = r_c.search(queries, 10, nprobe)
        assert k_d == k_c
        np.testing.assert_allclose(s_d, s_c, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r_d.reconstruct(keys_of(moved)), V.vectors_of(moved), atol=1e-6)  # upserted
    # keep=1, yet the build stays: the published version's base shards live in it. Compacting
    # releases it; the results do not change.
    assert V.list_versions(idx["delta"]) == [1, 4]
    m = update_index(idx["delta"], compact=True, keep=1)
    assert m["update"]["compacted_shards"] == [0, 1] and V.list_versions(idx["delta"]) == [5]
    assert not any(e.get("delta") or e.get("tombstones") for e in m["shards"])
    assert IndexReader(idx["delta"]).search(queries, 10, 3)[1] == r_c.search(queries, 10, 3)[1]


def test_crash_before_publish_keeps_old_version(tmp_path, data, queries, monkeypatch):
    idx = str(tmp_path / "idx")
    build_index(data, idx, shards=2)
    before = IndexReader(idx).search(queries, 5)

    def boom(*a, **k):
        raise RuntimeError("injected crash before publish")

    monkeypatch.setattr(V, "publish", boom)
    with pytest.raises(RuntimeError, match="injected"):
        build_index(make_table(500, seed=9), idx, shards=2)
    with pytest.raises(RuntimeError, match="injected"):
        update_index(idx, remove_keys=keys_of(data)[:10])
    monkeypatch.undo()
    assert V.current_version(idx) == 1 and L.read_lock(idx) is None
    after = IndexReader(idx).search(queries, 5)
    assert after[1] == before[1]
    # The next publish skips the abandoned version numbers.
    assert update_index(idx, remove_keys=keys_of(data)[:1])["version"] == 4


def test_lock_contention_and_stale_lock(tmp_path, data):
    idx = str(tmp_path / "idx")
    build_index(data.slice(0, 500), idx, shards=2)
    token = L.acquire(idx, owner="other-job")
    with pytest.raises(LockError, match="locked by another writer.*other-job"):
        update_index(idx, remove_keys=keys_of(data)[:3])
    with pytest.raises(LockError, match="only once its lease expires"):
        update_index(idx, remove_keys=keys_of(data)[:3], force=True)
    assert V.current_version(idx) == 1
    # Let its lease lapse (its writer stopped renewing it): force breaks it only then.
    path = os.path.join(idx, "LOCK")
    rec = json.load(open(path))
    rec["expires"] = time.time() - 60
    open(path, "w").write(json.dumps(rec))
    with pytest.raises(LockError, match="rerun with force=True"):
        update_index(idx, remove_keys=keys_of(data)[:3])
    assert update_index(idx, remove_keys=keys_of(data)[:3], force=True)["version"] == 2
    L.release(idx, token)  # no longer ours: must not delete anything
    assert not os.path.exists(path)


def test_checksum_mismatch_detected(tmp_path, data):
    idx = str(tmp_path / "idx")
    m = build_index(data.slice(0, 500), idx, shards=2)
    shard = os.path.join(idx, "versions", "v000001", m["shards"][1]["index"])
    blob = bytearray(open(shard, "rb").read())
    blob[-5] ^= 0xFF
    open(shard, "wb").write(bytes(blob))
    with pytest.raises(ChecksumError, match="part-00001.faiss"):
        IndexReader(idx)
    # A delta update reads only the shard's id map; compacting reads (and checks) its index file too.
    with pytest.raises(ChecksumError):
        update_index(idx, remove_keys=[k for k in keys_of(data)[:500] if V.key_id(*k) % 2 == 1][:1], compact=True)


def test_prune_and_rollback(tmp_path, data, queries):
    idx = str(tmp_path / "idx")
    for i in range(4):
        build_index(data.slice(0, 300 + 100 * i), idx, shards=2, keep=2)
    assert V.list_versions(idx) == [3, 4] and V.current_version(idx) == 4
    rollback(idx, 3)
    r = IndexReader(idx)
    assert r.version == 3 and r.ntotal == 500
    with pytest.raises(FileNotFoundError):
        rollback(idx, 1)
    build_index(data.slice(0, 200), idx, shards=2, keep=1)
    assert V.list_versions(idx) == [5] and IndexReader(idx).ntotal == 200


def test_torch_exact_search_cpu(data, queries):
    pytest.importorskip("torch")
    vec = V.vectors_of(data)
    s_ref, i_ref = exact_search(vec, queries, 10, backend="faiss")
    s, i = torch_exact_search(vec, queries, 10, device="cpu", chunk=700)
    assert np.array_equal(i, i_ref)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)
    s, i = torch_exact_search(vec[:4], queries, 10, device="cpu", chunk=3)
    assert (i[:, 4:] == -1).all() and set(i[0, :4].tolist()) == {0, 1, 2, 3}
    s_l2, i_l2 = torch_exact_search(vec, queries, 5, metric="l2", chunk=1000)
    s_l2r, i_l2r = exact_search(vec, queries, 5, metric="l2", backend="faiss")
    assert np.array_equal(i_l2, i_l2r)


def test_s3_build_update_search(s3_bucket, s3_storage, data, queries):
    emb = write_embeddings(data.slice(0, 1200), f"s3://{s3_bucket}/emb", s3_storage, parts=2)
    idx = f"s3://{s3_bucket}/index"
    m = build_index(emb, idx, shards=3, storage_cfg=s3_storage)
    assert m["recall_at_10"] == 1.0
    ref_scores, ref_keys = reference(data.slice(0, 1200), queries, 10)
    scores, keys = IndexReader(idx, s3_storage).search(queries, 10)
    assert keys == ref_keys
    token = L.acquire(idx, s3_storage, owner="holder")
    with pytest.raises(LockError, match="holder"):
        update_index(idx, remove_keys=keys_of(data)[:2], storage_cfg=s3_storage)
    L.release(idx, token, s3_storage)
    m2 = update_index(idx, remove_keys=keys_of(data)[:2], storage_cfg=s3_storage)
    assert m2["total"] == 1198 and V.current_version(idx, s3_storage) == 2
    assert len(m2["update"]["unchanged_shards"]) >= 1
    assert IndexReader(idx, s3_storage).ntotal == 1198
    m3 = update_index(idx, remove_keys=keys_of(data)[2:4], storage_cfg=s3_storage, keep=1)
    # keep=1 leaves version 3 and the versions holding files it uses (1's base shards, tombstones)
    assert V.list_versions(idx, s3_storage) == sorted(homes(m3)) and homes(m3) >= {1, 3}
    assert IndexReader(idx, s3_storage).ntotal == 1196


def test_ray_build_matches_local(tmp_path, ray_session, data, queries):
    local = build_index(data, str(tmp_path / "local"), shards=4, factory="IVF16,Flat", nprobe=4)
    remote = build_index(data, str(tmp_path / "ray"), shards=4, factory="IVF16,Flat", nprobe=4,
                         parallel="ray")
    assert [e["sha256"] for e in local["shards"]] == [e["sha256"] for e in remote["shards"]]
    assert local["recall_at_10"] == remote["recall_at_10"]
    a = IndexReader(str(tmp_path / "local")).search(queries, 10)
    b = IndexReader(str(tmp_path / "ray")).search(queries, 10)
    assert a[1] == b[1]


def test_l2_metric_and_ivf_upsert(tmp_path, data, queries):
    idx = str(tmp_path / "l2")
    build_index(data, idx, shards=3, metric="l2")
    s, keys = IndexReader(idx).search(queries, 10)
    _, pos = exact_search(V.vectors_of(data), queries, 10, metric="l2", backend="faiss")
    all_keys = keys_of(data)
    assert keys == [[all_keys[p] for p in row] for row in pos]
    assert (np.diff(s, axis=1) >= 0).all()  # distances ascend
    # Upsert on an IVF index: re-adding a key replaces its vector; removal works on IVF lists.
    ivf = str(tmp_path / "ivf")
    build_index(data, ivf, shards=2, factory="IVF16,Flat", nprobe=16)
    moved = data.slice(0, 1)
    new_vec = -V.vectors_of(moved)
    moved = moved.set_column(2, "vector", pa.FixedSizeListArray.from_arrays(pa.array(new_vec.ravel()), D))
    m = update_index(ivf, add_embeddings=moved, remove_keys=[keys_of(data)[1]])
    assert m["total"] == len(data) - 1 and m["update"]["removed_rows"] == 2
    r = IndexReader(ivf)
    _, keys = r.search(new_vec, 1)
    assert keys[0][0] == keys_of(data)[0]
    _, keys = r.search(V.vectors_of(data.slice(1, 1)), 5)
    assert keys_of(data)[1] not in keys[0]


def test_lock_is_exclusive_under_races(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    idx = str(tmp_path / "idx")

    def grab(_):
        try:
            return L.acquire(idx, owner="racer")
        except LockError:
            return None

    with ThreadPoolExecutor(8) as pool:
        got = [t for t in pool.map(grab, range(16)) if t]
    assert len(got) == 1


# ---------------------------------------------------------------- lock leases (hardening)


def _stale_lock(base: str, cfg=None) -> dict:
    rec = {"token": "dead-writer", "owner": "crashed reindex", "host": "h", "pid": 1,
           "created": time.time() - 7200, "lease_s": 600, "expires": time.time() - 3600}
    storage.write_bytes(storage.join(base, "LOCK"), json.dumps(rec).encode(), cfg)
    return rec


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writers_breaking_one_stale_lock_cannot_both_win(where, tmp_path, request):
    """Both read the same stale LOCK; each replaces exactly that record (S3 If-Match on its ETag, local
    atomic rename): the second finds a newer record and fails, the first keeps its lock."""
    from concurrent.futures import ThreadPoolExecutor

    if where == "s3":
        cfg, base = request.getfixturevalue("s3_storage"), f"s3://{request.getfixturevalue('s3_bucket')}/idx"
    else:
        cfg, base = None, str(tmp_path / "idx")
    seen = _stale_lock(base, cfg)
    uri = storage.join(base, "LOCK")
    _, etag = L._read(uri, cfg)
    assert L._replace(uri, seen, etag, L._record("writer-a", "a", 600), cfg)
    assert not L._replace(uri, seen, etag, L._record("writer-b", "b", 600), cfg)  # read the same stale record
    assert L.read_lock(base, cfg)["token"] == "writer-a"
    # Eight writers force-breaking the same stale lock at once: exactly one gets it.
    _stale_lock(base, cfg)

    def grab(_):
        try:
            return L.acquire(base, cfg, owner="racer", force=True)
        except LockError:
            return None

    with ThreadPoolExecutor(8) as pool:
        got = [t for t in pool.map(grab, range(8)) if t]
    assert len(got) == 1 and L.read_lock(base, cfg)["token"] == got[0]


def test_local_lock_break_is_a_compare_and_swap_under_contention(tmp_path):
    """200 rounds of 8 writers force-breaking one stale local LOCK: always exactly one winner, and the
    lock is the winner's. (Moving the lock aside to compare it let a third writer create its own in
    the gap: two winners in ~2% of rounds, measured by benchmarks.hostile.)"""
    from concurrent.futures import ThreadPoolExecutor

    def grab(base):
        try:
            return L.acquire(base, owner="racer", force=True)
        except LockError:
            return None

    bad = []
    with ThreadPoolExecutor(8) as pool:
        for r in range(200):
            base = str(tmp_path / f"idx{r}")
            _stale_lock(base)
            got = [t for t in pool.map(grab, [base] * 8) if t]
            if len(got) != 1 or L.read_lock(base)["token"] != got[0]:
                bad.append((r, len(got)))
    assert not bad, f"rounds without exactly one winner: {bad}"
    # The guard is a kernel lock: one left by a writer killed mid-swap never blocks anyone.
    import subprocess
    import sys

    base = str(tmp_path / "guarded")
    _stale_lock(base)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path / "guarded" / "LOCK.swap")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert L.acquire(base, owner="b", force=True) == L.read_lock(base)["token"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_retried_create_keeps_its_own_lock(where, tmp_path, request, monkeypatch):
    """The create succeeded but its response was lost; the retry got 412: the writer finds its own
    token in the record and keeps the lock instead of calling itself 'another writer'."""
    if where == "s3":
        cfg, base = request.getfixturevalue("s3_storage"), f"s3://{request.getfixturevalue('s3_bucket')}/idx"
    else:
        cfg, base = None, str(tmp_path / "idx")
    real = L._create
    monkeypatch.setattr(L, "_create", lambda uri, body, c: real(uri, body, c) and False)
    token = L.acquire(base, cfg, owner="me")
    assert L.read_lock(base, cfg)["token"] == token


def test_the_lease_in_the_record_decides_not_the_breakers(tmp_path):
    """A reindex's lock (6 h lease, 2 h old) is not stale to a build with a short lease of its own."""
    base = str(tmp_path / "idx")
    rec = {"token": "reindex", "owner": "reindex", "host": "h", "pid": 1, "created": time.time() - 7200,
           "lease_s": 6 * 3600, "expires": time.time() + 4 * 3600}
    storage.write_bytes(storage.join(base, "LOCK"), json.dumps(rec).encode())
    with pytest.raises(LockError, match="only once its lease expires"):
        L.acquire(base, owner="build", force=True, lease_s=60)
    assert L.read_lock(base)["token"] == "reindex"


def test_heartbeat_renews_and_a_lost_lock_refuses_to_publish(tmp_path, data):
    idx = str(tmp_path / "idx")
    build_index(data.slice(0, 200), idx, shards=1)
    with L.index_lock(idx, owner="slow writer", lease_s=0.8) as token:
        first = L.read_lock(idx)["expires"]
        time.sleep(1.5)  # longer than the lease: only the heartbeat keeps it
        assert L.read_lock(idx)["expires"] > first
        with pytest.raises(LockError, match="lease expires"):
            L.acquire(idx, owner="other", force=True)
        # Someone breaks our lock anyway (we stalled): publishing now must fail, CURRENT stays.
        foreign = {"token": "other", "owner": "other", "host": "h", "pid": 2, "created": time.time(),
                   "lease_s": 600, "expires": time.time() + 600}
        storage.write_bytes(os.path.join(idx, "LOCK"), json.dumps(foreign).encode())
        with pytest.raises(LockError, match="lost the lock"):
            V.publish(idx, 1)
        assert token != "other"
    assert L.read_lock(idx)["token"] == "other"  # release removed nothing that was not ours
    assert V.current_version(idx) == 1
