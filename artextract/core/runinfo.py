"""What every job's summary.json carries besides its counts: versions, timings, host."""
from __future__ import annotations

import platform
import socket
import time
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from artextract.core import storage
from artextract.config import save_resolved

_PACKAGES = ("artextract", "ray", "torch", "torchvision", "facenet-pytorch", "pyarrow", "faiss-cpu",
             "numpy", "pillow", "scikit-learn", "scikit-image")


def versions() -> dict[str, str]:
    """Installed versions of the packages our outputs depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class JobRun:
    """Times a job and writes its resolved config at start and summary.json at the end."""

    def __init__(self, job: str, cfg: BaseModel, out_uri: str):
        self.job, self.cfg, self.out_uri = job, cfg, out_uri
        self.storage = getattr(cfg, "storage", None)
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self._mark = time.perf_counter()
        save_resolved(cfg, out_uri)

    def lap(self, name: str) -> float:
        """Record the seconds since the previous lap under ``name``."""
        now = time.perf_counter()
        self.timings[name] = round(now - self._mark, 3)
        self._mark = now
        return self.timings[name]

    def finish(self, counts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Write ``summary.json`` (counts, timings, versions) atomically and return it."""
        summary = {
            "job": self.job,
            "out": self.out_uri,
            "counts": counts,
            "timings_s": {**self.timings, "total": round(time.time() - self.started, 3)},
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "host": socket.gethostname(),
            "versions": versions(),
            **extra,
        }
        storage.write_json(storage.join(self.out_uri, "summary.json"), summary, self.storage)
        return summary
