"""cluster/kuberay/run_rayjob.py (what the nightly CronJob runs) against a fake Kubernetes API: it
creates the dated RayJob from the shipped manifest, follows its status, fails at once when KubeRay
reports a failed submission (not ~21.7 h later), gives up after its timeout, and keeps the newest N."""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "cluster" / "kuberay" / "rayjob-reindex.yaml"
PREFIX = "/apis/ray.io/v1/namespaces/art/rayjobs"


def _load():
    spec = importlib.util.spec_from_file_location("run_rayjob", REPO / "cluster" / "kuberay" / "run_rayjob.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeKube:
    """RayJobs in a dict; each GET of a created job advances it through ``statuses``."""

    def __init__(self, statuses: list[dict], old: int = 0):
        self.jobs: dict[str, dict] = {}
        for i in range(old):
            name = f"artextract-reindex-2026010{i}"
            self.jobs[name] = {"metadata": {"name": name, "creationTimestamp": f"2026-01-0{i}T02:00:00Z",
                                            "labels": {"artextract.io/job": "reindex"}}}
        self.statuses, self.created, self.auth = list(statuses), [], set()
        kube = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _name(self) -> str:
                return self.path.split("?")[0][len(PREFIX):].strip("/")

            def do_GET(self):
                kube.auth.add(self.headers.get("Authorization"))
                name = self._name()
                if not name:
                    sel = self.path.split("labelSelector=")[-1].replace("%2F", "/").replace("%3D", "=")
                    key, _, val = sel.partition("=")
                    items = [j for j in kube.jobs.values() if j["metadata"].get("labels", {}).get(key) == val]
                    return self._send(200, {"items": items})
                job = kube.jobs.get(name)
                if job is None:
                    return self._send(404, {})
                if name in kube.created and kube.statuses:
                    job["status"] = kube.statuses.pop(0) if len(kube.statuses) > 1 else kube.statuses[0]
                return self._send(200, job)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body["metadata"]["name"]
                body["metadata"]["creationTimestamp"] = "2026-12-02T02:00:00Z"
                kube.jobs[name], _ = body, kube.created.append(name)
                return self._send(201, body)

            def do_DELETE(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return self._send(200, {}) if kube.jobs.pop(self._name(), None) else self._send(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def run(tmp_path):
    mod, servers = _load(), []
    token = tmp_path / "token"
    token.write_text("secret-token\n")

    def go(statuses, *extra, old=0):
        kube = FakeKube(statuses, old)
        servers.append(kube)
        args = ["--manifest", str(MANIFEST), "--suffix", "20261202", "--api", kube.url, "--token-file", str(token),
                "--namespace", "art", "--poll-s", "0.05", *extra]
        t0 = time.perf_counter()
        return mod.main(args), kube, time.perf_counter() - t0

    yield go
    for s in servers:
        s.close()


def test_success_creates_the_dated_rayjob_and_keeps_the_newest(run, capsys):
    rc, kube, _ = run([{}, {"jobDeploymentStatus": "Initializing"}, {"jobDeploymentStatus": "Running",
                       "jobStatus": "RUNNING"}, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}],
                      "--keep", "3", old=4)
    assert rc == 0, capsys.readouterr()
    assert kube.created == ["artextract-reindex-20261202"] and kube.auth == {"Bearer secret-token"}
    job = kube.jobs["artextract-reindex-20261202"]
    assert job["spec"]["entrypoint"].startswith("python jobs/reindex.py --config configs/nga_reindex_gpu.yaml")
    assert sorted(kube.jobs) == ["artextract-reindex-20260102", "artextract-reindex-20260103",
                                 "artextract-reindex-20261202"]  # the 2 oldest of 5 pruned


@pytest.mark.parametrize("status, says", [
    ({"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed", "message": "no cluster artextract"},
     "submission Failed SubmissionFailed no cluster artextract"),
    ({"jobDeploymentStatus": "ValidationFailed", "message": "bad spec"}, "submission ValidationFailed bad spec"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "Ray job FAILED"),
])
def test_a_failed_submission_or_job_fails_at_once(run, capsys, status, says):
    rc, _, wall = run([{"jobDeploymentStatus": "Initializing"}, status], "--timeout-s", "600")
    assert rc == 1 and wall < 30
    assert says in capsys.readouterr().err


def test_gives_up_after_its_timeout_and_stops_the_rayjob(run, capsys):
    rc, kube, wall = run([{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}], "--timeout-s", "0.5")
    err = capsys.readouterr().err
    assert rc == 1 and 0.5 <= wall < 30 and "not finished after 0.5 s" in err
    assert "artextract-reindex-20261202" not in kube.jobs and "deleted (its Ray job stopped)" in err


def test_rerun_the_same_day_replaces_that_days_rayjob(run, capsys):
    mod = _load()
    kube = FakeKube([{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}])
    try:
        kube.jobs["artextract-reindex-20261202"] = {"metadata": {"name": "artextract-reindex-20261202"}}
        api = mod.Api(kube.url, "t", None, "art")
        mod._replace(api, "artextract-reindex-20261202", wait_s=5, poll_s=0.05)
        assert "artextract-reindex-20261202" not in kube.jobs
    finally:
        kube.close()
