"""``artextract reindex``: diff a collection against the snapshot of the published index version,
process only what changed, publish atomically; equal to a fresh build of the final collection.

The incremental runs work on S3 over HTTP (moto server: collection and index in a bucket, changes
detected by ETag); the reference build runs on a local copy of the final collection.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pytest

from artextract import samples

from artextract.core import storage
from artextract.cli import main
from artextract.config import StorageConfig
from artextract.index import collection as C
from artextract.index import versions as V
from artextract.index.lock import index_lock
from artextract.index.search import IndexReader

FIRST = ("astronaut", "astronaut_painted", "double_portrait", "landscape_1", "rgba_oval")
ADDED, DELETED, CHANGED = ("exif_rotated", "landscape_2"), "rgba_oval", "astronaut_painted"
FAST = ["embed.image_size=64", "embed.dim=32", "build.shards=2", "preprocess.decode.detect_max_side=512",
        "preprocess.shard_rows=2"]


def _file(name: str) -> tuple[str, bytes]:
    fn, maker, _ = samples.CASES[name]
    return fn, maker()


def _changed_bytes() -> bytes:
    # The same portrait painted with another seed: different bytes and (slightly) different faces.
    from PIL import Image

    img = samples._painterly(samples._data("astronaut"), 9)
    return samples._save(Image.fromarray(np.asarray(img)[:, ::-1]), "JPEG", quality=85)


def _vectors(reader: IndexReader) -> dict[V.Key, np.ndarray]:
    """Every stored vector by key (shard = id % number of shards)."""
    n = len(reader.indexes)
    return {reader.key_of(int(i)): reader.indexes[int(i) % n].reconstruct(int(i)) for i in reader._ids}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_endpoint, ray_session):
    """Build from FIRST, rerun (unchanged), change the collection, crash before publish, rerun;
    then a fresh build of the final collection from a local copy. Returns what the tests check."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "reindex-test"
    client.create_bucket(Bucket=bucket)
    cfg = StorageConfig(s3_endpoint=s3_endpoint, s3_region="us-east-1", s3_max_attempts=2)
    coll, index = f"s3://{bucket}/collection", f"s3://{bucket}/index"
    args = ["reindex", "--collection", coll, "--index", index, "--s3-endpoint", s3_endpoint,
            "storage.s3_region=us-east-1", "compact_ratio=10", *FAST]  # updates stay delta segments
    files = dict(_file(n) for n in FIRST)
    for fn, data in files.items():
        client.put_object(Bucket=bucket, Key=f"collection/{fn}", Body=data)
    out: dict = {"cfg": cfg, "index": index, "summaries": []}

    def summary() -> dict:
        return json.loads(client.get_object(Bucket=bucket, Key="index/work/summary.json")["Body"].read())

    assert main(args) == 0
    out["summaries"].append(summary())
    assert main(args) == 0
    out["summaries"].append(summary())

    # Change the collection: two new images, one deleted, one rewritten with other bytes.
    for name in ADDED:
        fn, data = _file(name)
        files[fn] = data
        client.put_object(Bucket=bucket, Key=f"collection/{fn}", Body=data)
    del_fn = samples.CASES[DELETED][0]
    client.delete_object(Bucket=bucket, Key=f"collection/{del_fn}")
    del files[del_fn]
    chg_fn = samples.CASES[CHANGED][0]
    files[chg_fn] = _changed_bytes()
    client.put_object(Bucket=bucket, Key=f"collection/{chg_fn}", Body=files[chg_fn])

    # Crash after the shards are written, before publish: the previous version keeps serving.
    real = C.write_snapshot
    C.write_snapshot = lambda *a, **k: (_ for _ in ()).throw(OSError("injected crash before publish"))
    try:
        out["crash_rc"] = main(args)
    finally:
        C.write_snapshot = real
    out["after_crash_version"] = V.current_version(index, cfg)
    out["after_crash_lock"] = storage.exists(f"{index}/LOCK", cfg)
    assert main(args) == 0
    out["summaries"].append(summary())
    # Delta preprocess of the rerun: its shards were finished by the crashed run.
    delta = out["summaries"][2]["counts"]["delta"]
    out["delta_preprocess"] = json.loads(client.get_object(
        Bucket=bucket, Key=f"index/work/deltas/{delta}/preprocessed/summary.json")["Body"].read())

    # Reference: a fresh build of the final collection (local copy, same settings).
    local = tmp_path_factory.mktemp("final")
    for fn, data in files.items():
        (local / "collection" / fn).parent.mkdir(exist_ok=True)
        (local / "collection" / fn).write_bytes(data)
    ref_args = ["reindex", "--collection", str(local / "collection"), "--index", str(local / "index"), *FAST]
    assert main(ref_args) == 0
    out["ref_index"] = str(local / "index")
    out["ref_summary"] = json.loads((local / "index" / "work" / "summary.json").read_text())
    out["files"] = files
    return out


@pytest.mark.slow  # the runs fixture: five reindex runs over S3
def test_first_run_builds_and_second_changes_nothing(runs):
    first, second = runs["summaries"][:2]
    assert first["counts"]["status"] == "built" and first["counts"]["new"] == len(FIRST)
    assert first["counts"]["index_version"] == 1 and first["counts"]["faces"] >= 4
    assert first["counts"]["vectors_added"] == first["counts"]["index_vectors"] == first["counts"]["faces"]
    assert second["counts"]["status"] == "unchanged" and second["counts"]["index_version"] == 1
    assert second["counts"]["unchanged"] == len(FIRST) and "nothing changed" in second["message"]


@pytest.mark.slow  # the runs fixture: five reindex runs over S3
def test_crash_before_publish_keeps_old_version_and_rerun_resumes(runs):
    assert runs["crash_rc"] == 1
    assert runs["after_crash_version"] == 1 and not runs["after_crash_lock"]
    third = runs["summaries"][2]["counts"]
    assert third["status"] == "updated" and third["index_version"] == 2
    assert (third["new"], third["changed"], third["deleted"]) == (len(ADDED), 1, 1)
    assert third["processed"] == len(ADDED) + 1  # only the new and changed images were preprocessed
    assert third["incomplete_versions_removed"] == 1  # the crashed run's unpublished shards
    assert third["compacted_shards"] == []
    # The rerun found the crashed run's delta outputs and redid nothing.
    assert runs["delta_preprocess"]["counts"]["shards_written_now"] == 0


@pytest.mark.slow  # the runs fixture: five reindex runs over S3
def test_incremental_equals_fresh_build(runs):
    inc = IndexReader(runs["index"], runs["cfg"])
    ref = IndexReader(runs["ref_index"])
    # The incremental version is base shards of version 1 + delta segments + tombstones.
    assert {e["home"] for e in inc.manifest["shards"]} == {1}
    assert any(e.get("delta") for e in inc.manifest["shards"]) and any(e.get("tombstones") for e in inc.manifest["shards"])
    a, b = _vectors(inc), _vectors(ref)
    assert set(a) == set(b) and len(a) == runs["ref_summary"]["counts"]["index_vectors"]
    assert not any(k[0] == Path(samples.CASES[DELETED][0]).stem for k in a)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
    queries = np.stack([b[k] for k in sorted(b)])
    s1, k1 = inc.search(queries, 4)
    s2, k2 = ref.search(queries, 4)
    assert k1 == k2
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    # The snapshot served with the version is the final collection.
    snap = C.read_snapshot(runs["index"], inc.version, runs["cfg"])
    assert sorted(snap["relpath"].to_pylist()) == sorted(runs["files"])
    assert inc.manifest["embed"]["model_version"] == "untrained:resnet18@seed0/d32"


@pytest.mark.slow  # the runs fixture: five reindex runs over S3
def test_rollback_by_pointer_and_prune_keeps_referenced_deltas(runs, capsys):
    cfg, index = runs["cfg"], runs["index"]
    cur = V.current_version(index, cfg)
    assert main(["index", "rollback", "--index", index, "--version", "1", "--s3-endpoint",
                 cfg.s3_endpoint, "storage.s3_region=us-east-1"]) == 0
    assert IndexReader(index, cfg).ntotal == runs["summaries"][0]["counts"]["index_vectors"]
    assert main(["index", "rollback", "--index", index, "--version", "99", "--s3-endpoint",
                 cfg.s3_endpoint, "storage.s3_region=us-east-1"]) == 1
    assert "not kept" in capsys.readouterr().err
    V.rollback(index, cur, cfg)
    # Every delta a kept snapshot refers to still exists.
    for v in V.list_versions(index, cfg):
        for d in set(C.read_snapshot(index, v, cfg)["delta"].to_pylist()) - {None}:
            assert storage.exists(f"{index}/work/deltas/{d}/preprocessed/summary.json", cfg)


def test_concurrent_run_sees_lock(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    fn, data = _file("landscape_1")
    (tmp_path / "c" / fn).write_bytes(data)
    idx = str(tmp_path / "index")
    with index_lock(idx, owner="another reindex"):
        rc = main(["reindex", "--collection", str(tmp_path / "c"), "--index", idx])
    assert rc == 1
    err = capsys.readouterr().err
    assert "locked by another writer" in err and "another reindex" in err and err.count("\n") == 1


def _snap(rows: list[tuple]) -> pa.Table:
    ts = [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=m) for *_, m in rows]
    return pa.table({"image_id": [r[0] for r in rows], "etag": pa.array([r[1] for r in rows], pa.string()),
                     "size": [r[2] for r in rows], "mtime": pa.array(ts, pa.timestamp("ms", tz="UTC"))})


def test_diff_rules():
    old = _snap([("a", None, 10, 1), ("b", None, 10, 1), ("c", "e1", 10, 1), ("d", "e2", 10, 1), ("gone", None, 1, 1)])
    now = _snap([("a", None, 10, 1),   # same size and mtime -> unchanged
                 ("b", None, 10, 2),   # touched locally (mtime) -> changed
                 ("c", "e1", 10, 5),   # same ETag and size, new mtime (S3 copy) -> unchanged
                 ("d", "e3", 10, 1),   # other ETag -> changed
                 ("new", None, 3, 1)])
    d = C.diff(old, now)
    assert (d.new, d.changed, d.deleted, d.unchanged) == (["new"], ["b", "d"], ["gone"], 2)
    assert C.diff(old, old).empty
    assert C.diff(None, now).new == ["a", "b", "c", "d", "new"]


@pytest.mark.slow  # the runs fixture: five reindex runs over S3
def test_refuses_other_model_and_index_without_snapshot(runs, tmp_path, capsys):
    cfg = runs["cfg"]
    args = ["reindex", "--collection", "s3://reindex-test/collection", "--index", runs["index"],
            "--s3-endpoint", cfg.s3_endpoint, "storage.s3_region=us-east-1", *FAST]
    assert main(args + ["embed.seed=1"]) == 2
    assert "rebuild=true" in capsys.readouterr().err
    # An index made by `index build` has no snapshot: reindex says how to adopt it.
    from artextract.index.build import build_index

    table = pa.table({"image_id": ["x"], "face_idx": pa.array([0], pa.int16()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(32, np.float32)), 32),
                      "model_version": ["untrained:resnet18@seed0/d32"]})
    build_index(table, str(tmp_path / "plain"), shards=1)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jpg").write_bytes(_file("landscape_1")[1])
    assert main(["reindex", "--collection", str(tmp_path / "c"), "--index", str(tmp_path / "plain"), *FAST]) == 1
    assert "rebuild=true once" in capsys.readouterr().err
