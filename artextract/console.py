"""What a run prints. By default: our own log lines, one progress bar per stage (tqdm: done/total,
rate, ETA) and the job's summary. Library noise (Ray's internal warnings, faiss/matplotlib INFO)
only with ``artextract -v``.

Ray's noise comes from three places, each silenced through Ray's own settings, never by filtering
our output: the driver's Python loggers (token-auth notice), the C++ core worker's log
(``RAY_BACKEND_LOG_LEVEL``), and worker processes, whose output stays in Ray's log files unless
``-v``; for training, a ``worker_process_setup_hook`` also configures the workers' loggers (Ray
Train's PlacementGroupCleaner polls the State API, which a local Ray without a dashboard does not
serve, and warns every second; pipelines/ray_env.py says why other jobs go without it).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterable

from tqdm import tqdm

VERBOSE_ENV = "ARTEXTRACT_VERBOSE"
# Ray loggers that only speak of Ray's own state; their WARNINGs are noise to a user of a job.
_RAY_NOISE = (
    "ray._private.authentication",                                   # "Token authentication is enabled"
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "ray.data._internal.progress",                                   # "progress bars disabled" notice
    "ray.data._internal.execution.streaming_executor",
)


# AWS SDK loggers: at DEBUG botocore logs every request's headers (the access key id inside
# Authorization, X-Amz-Security-Token) and urllib3 the signed URLs. Held at INFO even with -v.
_CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore")


def _guard_credentials() -> None:
    for name in _CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def verbose() -> bool:
    """True when the user asked for everything (``-v``); inherited by Ray workers via the env."""
    return os.environ.get(VERBOSE_ENV) == "1"


def setup(is_verbose: bool = False) -> None:
    """Configure the console of the ``artextract`` command (call once, before Ray starts)."""
    os.environ[VERBOSE_ENV] = "1" if is_verbose else "0"
    if is_verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _guard_credentials()
        return
    # Third-party INFO (faiss loader, matplotlib font cache, ...) stays out: root at WARNING, ours
    # at INFO, one handler (on the root, so pytest's caplog and embedding applications see ours).
    _attach_ours()
    quiet_ray()


def _attach_ours() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OurFormatter())
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("artextract").setLevel(logging.INFO)


class _OurFormatter(logging.Formatter):
    """``HH:MM:SS message`` for our INFO lines; level and logger name for warnings and errors."""

    _plain = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    _named = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return (self._plain if record.levelno <= logging.INFO else self._named).format(record)


def quiet_ray() -> None:
    """Silence Ray's internal noise in this process (and, through the env, in the local Ray it starts)."""
    if verbose():
        return
    # The core worker's C++ log (e.g. "constructor arguments in the object store") goes to stderr
    # at ERROR; the condition it reports never fails a job of ours, and real failures raise.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    logging.getLogger("ray").setLevel(logging.WARNING)
    for name in _RAY_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


def worker_setup() -> None:
    """``worker_process_setup_hook`` of a local Ray started for training (``init_ray(quiet_workers=True)``):
    the same quiet loggers in every worker."""
    quiet_ray()
    _guard_credentials()
    if not verbose():
        _attach_ours()  # a worker's root logger has no handler: our INFO lines would be lost


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "img") -> tqdm:
    """A progress bar on stderr for one stage (done/total, rate, ETA); off with ARTEXTRACT_PROGRESS=0."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, disable=os.environ.get("ARTEXTRACT_PROGRESS") == "0", leave=True)
