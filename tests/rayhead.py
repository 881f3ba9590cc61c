"""A real Ray head for the tests that submit jobs (test_cluster, test_autoscaling): our own
`ray start --head --block` child process in its own process group and temp dir, stopped by
signalling that process only (never `ray stop`, which would stop every Ray on the machine,
including the session's `ray_session` and other people's). Nothing here calls `ray.init`."""
from __future__ import annotations

import contextlib
import json
import os
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
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_BIN = Path(sys.executable).parent / "ray"
JOB_TIMEOUT_S = 240


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
    """Processes whose command line names our head's temp dir (gcs, raylet, workers, dashboard,
    and the fake autoscaler's worker nodes, which outlive the head unless killed here). ``ww``:
    full command lines; without it ps may cut them at 80 columns (it did under pytest), before the
    temp dir, and every leftover went unseen."""
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if tag in line and "ps -eww" not in line]


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


@contextlib.contextmanager
def _head(extra: tuple[str, ...] = ("--node-ip-address=127.0.0.1",), env_extra: dict | None = None,
          autoscaling: dict | None = None):
    """A real Ray head (GCS, raylet, dashboard + job API) on this machine; yields (JobSubmissionClient,
    dashboard URL, auth headers). With ``autoscaling`` (node types), the head runs Ray's fake
    multi-node autoscaler, which starts worker nodes as local processes of the same cluster."""
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
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", **(env_extra or {}))  # no 30 s drain on SIGTERM
    # Ray maps --node-ip-address=127.0.0.1 to the machine's reachable IP for GCS/raylet by design
    # (services.resolve_ip_for_localhost); the dashboard and job API this test talks to stay on 127.0.0.1.
    cmd = [str(RAY_BIN), "start", "--head", "--block", *extra, f"--port={port}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
           "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={tmp}"]
    if autoscaling is not None:
        cmd.append(f"--autoscaling-config={_fake_autoscaling_config(tmp, port, autoscaling)}")
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    log = open(Path(tmp) / "head.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    client, last = None, None
    headers = {"Authorization": f"Bearer {token}"}
    try:
        while time.perf_counter() - t0 < 120:
            if proc.poll() is not None:
                break
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dash}", headers=headers)
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
        HEAD_TEMP[f"http://127.0.0.1:{dash}"] = tmp
        yield client, f"http://127.0.0.1:{dash}", headers
    finally:
        HEAD_TEMP.pop(f"http://127.0.0.1:{dash}", None)
        t1 = time.perf_counter()
        stragglers = _stop_head(proc, tmp)
        log.close()
        time.sleep(0.5)
        left = _own_processes(tmp)
        print(f"[ray head] stopped in {time.perf_counter() - t1:.1f} s; force-killed {len(stragglers)} stragglers")
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"head processes left behind: {left}"


HEAD_TEMP: dict[str, str] = {}  # dashboard URL -> the head's temp dir (its session logs), while it runs


def head_log(url: str, name: str, chars: int = 4000) -> str:
    """The tail of one of a running head's session logs (``monitor.log``: the autoscaler's)."""
    path = Path(HEAD_TEMP.get(url, "/nonexistent"), "session_latest", "logs", name)
    try:
        return f"--- {path} (tail) ---\n{path.read_text(errors='replace')[-chars:]}"
    except OSError as exc:
        return f"--- {path}: {exc}"


def _fake_autoscaling_config(tmp: str, port: int, node_types: dict) -> str:
    """Ray's fake multi-node provider config (its example.yaml is not in the wheel): a CPU-only head
    and ``node_types``; worker nodes join the GCS at ``port`` of this machine's address."""
    from ray._private.services import get_node_ip_address

    cfg = {"cluster_name": "fake", "max_workers": sum(t["max_workers"] for t in node_types.values()),
           "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                        "disable_launch_config_check": True, "gcs_address": f"{get_node_ip_address()}:{port}"},
           "available_node_types": {"ray.head.default": {"resources": {"CPU": 2}, "node_config": {},
                                                         "max_workers": 0}, **node_types},
           "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
           "idle_timeout_minutes": 5, "docker": {}, "initialization_commands": [], "setup_commands": [],
           "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
           "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
           "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}
    path = Path(tmp) / "autoscaling.json"
    path.write_text(json.dumps(cfg))
    return str(path)


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


def _wait(client, job_id: str, timeout: float = JOB_TIMEOUT_S, diagnose=None) -> tuple[str, float]:
    """(final status, seconds) of a submitted job; a job still running after ``timeout`` fails the
    test with its log tail and, when given, ``diagnose()`` (e.g. the autoscaler's own log)."""
    from ray.job_submission import JobStatus

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value), time.perf_counter() - t0
        time.sleep(1.0)
    client.stop_job(job_id)
    extra = f"\n{diagnose()}" if diagnose else ""
    pytest.fail(f"job {job_id} not done after {timeout} s; logs:\n{client.get_job_logs(job_id)[-4000:]}{extra}")


def tiny_classifier_inputs(tmp_path: Path) -> tuple[str, Path]:
    """(labelled manifest, MobileNetV2 state-dict file) for a seconds-long classifier job: the file
    stands in for torchvision's ImageNet download (same keys and shapes)."""
    import torch
    import torchvision.models as tvm

    from artextract.synthetic_styles import write_labelled_collection

    manifest = write_labelled_collection(str(tmp_path / "styles"), per_style=8, size=40)
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), weights)
    return manifest, weights
