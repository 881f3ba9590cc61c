"""cluster/: every manifest parses, launcher YAMLs satisfy Ray's own schema, every job and config
they name exists; and the jobs really run when submitted to a Ray head over HTTP (the dashboard's
job API, as `ray job submit` does), with the repo uploaded as the job's working_dir.

The head is our own `ray start --head --block` child process in its own process group and temp
dir. It is stopped by signalling that process only (never `ray stop`, which would stop every Ray on
the machine, including the session's `ray_session` and other people's). This module never calls
`ray.init` in the pytest process.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_BIN = Path(sys.executable).parent / "ray"
JOB_TIMEOUT_S = 240


def _cluster_yamls() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _is_launcher(doc: object) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


def test_cluster_manifests_parse_validate_and_reference_real_files():
    files = _cluster_yamls()
    names = {p.relative_to(CLUSTER).as_posix() for p in files}
    assert {"aws.yaml", "gcp.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml",
            "kuberay/cronjob-reindex.yaml", "kuberay/rayjob-reindex.yaml"} <= names
    launchers = []
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        launchers += [(path, d) for d in docs if _is_launcher(d)]
        for d in docs:
            if isinstance(d, dict) and "kind" in d:  # Kubernetes objects
                assert d.get("apiVersion") and d.get("metadata", {}).get("name"), path
    assert {p.name for p, _ in launchers} == {"aws.yaml", "gcp.yaml"}

    import ray  # the package only, for its bundled schema; no ray.init here

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with ray[default]
        jsonschema = None
    if jsonschema and schema_path.is_file():
        schema = json.loads(schema_path.read_text())
        for path, doc in launchers:
            jsonschema.validate(doc, schema)
            assert doc["head_node_type"] in doc["available_node_types"], path
    for path, doc in launchers:  # `ray up` runs from the repo root; what it mounts must exist there
        for local in doc.get("file_mounts", {}).values():
            assert (REPO / local).exists(), f"{path}: file_mounts source {local} missing"
    try:  # what `ray up` runs before touching the cloud: defaults filled in, then validated
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # pragma: no cover - private API moved
        prepare_config = None
    if prepare_config:
        for path, doc in launchers:
            validate_config(prepare_config(doc))

    # Ray rejects empty env var values in a runtime_env; everything else must be a non-empty string.
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".venv", "runs", ".git", "docs"} <= set(env["excludes"])
    for k, v in env.get("env_vars", {}).items():
        assert isinstance(v, str) and v, f"runtime_env env_vars.{k} must be a non-empty string"

    # The nightly CronJob's inline RayJob (a heredoc in its shell script) is a valid RayJob too.
    cron = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "cronjob-reindex.yaml").read_text())
            if d and d.get("kind") == "CronJob"][0]
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    inline = script.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    rayjob = yaml.safe_load(inline.replace("$NAME", "artextract-reindex-20260101"))
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["name"] == "artextract-reindex-20260101"
    assert rayjob["spec"]["entrypoint"].split()[:2] == ["python", "jobs/reindex.py"]
    assert yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["working_dir"]
    for path in files:
        for d in yaml.safe_load_all(path.read_text()):
            if isinstance(d, dict) and d.get("kind") == "RayJob":
                assert d["spec"]["entrypoint"].startswith("python jobs/"), path
                assert isinstance(yaml.safe_load(d["spec"]["runtimeEnvYAML"]), dict), path

    # Every job script and config named anywhere under cluster/ exists in the repo.
    text = "\n".join(p.read_text() for p in files)
    jobs = set(re.findall(r"python3?\s+(jobs/[\w\-]+\.py)", text))
    configs = set(re.findall(r"(configs/[\w\-]+\.ya?ml)", text))
    assert jobs and configs
    missing = sorted(j for j in jobs | configs if not (REPO / j).is_file())
    assert not missing, f"cluster/ references files that do not exist: {missing}"


# ----------------------------------------------------------------------------- real head

def _free_ports(n: int) -> list[int]:
    """n distinct ports free right now (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _own_processes(tag: str) -> list[str]:
    """Processes whose command line names our head's temp dir (gcs, raylet, workers, dashboard)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if tag in line and "ps -eo" not in line]


def _stop_head(proc: subprocess.Popen, tag: str) -> list[str]:
    """SIGTERM `ray start --block` alone (it stops its own children); force only what is ours.

    Ours means: the process group of `proc` while `proc` is not yet reaped (so its id cannot have
    been reused), and processes whose command line names our unique temp dir.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # still unreaped: the group id is ours
            proc.wait()
    deadline = time.time() + 20
    while _own_processes(tag) and time.time() < deadline:
        time.sleep(0.5)
    stragglers = _own_processes(tag)
    for line in stragglers:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    return stragglers


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head (GCS, raylet, dashboard + job API) on 127.0.0.1; yields a JobSubmissionClient."""
    from ray.job_submission import JobSubmissionClient

    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's unix socket paths must fit ~107 chars
    # Every port Ray would otherwise take from a fixed default (dashboard 8265, agent 52365, client
    # 10001, ...) gets a free one: another Ray on this machine (a colleague's, the session's) holds them,
    # and a head whose agent cannot bind its port answers "No available agent to submit job".
    port, dash, client, agent_http, agent_grpc, env_agent, metrics = _free_ports(7)
    token = secrets.token_hex(32)
    # Nothing from the caller's Ray (RAY_ADDRESS of an outer job, ...) may leak into our head; token
    # auth on with a token of our own, so the test exercises the same auth path a cloud head uses.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # no 30 s drain on SIGTERM: nothing to hand over
    # Ray maps --node-ip-address=127.0.0.1 to the machine's reachable IP for GCS/raylet by design
    # (services.resolve_ip_for_localhost); the dashboard and job API this test talks to stay on 127.0.0.1.
    cmd = [str(RAY_BIN), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
           "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={tmp}"]
    log = open(Path(tmp) / "head.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    client, last = None, None
    try:
        while time.perf_counter() - t0 < 120:
            if proc.poll() is not None:
                break
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dash}", headers={"Authorization": f"Bearer {token}"})
                client.list_jobs()
                break
            except Exception as exc:  # noqa: BLE001 - the head is still starting
                client, last = None, exc
                time.sleep(0.5)
        if client is None:
            log.flush()
            pytest.fail(f"Ray head did not answer on :{dash} ({last!r}); log:\n{(Path(tmp) / 'head.log').read_text()[-3000:]}")
        t_api = time.perf_counter() - t0
        # The job API answers before the node's agent has registered ("No available agent to
        # submit job"): the head is ready when a trivial job has run.
        status, _ = _wait(client, _retry_submit(client, entrypoint="echo ready"), timeout=120)
        assert status == "SUCCEEDED", (Path(tmp) / "head.log").read_text()[-3000:]
        print(f"\n[ray head] job API up in {t_api:.1f} s, first job done {time.perf_counter() - t0:.1f} s "
              f"after start (dashboard :{dash}, temp {tmp})")
        yield client
    finally:
        t1 = time.perf_counter()
        stragglers = _stop_head(proc, tmp)
        log.close()
        time.sleep(0.5)
        left = _own_processes(tmp)
        print(f"[ray head] stopped in {time.perf_counter() - t1:.1f} s; force-killed {len(stragglers)} stragglers")
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"head processes left behind: {left}"


def _runtime_env() -> dict:
    """cluster/runtime_env.yaml as `ray job submit --runtime-env` reads it, run from the repo root."""
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    env["working_dir"] = str(REPO)
    return env


def _retry_submit(client, timeout: float = 60, **kw) -> str:
    t0 = time.perf_counter()
    while True:
        try:
            return client.submit_job(**kw)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.perf_counter() - t0 > timeout:
                raise
            time.sleep(0.5)


def _submit(client, args: str) -> str:
    # `python` inside a job is whatever is first on the head's PATH (checked: the system python,
    # not the venv the head runs from), so the test names the interpreter Ray itself runs on.
    return _retry_submit(client, entrypoint=f"{sys.executable} {args}", runtime_env=_runtime_env())


def _wait(client, job_id: str, timeout: float = JOB_TIMEOUT_S) -> tuple[str, float]:
    from ray.job_submission import JobStatus

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value), time.perf_counter() - t0
        time.sleep(1.0)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} not done after {timeout} s; logs:\n{client.get_job_logs(job_id)[-4000:]}")


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory):
    from artextract.samples import write_collection

    root = tmp_path_factory.mktemp("cluster")
    expected = write_collection(root / "images")
    return root, expected


@pytest.mark.slow
def test_submitted_ingest_and_preprocess_run_on_the_head(ray_head, sample_images):
    root, expected = sample_images
    manifest, pre = root / "manifest", root / "pre"

    job = _submit(ray_head, f"jobs/ingest.py folder --images {root / 'images'} --out {manifest}")
    status, wall = _wait(ray_head, job)
    print(f"[ray head] ingest job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", ray_head.get_job_logs(job)[-4000:]
    assert sorted(manifest.glob("part-*.parquet"))
    ingest = json.loads((manifest / "summary.json").read_text())["counts"]
    assert ingest["manifest_rows"] == len(expected)

    job = _submit(ray_head, f"jobs/preprocess.py --manifest {manifest} --out {pre} shard_rows=8")
    status, wall = _wait(ray_head, job)
    logs = ray_head.get_job_logs(job)
    print(f"[ray head] preprocess job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", logs[-4000:]
    counts = json.loads((pre / "summary.json").read_text())["counts"]
    assert counts["manifest_rows"] == len(expected)
    assert counts["processed"] + counts["quarantined"] == counts["manifest_rows"]
    assert counts["processed"] > 0 and counts["quarantined"] > 0  # the sample has both kinds
    for sub in ("images", "quarantine"):
        assert sorted((pre / sub).glob("part-*.parquet")), sub
    # The driver attached to our head (RAY_ADDRESS set by the job API), not to a Ray of its own.
    assert ray_head.get_job_info(job).driver_info is not None


@pytest.mark.slow
def test_submitted_classifier_training_with_two_workers(ray_head, tmp_path):
    """jobs/train_classifier.py as a Ray job with the pretrained recipe (configs/wikiart_classifier_pretrained
    .yaml, weights from a torchvision MobileNetV2 file): Ray Train with 2 DDP workers fed by the streaming
    Ray Data loader (augmentation, mixup/cutmix, BatchNorm training), a frozen first epoch (DDP must
    tolerate the backbone's missing gradients), EMA weights in the checkpoint; then evaluate."""
    import math

    import torchvision.models as tvm

    from artextract.synthetic_styles import write_labelled_collection

    manifest = write_labelled_collection(str(tmp_path / "styles"), per_style=8, size=40)
    weights = tmp_path / "mobilenet_v2.pth"  # stands in for torchvision's download: same keys and shapes
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), weights)
    run = tmp_path / "run"
    job = _submit(ray_head, f"jobs/train_classifier.py --config {REPO / 'configs' / 'wikiart_classifier_pretrained.yaml'} "
                            f"--input {manifest} --out {run} --workers 2 model.weights={weights} "
                            "data.image_size=32 model.reduce_channels=16 model.hidden=8 train.batch_size=8 "
                            "train.epochs=2 train.cpus_per_worker=0.5 data.decode_cpus=0.25 data.loader=ray_data "
                            "data.augment=true train.freeze_bn=false")
    status, wall = _wait(ray_head, job, timeout=360)
    logs = ray_head.get_job_logs(job)
    print(f"[ray head] train_classifier job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counts"]["epochs_completed"] == 2 and (run / "checkpoints" / "best.pt").exists()
    assert "world_rank=1" in logs  # the second DDP worker really ran
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and all(math.isfinite(h["train_loss"]) for h in hist)
    assert (run / "splits.parquet").exists() and (run / "config.resolved.yaml").exists()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["meta"]["model"]["backbone"] == "mobilenet_v2" and "train_state_dict" in state  # EMA on
    from artextract.cli import main

    assert main(["evaluate", "classifier", "--run", str(run), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "report.html").exists()


@pytest.mark.slow
def test_submitted_job_with_a_bad_key_fails_and_says_why(ray_head, sample_images):
    root, _ = sample_images
    manifest = root / "manifest"
    if not manifest.is_dir():  # run alone: make a manifest without the head
        from artextract.config import IngestFolderConfig
        from artextract.ingest import folder

        folder.run(IngestFolderConfig(images=str(root / "images"), out=str(manifest)))
    job = _submit(ray_head, f"jobs/preprocess.py --manifest {manifest} --out {root / 'bad'} not_a_key=1")
    status, wall = _wait(ray_head, job)
    print(f"[ray head] bad-key job {status} in {wall:.1f} s")
    logs = ray_head.get_job_logs(job)
    assert status == "FAILED", logs[-4000:]
    assert "unknown key 'not_a_key'" in logs, logs[-4000:]
    assert ray_head.get_job_info(job).driver_exit_code == 2
    assert not (root / "bad" / "summary.json").exists()

