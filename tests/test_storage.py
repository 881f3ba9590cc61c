"""Storage: one code path for local dirs and S3 (moto over real HTTP), atomic writes."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest

from artextract.core import storage
from artextract.config import StorageConfig


def _roundtrip(base: str, cfg: StorageConfig) -> None:
    storage.write_bytes(storage.join(base, "a", "x.bin"), b"hello", cfg)
    storage.write_json(storage.join(base, "a", "y.json"), {"n": 1}, cfg)
    t = pa.table({"i": [1, 2, 3]})
    storage.write_parquet(storage.join(base, "t", "part-00000.parquet"), t, cfg)
    storage.write_parquet(storage.join(base, "t", "part-00001.parquet"), t, cfg)
    storage.write_parquet(storage.join(base, "t", "missing.parquet"), pa.table({"z": [0]}), cfg)
    assert storage.read_bytes(storage.join(base, "a", "x.bin"), cfg) == b"hello"
    assert storage.read_head(storage.join(base, "a", "x.bin"), 3, cfg) == b"hel"
    assert storage.read_json(storage.join(base, "a", "y.json"), cfg) == {"n": 1}
    assert storage.exists(storage.join(base, "a", "x.bin"), cfg)
    assert not storage.exists(storage.join(base, "a", "nope.bin"), cfg)
    # Only part-* files are shards of a table; other parquet files beside them are not.
    assert storage.read_parquet(storage.join(base, "t"), cfg)["i"].to_pylist() == [1, 2, 3] * 2
    names = [i.base_name for i in storage.list_files(base, cfg)]
    assert names == ["x.bin", "y.json", "missing.parquet", "part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "absent"), cfg)
    with pytest.raises(FileNotFoundError):
        storage.read_parquet(storage.join(base, "absent"), cfg)


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path), StorageConfig())


def test_s3_roundtrip_over_http(s3_bucket, s3_storage):
    _roundtrip(f"s3://{s3_bucket}/prefix", s3_storage)


def test_s3_endpoint_from_standard_env(s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    storage.write_bytes(f"s3://{s3_bucket}/env.txt", b"ok")
    assert storage.read_bytes(f"s3://{s3_bucket}/env.txt") == b"ok"


def test_local_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "file.parquet"
    storage.write_bytes(str(target), b"old")

    def crash(*a, **k):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        storage.write_bytes(str(target), b"new, half written")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"  # the old file is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.parquet"]  # no temp left behind


def test_s3_failed_write_leaves_nothing(s3_bucket, s3_storage):
    class Boom(Exception):
        pass

    class Bad:
        def __len__(self):
            raise Boom()

    uri = f"s3://{s3_bucket}/atomic/part-00000.parquet"
    with pytest.raises(Exception):
        storage.write_parquet(uri, Bad(), s3_storage)  # fails while serialising, before the upload
    assert not storage.exists(uri, s3_storage)


def test_credentials_never_in_resolved_config(tmp_path, s3_storage):
    from conftest import TEST_KEY_ID, TEST_SECRET

    from artextract.config import PreprocessConfig, save_resolved

    uri = save_resolved(PreprocessConfig(storage=s3_storage, out=str(tmp_path)), str(tmp_path))
    text = open(uri).read()
    assert TEST_SECRET not in text and TEST_KEY_ID not in text
    assert storage.redact(f"key {TEST_SECRET} leaked") == "key *** leaked"


def test_unreachable_s3_fails_fast(tmp_path):
    import time

    cfg = StorageConfig(s3_endpoint="http://127.0.0.1:9", s3_max_attempts=1, connect_timeout_s=1,
                        request_timeout_s=2)
    t0 = time.time()
    with pytest.raises(OSError):
        storage.read_bytes("s3://bucket/key", cfg)
    # A closed port refuses at once; one SDK attempt and no outer retry rounds (they took 17 s).
    assert time.time() - t0 < 10


@pytest.mark.parametrize("where", ["local", "s3", "http"])
def test_bounded_read_stops_after_limit_plus_one(where, tmp_path, request):
    """``read_bytes(limit=n)`` returns at most n + 1 bytes (enough to know "too large") from every
    backend, so a huge file is never held in memory just to be rejected."""
    data = os.urandom(3 * 1024 * 1024)
    if where == "local":
        uri, cfg = str(tmp_path / "big.bin"), StorageConfig()
        storage.write_bytes(uri, data, cfg)
    elif where == "s3":
        bucket, cfg = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_storage")
        uri = f"s3://{bucket}/big.bin"
        storage.write_bytes(uri, data, cfg)
    else:
        import functools
        import http.server
        import threading

        (tmp_path / "big.bin").write_bytes(data)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        request.addfinalizer(server.shutdown)
        uri, cfg = f"http://127.0.0.1:{server.server_address[1]}/big.bin", StorageConfig(http_allow_private=True)
    assert storage.read_bytes(uri, cfg, limit=1000) == data[:1001]
    assert storage.read_bytes(uri, cfg, limit=len(data)) == data  # at the limit: all of it
    assert storage.read_bytes(uri, cfg) == data


@pytest.mark.parametrize("where", ["local", "s3"])
def test_manifest_rewrite_is_published_as_one_set(where, tmp_path, request, monkeypatch):
    """A manifest rewrite (3 shards -> 2) that crashes half way leaves the old manifest in force,
    whole (before: readers saw new shard 0 with old shards 1-2, and a shorter rewrite's leftovers
    were read as part of it); the next rewrite publishes at once and removes every stray shard."""
    from artextract import manifest as mf

    if where == "local":
        uri, cfg = str(tmp_path / "manifest"), StorageConfig()
    else:
        uri, cfg = f"s3://{request.getfixturevalue('s3_bucket')}/manifest", request.getfixturevalue("s3_storage")

    def rows(n: int, tag: str) -> pa.Table:
        return pa.table({"image_id": [f"{i:03d}" for i in range(n)], "uri": [f"/x/{tag}{i}.jpg" for i in range(n)]})

    first = mf.write(rows(6, "old"), uri, 2, cfg)
    assert [u.rsplit("/", 1)[1] for u in first] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    real, calls = storage.write_parquet, []

    def crash_on_second(u, table, c=None):
        calls.append(u)
        if len(calls) == 2:
            raise OSError("node lost")
        return real(u, table, c)

    monkeypatch.setattr(storage, "write_parquet", crash_on_second)
    with pytest.raises(OSError, match="node lost"):
        mf.write(rows(4, "new"), uri, 2, cfg)
    monkeypatch.setattr(storage, "write_parquet", real)
    seen = mf.read(uri, cfg)  # the old manifest, whole: not new shard 0 + old shards 1, 2
    assert len(seen) == 6 and all("old" in u for u in seen["uri"].to_pylist())
    assert len(storage.part_files(uri, cfg)) == 3

    mf.write(rows(4, "new"), uri, 2, cfg)
    seen = mf.read(uri, cfg)
    assert len(seen) == 4 and all("new" in u for u in seen["uri"].to_pylist())
    left = [i.base_name for i in storage.list_files(uri, cfg, suffix=".parquet")]
    assert len(left) == 2 and all("-g" in n for n in left), left  # old set and the crash's stray gone
    assert storage.read_json(storage.join(uri, storage.PARTS_MARKER), cfg)["rows"] == 4


def test_a_directory_without_a_marker_is_read_as_before_and_adopted_on_rewrite(tmp_path):
    """Hand-made or older manifests (plain part-* files, no _parts.json) still read; the first
    publish over them replaces them as a set."""
    from artextract import manifest as mf

    uri = str(tmp_path / "m")
    storage.write_parquet(storage.join(uri, "part-00000.parquet"), pa.table({"image_id": ["a"], "uri": ["/a"]}))
    storage.write_parquet(storage.join(uri, "part-00001.parquet"), pa.table({"image_id": ["b"], "uri": ["/b"]}))
    assert mf.read(uri)["image_id"].to_pylist() == ["a", "b"]
    mf.write(pa.table({"image_id": ["c"], "uri": ["/c"]}), uri, 10)
    assert mf.read(uri)["image_id"].to_pylist() == ["c"]
    assert len(storage.list_files(uri, suffix=".parquet")) == 1
