"""``python -m benchmarks.reliability --out docs/benchmarks.md [--rates 0.05,0.1,0.2] [--copies 3]``

The reliability table: the sample collection (faces, odd formats and broken files included,
``--copies`` times) is ingested and preprocessed from and to a local S3 endpoint (moto over HTTP)
through the fault-injecting proxy (500 InternalError, 503 SlowDown, 503 ServiceUnavailable,
dropped connections) at each fault rate, and compared row by row with a clean run through the same
endpoint without faults. Reported per rate: requests, faults injected by kind, whether the jobs
survived (exit 0), rows lost, rows duplicated, rows that differ from the clean run. Each run is a
subprocess with its own local Ray, as a user's job would be.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import hostile
from benchmarks.faultproxy import FAULT_KINDS, FaultProxy
from benchmarks.harness import git_commit, machine, write_doc
from tests.fixtures.s3 import LocalS3

SECTION = "Reliability (S3 faults)"  # the run also writes bench.hostile's section


def _cli(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "artextract.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, (proc.stderr or "")[-2000:]


def _rows(endpoint: str, uri: str) -> dict[str, Any]:
    """The preprocess output as comparable rows: images (id, status, reason, n_faces), faces (id, idx, box)."""
    from artextract.core import storage
    from artextract.config import StorageConfig

    cfg = StorageConfig(s3_endpoint=endpoint, s3_region="us-east-1")
    images = storage.read_parquet(storage.join(uri, "images"), cfg, columns=["image_id", "status", "reason", "n_faces"])
    faces = storage.read_parquet(storage.join(uri, "faces"), cfg, columns=["image_id", "face_idx", "box"])
    return {"images": [tuple(r.values()) for r in images.to_pylist()],
            "faces": [(r["image_id"], r["face_idx"], tuple(round(x, 3) for x in r["box"])) for r in faces.to_pylist()]}


def run_once(s3: LocalS3, bucket: str, name: str, rate: float | None, seed: int, timeout: float,
             ray_address: str = "") -> dict[str, Any]:
    """ingest + preprocess of s3://bucket/images into s3://bucket/<name>/, through the proxy when rate is set;
    the jobs attach to ``ray_address`` when given (the suite's --quick), else each starts its own Ray."""
    # Own Ray: no RAY_* settings of the caller's. Attached: keep them (a token-auth session's token
    # travels in the RAY_* environment).
    env = {**{k: v for k, v in os.environ.items() if ray_address or not k.startswith("RAY_")}, **s3.env}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    t0 = time.perf_counter()
    proxy = FaultProxy(s3.endpoint, rate=rate, seed=seed) if rate else None
    endpoint = proxy.__enter__().endpoint if proxy else s3.endpoint
    try:
        common = ["--s3-endpoint", endpoint, "storage.s3_region=us-east-1", "storage.s3_max_attempts=10"]
        rc, err = _cli(["ingest", "folder", "--images", f"s3://{bucket}/images", "--out",
                        f"s3://{bucket}/{name}/manifest", *common], env, timeout)
        if rc == 0:
            rc, err = _cli(["preprocess", "--manifest", f"s3://{bucket}/{name}/manifest", "--out",
                            f"s3://{bucket}/{name}/pre", *common, "shard_rows=4"], env, timeout)
    finally:
        stats = dict(proxy.stats) if proxy else {}
        if proxy:
            proxy.__exit__(None, None, None)
    return {"name": name, "rate": rate or 0.0, "rc": rc, "error": err if rc else "", "stats": stats,
            "seconds": round(time.perf_counter() - t0, 1)}


def compare(clean: dict[str, Any], got: dict[str, Any]) -> dict[str, int]:
    """Rows lost, duplicated and different (by image_id) between a clean and a faulted output."""
    want = {r[0]: r for r in clean["images"]}
    ids = [r[0] for r in got["images"]]
    have = {r[0]: r for r in got["images"]}
    lost = len(set(want) - set(have))
    dup = len(ids) - len(set(ids))
    diff = sum(1 for i in set(want) & set(have) if want[i] != have[i])
    diff += len(set(clean["faces"]) ^ set(got["faces"]))
    return {"rows_lost": lost, "rows_duplicated": dup, "rows_different": diff}


def section(results: list[dict[str, Any]], clean_rows: int, argv: list[str], started: str) -> str:
    info = machine()
    kinds = " / ".join(FAULT_KINDS)
    lines = [f"## {SECTION}", "",
             f"Command: `python -m benchmarks.reliability {shlex.join(argv)}` ({started}, commit "
             f"{git_commit()}; {info.get('cores', '?')} cores, {info.get('ram', '?')}).", "",
             f"`ingest folder` + `preprocess` of {clean_rows} images (the sample collection: faces, odd formats, "
             "broken files) from and to S3 (moto over HTTP), through a proxy that fails the given fraction of "
             f"requests ({kinds}: 500 InternalError, 503 SlowDown, 503 ServiceUnavailable, dropped "
             "connection), compared row by row with a clean run. Retries are the S3 clients' own "
             "(AWS SDK standard retry mode, `storage.s3_max_attempts=10`) plus `artextract.core.storage`'s retry of "
             "whole-object operations and whole-file re-read of a parquet file after a failed ranged read (the "
             "SDK does not retry a 500/503 error body that breaks a small ranged GET).", "",
             "| fault rate | requests | faults injected | 500 | 503 SlowDown | 503 | dropped | jobs survived | "
             "rows lost | rows duplicated | rows different | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, c = r["stats"], r.get("compare", {})
        lines.append(f"| {r['rate']:.2f} | {s.get('requests', '-')} | {s.get('injected', 0)} | {s.get('500', 0)} | "
                     f"{s.get('503_slowdown', 0)} | {s.get('503', 0)} | {s.get('drop', 0)} | "
                     f"{'yes' if r['rc'] == 0 else 'NO: ' + r['error'].splitlines()[-1][:80]} | "
                     f"{c.get('rows_lost', '-')} | {c.get('rows_duplicated', '-')} | {c.get('rows_different', '-')} | "
                     f"{r['seconds']} |")
    total = sum(r["stats"].get("injected", 0) for r in results)
    lost = sum(r.get("compare", {}).get("rows_lost", 0) for r in results)
    lines += ["", f"Total: {total} faults injected, {sum(r['rc'] == 0 for r in results)}/{len(results)} runs "
              f"survived, {lost} rows lost (goal: 0). The chaos tests (tests/test_chaos.py) add killed Ray "
              "workers, a killed driver and concurrent re-index runs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None, sink: dict[str, Any] | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``benchmarks.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--rates", default="0.05,0.1,0.2")
    p.add_argument("--copies", type=int, default=3, help="copies of the sample collection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--cases", help="comma-separated sample cases (default: the whole sample collection)")
    p.add_argument("--ray-address", default="", help="attach the jobs to this running Ray instead of starting "
                   "one each (the suite's --quick)")
    args = p.parse_args(argv)
    from artextract import samples

    cases = {k: samples.CASES[k] for k in args.cases.split(",")} if args.cases else None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="artextract-reliability-") as tmp, LocalS3() as s3:
        for c in range(args.copies):
            samples.write_collection(Path(tmp) / "images" / f"copy{c}", cases)
        s3.upload(Path(tmp) / "images", "reliability", "images")
        clean_run = run_once(s3, "reliability", "clean", None, args.seed, args.timeout, args.ray_address)
        if clean_run["rc"] != 0:
            print(f"clean run failed: {clean_run['error']}", file=sys.stderr)
            return 1
        clean = _rows(s3.endpoint, "s3://reliability/clean/pre")
        results = []
        for i, rate in enumerate(float(x) for x in args.rates.split(",")):
            r = run_once(s3, "reliability", f"faults{i}", rate, args.seed + i, args.timeout, args.ray_address)
            if r["rc"] == 0:
                r["compare"] = compare(clean, _rows(s3.endpoint, f"s3://reliability/faults{i}/pre"))
            print(json.dumps(r), flush=True)
            results.append(r)
    hostile_rows = hostile.run()
    for row in hostile_rows:
        print(json.dumps(row), flush=True)
    if sink is not None:
        sink.update(results=results, clean_rows=len(clean["images"]), started=started, hostile=hostile_rows)
    write_doc(Path(args.out), [(SECTION, section(results, len(clean["images"]), argv, started)),
                               (hostile.SECTION, hostile.section(hostile_rows, [], started))])
    print(f"wrote the {SECTION!r} section of {args.out}")
    return 0 if all(r["rc"] == 0 and not any(r["compare"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
