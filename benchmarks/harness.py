"""The benchmarks' shared harness: the repository root, the machine a run measured on, waiting for
an idle machine, and docs/benchmarks.md section writing. (The local S3 server the benchmarks and
the tests share is ``tests/fixtures/s3.py``; the fault-injecting proxy is ``faultproxy.py``.)"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "nga" / "images"


# ---------------------------------------------------------------------------------------------
# Machine facts


def git_commit() -> str:
    """The checkout's commit (with '+ local changes' when the tree is dirty), or '?'."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + local changes' if dirty else ''}" if head else "?"


def machine() -> dict[str, str]:
    """Cores, RAM, CPU model, OS and the versions the numbers depend on."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from importlib import metadata

    from artextract.core.runinfo import versions

    v = versions()
    for extra in ("moto", "boto3"):
        try:
            v[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            pass
    return {"cores": f"{os.cpu_count()} logical ({usable} usable)", "cpu": model, "ram": ram,
            "os": f"{platform.system()} {platform.release()} {platform.machine()}",
            "versions": ", ".join(f"{k} {v[k]}" for k in v)}


def cpu_busy(seconds: float = 2.0) -> float | None:
    """Share of all cores busy over ``seconds`` (from /proc/stat); None where unavailable."""
    def snap() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle
    a = snap()
    time.sleep(seconds)
    b = snap()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def wait_for_idle(max_wait: float, threshold: float = 0.2, log: Callable[[str], None] = print) -> float:
    """On a shared machine, wait (up to ``max_wait`` s) until other processes use less than
    ``threshold`` of the cores, so a cold-start run does not start against a busy machine.
    Returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        busy = cpu_busy()
        waited = time.perf_counter() - t0
        if busy is None or busy < threshold:
            return waited
        if waited >= max_wait:
            log(f"  machine still {100 * busy:.0f}% busy after {waited:.0f} s; running anyway")
            return waited


# ---------------------------------------------------------------------------------------------
# Markdown file handling


def replace_section(text: str, title: str, body: str) -> str:
    """Replace the ``## title`` section of ``text`` with ``body`` (or append it); others stay."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n").rstrip() == f"## {title}"), None)
    if start is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + body + ("\n" + tail if tail else "")


HEADER = """# Benchmarks

Numbers here come from `make bench` (`python -m benchmarks.suite`, ~35-45 min: every
performance benchmark, then the Summary below) and from the model-quality benchmarks
`make bench-classifier` and `make bench-similarity` (`make bench-all`: everything, ~1.5 h), with
every baseline measured in the same run on the same machine; a section can be refreshed alone with
its `make bench-<name>`. Tests never assert timings.

"""


def write_doc(path: Path, sections: list[tuple[str, str]]) -> None:
    text = path.read_text() if path.exists() else HEADER
    for title, body in sections:
        text = replace_section(text, title, body)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
