"""The console is for people: our INFO lines by default, third-party INFO and Ray's internal
notices only with -v (each case in a fresh interpreter: logging is per-process state)."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, os
from artextract import console
console.setup({verbose})
logging.getLogger("faiss.loader").info("faiss-info")
logging.getLogger("matplotlib.font_manager").info("font-cache-info")
logging.getLogger("ray._private.authentication.authentication_token_setup").warning("token-auth-notice")
logging.getLogger("artextract.pipelines.preprocess").info("our-progress")
logging.getLogger("artextract.stages.read").warning("our-warning")
print("backend", os.environ.get("RAY_BACKEND_LOG_LEVEL"), "verbose", os.environ["ARTEXTRACT_VERBOSE"])
"""


def _run(verbose: bool) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(verbose=verbose)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_default_console_keeps_ours_and_drops_library_noise():
    out = _run(False)
    assert "our-progress" in out and "WARNING artextract.stages.read: our-warning" in out
    for noise in ("faiss-info", "font-cache-info", "token-auth-notice"):
        assert noise not in out, noise
    assert "backend fatal verbose 0" in out  # the core worker's C++ log is quiet too


def test_verbose_console_shows_everything():
    out = _run(True)
    for line in ("faiss-info", "font-cache-info", "token-auth-notice", "our-progress", "our-warning"):
        assert line in out, line
    assert "backend None verbose 1" in out


def test_verbose_console_never_logs_aws_credentials(s3_endpoint, s3_bucket):
    """``artextract -v`` turns DEBUG on everywhere, but botocore's DEBUG lines carry the request
    headers (access key id in Authorization, the session token): those loggers stay at INFO."""
    import os

    from tests.conftest import TEST_KEY_ID

    token = "FAKE-SESSION-TOKEN-abcdef123456"
    script = f"""
import boto3, logging
from artextract import console
console.setup(True)
logging.getLogger("artextract.core.storage").debug("our-debug-line")
s3 = boto3.client("s3", endpoint_url={s3_endpoint!r}, region_name="us-east-1")
s3.put_object(Bucket={s3_bucket!r}, Key="k.txt", Body=b"x")
s3.list_objects_v2(Bucket={s3_bucket!r})
"""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in ("PATH", "HOME")}
    env["AWS_SESSION_TOKEN"] = token
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "our-debug-line" in out  # -v still shows DEBUG lines
    assert TEST_KEY_ID not in out and token not in out and "X-Amz-Security-Token" not in out


def test_a_command_stops_the_local_ray_it_started_and_only_that():
    """A command stops its own local Ray itself (Ray's atexit hook would first sleep 0.5 s), and
    never a Ray that was running before it (a test session, a notebook; test_preprocess checks
    that a command run in-process leaves the session's Ray up)."""
    import os

    script = ("from artextract.config import RayConfig\n"
              "from artextract.pipelines import ray_env\n"
              "ray = ray_env.init_ray(RayConfig(num_cpus=1))\n"
              "assert ray_env.ray_running()\n"
              "ray_env.stop_local_ray(was_running=True)\n"
              "assert ray.is_initialized()\n"
              "ray_env.stop_local_ray(was_running=False)\n"
              "print(ray.is_initialized())\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ARTEXTRACT_VERBOSE": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
