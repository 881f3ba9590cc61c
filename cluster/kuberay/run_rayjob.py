"""Create a RayJob from a manifest, wait for it with a bounded timeout, exit non-zero if it fails.

The nightly CronJob (cronjob-reindex.yaml) runs this in the artextract image, with the pod's
service account (in-cluster API address, token and CA), so no kubectl image is needed:

    python cluster/kuberay/run_rayjob.py --manifest cluster/kuberay/rayjob-reindex.yaml --keep 7

The RayJob gets the manifest's name plus the UTC date (one per night; a rerun the same day replaces
it). It fails as soon as KubeRay says the submission failed (``jobDeploymentStatus`` Failed or
ValidationFailed: a bad image, no cluster, a rejected spec) or the Ray job ends FAILED/STOPPED, and
after ``--timeout-s`` at the latest. The newest ``--keep`` RayJobs with the same
``artextract.io/job`` label are kept, older ones deleted (the Ray dashboard keeps their logs).
Standard library + PyYAML only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

import yaml

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
FAILED_DEPLOYMENT = {"Failed", "ValidationFailed"}
FAILED_JOB = {"FAILED", "STOPPED"}


class Api:
    """The few Kubernetes API calls we need, authenticated with a bearer token."""

    def __init__(self, base: str, token: str, ca_file: str | None, namespace: str):
        self.base, self.token, self.ns = base.rstrip("/"), token, namespace
        self.ctx = ssl.create_default_context(cafile=ca_file) if base.startswith("https") else None

    def call(self, method: str, path: str, body: dict | None = None, attempts: int = 5) -> dict | None:
        """JSON in, JSON out; None on 404. An API server restart or a 429/5xx during a 20 h wait is
        retried with backoff (``attempts`` tries), not taken for the job's failure."""
        for attempt in range(attempts):
            req = urllib.request.Request(f"{self.base}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json", "Accept": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30, context=self.ctx) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code not in (429, 500, 502, 503, 504) or attempt == attempts - 1:
                    raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
            except urllib.error.URLError as exc:
                if attempt == attempts - 1:
                    raise RuntimeError(f"{method} {path}: {exc.reason}") from None
            time.sleep(min(30.0, 2.0 ** attempt))
        raise AssertionError("unreachable")

    def rayjobs(self, name: str = "") -> str:
        return f"/apis/ray.io/v1/namespaces/{self.ns}/rayjobs" + (f"/{name}" if name else "")


def _in_cluster(args: argparse.Namespace) -> Api:
    base = args.api or f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    token = open(args.token_file or f"{SA}/token").read().strip()
    ns = args.namespace or open(f"{SA}/namespace").read().strip()
    return Api(base, token, args.ca_file if args.ca_file is not None else f"{SA}/ca.crt", ns)


def _replace(api: Api, name: str, wait_s: float, poll_s: float) -> None:
    """Delete a RayJob of the same name (an earlier run today) and wait until it is gone."""
    if api.call("DELETE", api.rayjobs(name), {"propagationPolicy": "Foreground"}) is None:
        return
    deadline = time.monotonic() + wait_s
    while api.call("GET", api.rayjobs(name)) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rayjob {name}: still deleting after {wait_s:g} s")
        time.sleep(poll_s)


def wait(api: Api, name: str, timeout_s: float, poll_s: float) -> tuple[bool | None, str]:
    """(succeeded, what happened) once the RayJob is terminal; (None, ...) after ``timeout_s``."""
    deadline, last = time.monotonic() + timeout_s, ""
    while True:
        job = api.call("GET", api.rayjobs(name))
        if job is None:
            return False, f"rayjob {name} disappeared"
        st = job.get("status") or {}
        deploy, status = st.get("jobDeploymentStatus", ""), st.get("jobStatus", "")
        why = " ".join(x for x in (st.get("reason", ""), st.get("message", "")) if x)
        now = f"deployment {deploy or '-'}, job {status or '-'}"
        if now != last:
            print(f"rayjob {name}: {now}", flush=True)
            last = now
        if status == "SUCCEEDED":
            return True, f"rayjob {name} succeeded"
        if status in FAILED_JOB:
            return False, f"rayjob {name}: Ray job {status} {why}".strip()
        if deploy in FAILED_DEPLOYMENT:
            return False, f"rayjob {name}: submission {deploy} {why}".strip()
        if deploy == "Complete":  # finished without a SUCCEEDED job status
            return False, f"rayjob {name}: complete with job status {status or 'unknown'} {why}".strip()
        if time.monotonic() > deadline:
            return None, f"rayjob {name}: not finished after {timeout_s:g} s ({now})"
        time.sleep(poll_s)


def prune(api: Api, label: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` RayJobs labelled ``artextract.io/job=<label>``."""
    items = (api.call("GET", api.rayjobs() + f"?labelSelector=artextract.io%2Fjob%3D{label}") or {}).get("items", [])
    items.sort(key=lambda j: j["metadata"].get("creationTimestamp", ""))
    old = [j["metadata"]["name"] for j in items[:max(0, len(items) - keep)]]
    for name in old:
        api.call("DELETE", api.rayjobs(name), {"propagationPolicy": "Background"})
    return old


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", required=True, help="RayJob YAML (its name gets -YYYYMMDD appended)")
    p.add_argument("--suffix", default=None, help="name suffix (default: today's UTC date, YYYYMMDD)")
    p.add_argument("--timeout-s", type=float, default=78_000, help="give up after this long (default 21.7 h)")
    p.add_argument("--poll-s", type=float, default=30.0)
    p.add_argument("--keep", type=int, default=7, help="newest RayJobs with the same artextract.io/job label kept")
    p.add_argument("--api", default=None, help="API server URL (default: in-cluster)")
    p.add_argument("--token-file", default=None)
    p.add_argument("--ca-file", default=None, help="CA bundle for https ('' = system store)")
    p.add_argument("--namespace", default=None)
    args = p.parse_args(argv)
    job = yaml.safe_load(open(args.manifest))
    if not isinstance(job, dict) or job.get("kind") != "RayJob":
        print(f"{args.manifest}: not a RayJob manifest", file=sys.stderr)
        return 2
    meta = job.setdefault("metadata", {})
    label = meta.setdefault("labels", {}).setdefault("artextract.io/job", meta["name"])
    name = f"{meta['name']}-{args.suffix or dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d')}"
    meta["name"] = name
    try:
        api = _in_cluster(args)
        _replace(api, name, wait_s=300, poll_s=min(args.poll_s, 5))
        api.call("POST", api.rayjobs(), job)
        print(f"rayjob {name} created", flush=True)
        ok, what = wait(api, name, args.timeout_s, args.poll_s)
        print(what, file=sys.stdout if ok else sys.stderr, flush=True)
        if ok is None:
            # Stop it: a run past its night would overlap the next one (Forbid ends with this pod).
            api.call("DELETE", api.rayjobs(name), {"propagationPolicy": "Foreground"})
            print(f"rayjob {name} deleted (its Ray job stopped)", file=sys.stderr, flush=True)
        try:
            for old in prune(api, label, args.keep):
                print(f"rayjob {old} deleted (older than the newest {args.keep})")
        except RuntimeError as exc:  # housekeeping: never what decides the night's exit code
            print(f"run_rayjob: could not prune old RayJobs: {exc}", file=sys.stderr)
    except (RuntimeError, OSError, KeyError) as exc:
        print(f"run_rayjob: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
