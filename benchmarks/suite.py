"""``python -m benchmarks.suite [--quick] [--only a,b] [--skip a,b] [--out FILE] [--work DIR]``

Runs every benchmark in sequence (each writes its own section, as its own command does) and writes
a ``## Summary`` at the top of the document: date, machine, command, commit, total wall time and one
row per headline ratio, every baseline measured in the same run. Why one harness: a ratio is only
meaningful when both sides ran on the same machine, the same day, from the same commit.

Full sizes are each module's documented defaults (about 1.5 h in all on a 2-core machine, most of it
the classifier and similarity training budgets; ``make bench`` skips those two model-quality
benchmarks, which have their own targets, and takes ~45 min; ``make bench-all`` runs everything).
``--quick`` runs tiny sizes (a smoke test of the whole harness, numbers meaningless) into a
temporary file unless ``--out`` is given, with one Ray for the whole run (the preprocess and
reliability jobs attach to it instead of a cold Ray start each); the classifier and similarity
benchmarks need the real data and minutes of training, so ``--quick`` records them as skipped.
Benchmarks left out with ``--only``/``--skip`` keep their previous summary rows (their run date
shows they are older). A failing benchmark is recorded with its reason; the others still run and
the exit code is non-zero.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from benchmarks import rows as R
from benchmarks.harness import HEADER, git_commit, machine, replace_section
from benchmarks.preprocess import QUICK_CASES

Runner = Callable[[bool, str, "Path | None"], tuple[int, dict[str, Any]]]


def _call(module: str, argv: list[str]) -> tuple[int, dict[str, Any]]:
    """Run ``module.main(argv, sink)`` in-process; (exit code, the results it handed over)."""
    import importlib

    sink: dict[str, Any] = {}
    rc = importlib.import_module(module).main(argv, sink=sink)
    return int(rc or 0), sink


def _w(work: Path | None, name: str) -> list[str]:
    """``--work`` for a module only when the suite was given one (else each cleans its own temp dir)."""
    return ["--work", str(work / name)] if work is not None else []


def _ray_argv(quick: bool) -> list[str]:
    """--quick: the subprocess benchmarks (preprocess, reliability) attach their jobs to this process's
    Ray, started once, instead of a cold local Ray per job: ~10 s of start-up per job on 2 cores is
    what the full run measures, not what a smoke run of the harness checks."""
    if not quick:
        return []
    from artextract.config import RayConfig
    from artextract.pipelines.ray_env import init_ray

    return ["--ray-address", init_ray(RayConfig()).get_runtime_context().gcs_address]


def _gpu_argv(quick: bool) -> list[str]:
    import torch

    return [] if torch.cuda.is_available() and not quick else ["--dry-run"]


# key -> (runner(quick, out, work), rows(results, date)); quick=None in SKIP_QUICK: not run by --quick.
BENCHMARKS: dict[str, tuple[Runner, Callable[[dict[str, Any], str], list[dict[str, str]]]]] = {
    "preprocess": (lambda q, out, w: _call("benchmarks.__main__", ["--out", out, *_w(w, "preprocess")]
                                             + (["--quick", *_ray_argv(q)] if q else [])), R.preprocess),
    "embed": (lambda q, out, w: _call("benchmarks.embed", ["--out", out, *_w(w, "embed")]
                                      + (["--quick"] if q else [])), R.embed),
    "index": (lambda q, out, w: _call("benchmarks.index", ["--out", out, *_w(w, "index")]
                                      + (["--n", "10000", "--dim", "16", "--queries", "50", "--min-time", "0.01",
                                          "--threads", "1"] if q else [])), R.index),
    "train": (lambda q, out, w: _call("benchmarks.train_scaling", ["--out", out, *_w(w, "train")]
                                      + (["--quick"] if q else [])), R.train),
    "serve": (lambda q, out, w: _call("benchmarks.serve", ["--out", out, *_w(w, "serve")]
                                      + (["--n", "2000", "--queries", "20", "--clients", "2", "--shards", "2"]
                                         if q else [])), R.serve),
    "reliability": (lambda q, out, w: _call("benchmarks.reliability", ["--out", out]
                                            + (["--copies", "1", "--rates", "0.1", "--cases", ",".join(QUICK_CASES),
                                                *_ray_argv(q)] if q else [])), R.reliability),
    "similarity": (lambda q, out, w: _call("benchmarks.similarity", ["--out", out]), R.similarity),
    "classifier": (lambda q, out, w: _call("benchmarks.classifier", ["--out", out]), R.classifier),
    "gpu": (lambda q, out, w: _call("benchmarks.gpu", ["--out", out] + _gpu_argv(q)), R.gpu),
}
SKIP_QUICK = {"similarity": "needs ../shared/data and 8+ min of training per model: run `make bench-similarity`",
              "classifier": "needs ../shared/data and a 30 min training budget: run `make bench-classifier`"}


def _keys(spec: str | None) -> list[str]:
    keys = [k.strip() for k in (spec or "").split(",") if k.strip()]
    unknown = set(keys) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"bench.suite: unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return keys


def _log(t0: float, msg: str) -> None:
    print(f"[bench-suite {time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run_suite(selected: list[str], quick: bool, out: Path, work: Path | None, t0: float) -> list[dict[str, str]]:
    """Run the selected benchmarks one after another; summary rows (failures and skips included)."""
    rows: list[dict[str, str]] = []
    for key in selected:
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if quick and key in SKIP_QUICK:
            _log(t0, f"{key}: skipped in --quick ({SKIP_QUICK[key]})")
            rows.append(R.status_row(key, "skipped in --quick: " + SKIP_QUICK[key], date))
            continue
        runner, to_rows = BENCHMARKS[key]
        _log(t0, f"{key}: start")
        t = time.perf_counter()
        try:
            rc, res = runner(quick, str(out), work)
            got = to_rows(res, date) if res else []
            if rc != 0 or not got:
                reason = f"exit code {rc}" if rc != 0 else "no results handed over"
                got = got + [R.status_row(key, f"FAILED: {reason}", date)]
        except BaseException as exc:  # noqa: BLE001 - one benchmark's failure must not lose the others
            if isinstance(exc, KeyboardInterrupt):
                raise
            traceback.print_exc(file=sys.stderr)
            got = [R.status_row(key, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                                date)]
        rows.extend(got)
        _log(t0, f"{key}: {'FAILED' if R.failed(got) else 'done'} in {time.perf_counter() - t:.0f} s")
    return rows


def write_summary(out: Path, rows: list[dict[str, str]], ran: list[str], meta: dict[str, str]) -> None:
    """Write ``## Summary`` first in ``out``: this run's rows, plus the previous rows of benchmarks not run."""
    text = out.read_text() if out.exists() else HEADER
    old = R.parse_rows(text)
    merged = R.merge(old, rows, ran, list(BENCHMARKS))
    body = R.summary_section(merged, meta)
    if any(ln.rstrip() == f"## {R.SECTION}" for ln in text.splitlines()):
        text = replace_section(text, R.SECTION, body)
    else:
        lines = text.splitlines(keepends=True)
        first = next((i for i, ln in enumerate(lines) if ln.startswith("## ")), len(lines))
        head = "".join(lines[:first])
        text = head + ("" if head.endswith("\n\n") or not head else "\n") + body + "\n" + "".join(lines[first:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="tiny sizes for everything (into a temp file unless --out)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--skip", help="comma-separated benchmarks to leave out")
    p.add_argument("--out", help="markdown file (default docs/benchmarks.md; --quick: a temp file)")
    p.add_argument("--work", help="working folder, one sub-folder per benchmark, kept afterwards (default: "
                                  "each benchmark's own temp folder, removed)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    only, skip = _keys(args.only), _keys(args.skip)
    selected = [k for k in BENCHMARKS if (not only or k in only) and k not in skip]
    if args.out:
        out = Path(args.out)
    elif args.quick:
        out = Path(tempfile.mkstemp(prefix="benchmarks-quick-", suffix=".md")[1])
        out.write_text(HEADER)
    else:
        out = Path("docs/benchmarks.md")
    work = Path(args.work) if args.work else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _log(t0, f"{', '.join(selected)} -> {out}" + (f" (work {work})" if work else ""))
    rows = run_suite(selected, args.quick, out, work, t0)
    info = machine()
    meta = {"date": started, "command": "python -m benchmarks.suite " + " ".join(map(shlex.quote, argv)),
            "machine": f"{info['cores']} cores, {info['cpu']}, {info['ram']} RAM, {info['os']}",
            "commit": git_commit(), "wall": f"{(time.perf_counter() - t0) / 60:.1f} min", "quick": str(args.quick)}
    write_summary(out, rows, selected, meta)
    failed = [r for r in rows if R.failed([r])]
    _log(t0, f"wrote {out}; {len(failed)} failure(s)")
    print(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
