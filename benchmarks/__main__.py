"""``python -m benchmarks --out docs/benchmarks.md [--quick] [--repeats N] [--images DIR]``

Runs the preprocess benchmark (see ``benchmarks.preprocess``) and writes its results into
the ``## Preprocess`` section of the markdown file (other sections are kept). ``--sweep`` also
runs the pipeline config sweep into ``## Preprocess tuning``. ``--quick`` runs the same harness
on a few generated sample images once, into a temporary file unless ``--out`` is given: a smoke
test of the harness, not a benchmark. Every run is recorded in ``runs.json`` of the working
folder as it finishes; ``--render WORK/runs.json`` rewrites the report from it without rerunning.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks import preprocess as bp


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="markdown file to write (default docs/benchmarks.md; --quick: a temp file)")
    p.add_argument("--quick", action="store_true", help="smoke run on a few generated images, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant; median and best reported (default 2)")
    p.add_argument("--images", help=f"local folder of images (default {harness.DEFAULT_IMAGES})")
    p.add_argument("--variants", default="naive,ray_local,ray_s3",
                   help="main-table variants to run, comma-separated ('' for none: sweep only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the pipeline variants of the main table (repeatable)")
    p.add_argument("--sweep", action="store_true", help="also run the pipeline config sweep (## Preprocess tuning)")
    p.add_argument("--sweep-config", action="append", default=[], metavar="'K=V K=V'",
                   help="run these configs in the sweep instead of the built-in list (repeatable; implies --sweep)")
    p.add_argument("--sweep-repeats", type=int, default=None, help="runs per sweep config (default: --repeats)")
    p.add_argument("--wait-idle", type=float, default=None, metavar="S",
                   help="before each run wait up to S seconds for other processes to leave the cores "
                        "(< 20%% busy); default 300, --quick 0")
    p.add_argument("--work", help="working folder, kept afterwards (default: a temp folder, removed)")
    p.add_argument("--render", metavar="RUNS_JSON", help="only rewrite --out from a runs.json of an earlier run")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess before it is killed")
    p.add_argument("--ray-address", default="", help="attach the pipeline runs to this running Ray instead of "
                   "a cold local Ray each (the suite's --quick; timings then exclude the Ray start)")
    return p


def main(argv: list[str] | None = None, sink: dict[str, Any] | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``benchmarks.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.render:
        bench = bp.Bench.load(Path(args.render))
        return _report(bench, Path(args.out or "docs/benchmarks.md"), sink)
    repeats = args.repeats or (1 if args.quick else 2)
    if repeats < 1 or (args.sweep_repeats is not None and args.sweep_repeats < 1):
        print("bench: --repeats and --sweep-repeats must be >= 1", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="artextract-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, argv, repeats, work, sink)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, argv: list[str], repeats: int, work: Path,
         sink: dict[str, Any] | None = None) -> int:
    if args.quick:
        from artextract.samples import CASES, write_collection

        images = work / "samples"
        write_collection(images, {k: CASES[k] for k in bp.QUICK_CASES})
        out = Path(args.out) if args.out else Path(tempfile.mkstemp(prefix="benchmarks-quick-", suffix=".md")[1])
    else:
        images = Path(args.images) if args.images else harness.DEFAULT_IMAGES
        out = Path(args.out or "docs/benchmarks.md")
        if not images.is_dir() or not any(images.iterdir()):
            print(f"bench: no images at {images}: the preprocess benchmark needs the real data in "
                  "../shared/data/nga/images beside the checkout (or --images DIR); use --quick for a "
                  "smoke run on generated samples", file=sys.stderr)
            return 2
    variants = bp.main_variants(tuple(args.overrides))
    keys = [k.strip() for k in args.variants.split(",") if k.strip()]
    unknown = set(keys) - {v.key for v in variants}
    if unknown:
        print(f"bench: unknown variant(s) {sorted(unknown)}; choose from naive, ray_local, ray_s3", file=sys.stderr)
        return 2
    variants = [v for v in variants if v.key in keys]
    sweep = bp.sweep_variants([tuple(c.split()) for c in args.sweep_config] or None) \
        if args.sweep or args.sweep_config else []
    info = harness.machine()
    idle_wait = args.wait_idle if args.wait_idle is not None else (0.0 if args.quick else 300.0)
    bench = bp.Bench(images=images, work=work / "runs", repeats=repeats, timeout=args.timeout,
                     log=lambda m: print(m, flush=True), idle_wait=idle_wait, save_to=work / "runs.json",
                     ray_address=args.ray_address)
    bench.work.mkdir(parents=True, exist_ok=True)
    bench.meta = {"command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv),
                  "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "info": info,
                  "commit": harness.git_commit(),
                  "quick": args.quick, "images_desc": bp.describe(images), "main": [v.key for v in variants],
                  "sweep": [v.key for v in sweep], "loads": [os.getloadavg()[0]] * 2,
                  "ray_address": args.ray_address}
    print(f"bench: {images} -> {out}; {info['cores']} cores, {info['cpu']}; load {os.getloadavg()[0]:.2f}; "
          f"runs recorded in {bench.save_to}", flush=True)
    s3 = None
    try:
        if any(v.source == "s3" for v in variants):
            from tests.fixtures.s3 import LocalS3

            s3 = LocalS3().__enter__()
            bench.s3 = s3
            bench.s3_uri, n = s3.upload(images, "artextract-bench", "images")
            print(f"bench: uploaded {n} files to {bench.s3_uri} at {s3.endpoint}", flush=True)
        bench.run_all(variants, repeats)
        bench.meta["loads"][1] = os.getloadavg()[0]
        if sweep:
            reps = args.sweep_repeats or repeats
            bench.meta.update(sweep_started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              sweep_repeats=reps, sweep_loads=[os.getloadavg()[0]] * 2)
            bench.run_all(sweep, reps)
            bench.meta["sweep_loads"][1] = os.getloadavg()[0]
        bench.save()
    finally:
        if s3 is not None:
            s3.__exit__(None, None, None)
    return _report(bench, out, sink)


def _report(bench: bp.Bench, out: Path, sink: dict[str, Any] | None = None) -> int:
    """Write the sections for what ``bench`` ran into ``out``; non-zero when a run failed."""
    sections = []
    main_variants = bench.variants(bench.meta.get("main"))
    if main_variants:
        body, numbers = bp.preprocess_section(bench, main_variants)
        if sink is not None:
            sink.update(numbers=numbers, started=bench.meta["started"], quick=bench.meta.get("quick"))
        sections.append((bp.SECTION, body))
    sweep = bench.variants(bench.meta.get("sweep"))
    if sweep:
        sections.append((bp.TUNING_SECTION, bp.tuning_section(bench, sweep)))
    harness.write_doc(out, sections)
    for _, text in sections:
        print(text)
    print(f"bench: wrote {out}", flush=True)
    failed = [r for r in bench.runs if not r.ok]
    for r in failed:
        print(f"bench: {r.variant.key} run {r.repeat + 1} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
