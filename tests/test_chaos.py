"""Chaos: jobs survive S3 faults, killed Ray workers and a killed driver with output identical to a
clean run (0 rows lost, 0 duplicated); two concurrent re-index runs: one wins, the other exits
clearly, and readers never see a mixed index.

Every run here preprocesses the same small collection (faces and quarantine cases included) so
each chaos run is compared row by row with one clean run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from artextract import samples

from artextract.core import storage
from benchmarks.faultproxy import FaultProxy
from artextract.cli import main
from artextract.config import StorageConfig

pytestmark = pytest.mark.slow
CASES = ("astronaut", "double_portrait", "landscape_1", "rgba_oval", "truncated_jpeg", "text_as_jpg")
FAST = ["shard_rows=1", "decode.detect_max_side=512"]
REPO = Path(__file__).resolve().parents[1]


def _outputs(pre: str, cfg: StorageConfig | None = None) -> dict:
    """What must be identical between runs: per image its status/reason/faces, per face its box."""
    images = storage.read_parquet(storage.join(pre, "images"), cfg, columns=["image_id", "status", "reason", "n_faces"])
    faces = storage.read_parquet(storage.join(pre, "faces"), cfg, columns=["image_id", "face_idx", "box", "crop_jpeg"])
    quarantine = storage.read_parquet(storage.join(pre, "quarantine"), cfg, columns=["image_id", "reason"])
    ids = images["image_id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicated image rows"
    return {"images": sorted(images.to_pylist(), key=lambda r: r["image_id"]),
            "faces": sorted(((r["image_id"], r["face_idx"], tuple(round(x, 3) for x in r["box"]), r["crop_jpeg"])
                             for r in faces.to_pylist())),
            "quarantine": sorted((r["image_id"], r["reason"]) for r in quarantine.to_pylist())}


@pytest.fixture(scope="module")
def collection(tmp_path_factory, ray_session):
    """The collection, its manifest, and a clean preprocess run to compare every chaos run with."""
    root = tmp_path_factory.mktemp("chaos")
    samples.write_collection(root / "images", {k: samples.CASES[k] for k in CASES})
    assert main(["ingest", "folder", "--images", str(root / "images"), "--out", str(root / "manifest")]) == 0
    assert main(["preprocess", "--manifest", str(root / "manifest"), "--out", str(root / "clean"), *FAST]) == 0
    clean = _outputs(str(root / "clean"))
    assert len(clean["images"]) == len(CASES) and clean["faces"] and clean["quarantine"]
    return root, clean


def test_s3_faults_on_every_kind_of_request_lose_nothing(collection, s3_endpoint, s3_bucket):
    root, clean = collection
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for f in sorted((root / "images").iterdir()):
        client.put_object(Bucket=s3_bucket, Key=f"images/{f.name}", Body=f.read_bytes())
    with FaultProxy(s3_endpoint, rate=0.12, seed=3) as proxy:
        flags = ["--s3-endpoint", proxy.endpoint, "storage.s3_region=us-east-1", "storage.s3_max_attempts=10"]
        assert main(["ingest", "folder", "--images", f"s3://{s3_bucket}/images", "--out",
                     f"s3://{s3_bucket}/manifest", *flags]) == 0
        assert main(["preprocess", "--manifest", f"s3://{s3_bucket}/manifest", "--out", f"s3://{s3_bucket}/pre",
                     *flags, *FAST]) == 0
        stats = dict(proxy.stats)
    cfg = StorageConfig(s3_endpoint=s3_endpoint, s3_region="us-east-1")
    assert _outputs(f"s3://{s3_bucket}/pre", cfg) == clean
    # Every kind of fault was injected, on reads and on writes, and survived.
    assert all(stats.get(kind, 0) > 0 for kind in ("500", "503", "503_slowdown", "drop")), stats
    print(f"\n[chaos] S3 faults injected and survived: {stats}")


def _detector_pids() -> list[int]:
    """Worker processes of the face-detector actors: Ray titles a Ray Data actor's process
    ``ray::MapWorker(MapBatches(FaceStage))`` (the session's Ray has no dashboard for the state API)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("ray::") and "FaceStage" in title:
            out.append(proc.info["pid"])
    return out


def test_killed_ray_worker_mid_preprocess_changes_nothing(collection, ray_session, tmp_path):
    root, clean = collection
    out = tmp_path / "pre"
    killed: list[int] = []

    def killer() -> None:
        # Kill a face-detector actor once the first shard is committed: mid-job, work in flight.
        deadline = time.time() + 180
        while time.time() < deadline and not killed:
            if (out / "images" / "part-00000.parquet").exists():
                pids = _detector_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    assert main(["preprocess", "--manifest", str(root / "manifest"), "--out", str(out), *FAST]) == 0
    t.join(5)
    assert killed, "the detector actor was never killed (job finished first?)"
    summary = json.loads((out / "summary.json").read_text())["counts"]
    assert summary["shards_written_now"] == len(CASES)  # all of them in this run, despite the kill
    assert _outputs(str(out)) == clean


def _strip(outputs: dict, prefix: str) -> dict:
    """The rows of images under ``prefix/``, with the prefix removed from their ids."""
    n = len(prefix) + 1
    return {"images": [{**r, "image_id": r["image_id"][n:]} for r in outputs["images"]
                       if r["image_id"].startswith(prefix + "/")],
            "faces": [(i[n:], *rest) for i, *rest in outputs["faces"] if i.startswith(prefix + "/")],
            "quarantine": [(i[n:], r) for i, r in outputs["quarantine"] if i.startswith(prefix + "/")]}


def test_killed_driver_rerun_resumes_without_duplicates(collection, tmp_path):
    root, clean = collection
    # Two copies of the collection (12 one-row shards): enough that the kill lands mid-job.
    copies = ("a", "b")
    for c in copies:
        samples.write_collection(tmp_path / "images" / c, {k: samples.CASES[k] for k in CASES})
    assert main(["ingest", "folder", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "manifest")]) == 0
    out, total = tmp_path / "pre", len(copies) * len(CASES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cmd = [sys.executable, "-m", "artextract.cli", "preprocess", "--manifest", str(tmp_path / "manifest"),
           "--out", str(out), *FAST, "ray.num_cpus=2"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "images").glob("part-*.parquet")):
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = len(list((out / "images").glob("part-*.parquet")))
    assert 1 <= done_before < total, done_before
    assert not (out / "summary.json").exists()
    assert main(["preprocess", "--manifest", str(tmp_path / "manifest"), "--out", str(out), *FAST]) == 0
    counts = json.loads((out / "summary.json").read_text())["counts"]
    # A worker of the killed run may still commit the shard it was writing while it dies: skipped
    # is at least what we counted, and skipped + redone covers every shard exactly once.
    assert counts["shards_skipped"] >= done_before and counts["shards_written_now"] >= 1
    assert counts["shards_skipped"] + counts["shards_written_now"] == total
    assert counts["images_rows"] == counts["manifest_rows"] == total
    got = _outputs(str(out))  # asserts 0 duplicated image rows
    for c in copies:  # 0 missing, and every row as in the clean run
        assert _strip(got, c) == clean, c


def test_concurrent_reindex_one_wins_readers_never_see_a_mix(tmp_path, ray_session):
    from artextract.index import versions as V
    from artextract.index.search import IndexReader

    coll = tmp_path / "c"
    samples.write_collection(coll, {k: samples.CASES[k] for k in ("astronaut", "landscape_1")})
    index = tmp_path / "index"
    fast = ["embed.image_size=64", "embed.dim=32", "build.shards=2", "preprocess.decode.detect_max_side=512"]
    assert main(["reindex", "--collection", str(coll), "--index", str(index), *fast]) == 0
    samples.write_collection(coll, {"double_portrait": samples.CASES["double_portrait"]})
    # The Ray job entry point itself, attached to the session's Ray (as a submitted job attaches to
    # its cluster), in two processes at once.
    # (the auth token of a token-auth session travels in the RAY_* environment, so keep it).
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    cmd = [sys.executable, "jobs/reindex.py", "--collection", str(coll), "--index", str(index), *fast]
    seen: list[tuple[int, int]] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        # A reader resolves CURRENT once and loads that version whole (checksums verified).
        while not stop.is_set():
            try:
                r = IndexReader(str(index))
                assert r.ntotal == r.manifest["total"] == len(r._ids)
                seen.append((r.version, r.ntotal))
            except Exception as exc:  # noqa: BLE001 - any failure is what the test reports
                errors.append(repr(exc))
            time.sleep(0.1)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (index / "LOCK").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    stop.set()
    t.join(5)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 1 and "locked by another writer" in second.stderr, second.stderr[-2000:]
    assert not errors, errors[:3]
    versions = {v for v, _ in seen}
    assert versions <= {1, 2} and 1 in versions
    assert V.current_version(str(index)) == 2
    totals = {v: {n for vv, n in seen if vv == v} for v in versions}
    assert all(len(n) == 1 for n in totals.values()), totals  # one version, one consistent content
