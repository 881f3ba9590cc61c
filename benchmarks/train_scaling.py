"""Training scaling benchmark: the CNN-RNN classifier with Ray Train on 1 vs 2 workers (CPU, gloo).

Why: ``train.workers=N`` is how training scales out; on one machine the question is whether DDP
over gloo with N processes keeps up with one process using the same cores. Both runs use the same
data, config (configs/wikiart_classifier.yaml), global batch and a fixed number of optimizer steps
(``train.max_steps``), and the same total intra-op threads (cores / workers per worker).

Reported per run: samples/s over the training steps (the loop's own ``images_per_s``: samples seen by
all workers over the epoch's seconds, data loading included, validation and checkpointing not) and
the wall time of ``artextract.train.classifier.run`` (worker start, process group, data preparation,
steps, the final validation and checkpoint). ``ray.init`` happens once before both and is reported
apart. Data: the WikiArt sample in ../shared/data when present, else a generated labelled collection.
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

from benchmarks.harness import REPO, git_commit, machine, wait_for_idle, write_doc

SECTION = "Training scaling (Ray Train, 1 vs 2 workers)"
WIKIART = REPO.parent / "shared" / "data" / "wikiart"
FULL = {"steps": 24, "batch": 32, "image_size": 128}
QUICK = {"steps": 4, "batch": 8, "image_size": 32}
QUICK_MODEL = ["model.reduce_channels=16", "model.hidden=8", "data.augment=false"]


def dataset(work: Path, quick: bool) -> tuple[str, str]:
    """(manifest URI, description): the WikiArt sample when present (and not quick), else generated."""
    if not quick and (WIKIART / "images").is_dir():
        from artextract.config import IngestWikiartConfig
        from artextract.ingest import wikiart

        manifest = str(work / "manifest")
        wikiart.run(IngestWikiartConfig(splits=str(WIKIART / "artgan_splits"), images=str(WIKIART / "images"),
                                        out=manifest))
        return manifest, f"WikiArt sample ({WIKIART})"
    from artextract.synthetic_styles import write_labelled_collection

    per_style, size = (8, 40) if quick else (24, 96)
    return (write_labelled_collection(str(work / "styles"), per_style=per_style, size=size),
            f"generated labelled collection ({per_style} images per style, {size} px)")


def train_once(manifest: str, out: Path, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One ``classifier.run`` with ``workers`` Ray Train workers; returns its throughput and wall."""
    from artextract.config import ClassifierTrainConfig, load_config
    from artextract.train import classifier

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    over = [f"data.input={manifest}", f"out={out}", f"train.workers={workers}", f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch}", f"data.image_size={args.image_size}", "train.resume=false",
            f"train.torch_threads={threads}", f"train.cpus_per_worker={args.cpus_per_worker}",
            "train.eval_every=1000", "train.max_failures=0", "data.val_fraction=0.02", *args.set]
    if args.quick:
        over += QUICK_MODEL
    cfg = load_config(ClassifierTrainConfig, str(REPO / "configs" / "wikiart_classifier.yaml"), over)
    t0 = time.perf_counter()
    summary = classifier.run(cfg)
    wall = time.perf_counter() - t0
    import json

    # Several (partial) epochs when the collection is small: sum the loop's own epoch seconds.
    history = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines() if ln.strip()]
    steps = summary["counts"]["steps"]
    train_s = sum(h.get("seconds") or 0.0 for h in history)
    return {"workers": workers, "threads": threads, "steps": steps, "samples": steps * args.batch,
            "samples_s": steps * args.batch / train_s if train_s else None, "train_s": train_s, "wall_s": wall,
            "train_rows": summary["counts"]["train_rows"]}


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Prepare the data, start Ray, train with 1 then 2 workers; returns the results."""
    from artextract.config import RayConfig
    from artextract.pipelines.ray_env import init_ray

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="artextract-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        manifest, desc = dataset(work, args.quick)
        prep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        init_ray(RayConfig(), quiet_workers=True)  # as the training jobs start it
        ray_s = time.perf_counter() - t0
        runs: list[dict[str, Any]] = []
        waited: list[float] = []
        loads = [os.getloadavg()[0]]
        for rep in range(args.repeats):
            for w in (1, 2):
                if args.wait_idle:
                    waited.append(wait_for_idle(args.wait_idle, log=lambda m: print(m, file=sys.stderr)))
                print(f"[bench-train] {w} worker(s), repeat {rep + 1}", file=sys.stderr, flush=True)
                runs.append(train_once(manifest, work / f"w{w}-r{rep}", w, args))
                print(f"[bench-train]   {runs[-1]['samples_s']} samples/s, wall {runs[-1]['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    def best(w: int, key: str) -> float | None:
        vals = [r[key] for r in runs if r["workers"] == w and r[key]]
        return max(vals) if key == "samples_s" else (min(vals) if vals else None)

    loads.append(os.getloadavg()[0])
    one, two = best(1, "samples_s"), best(2, "samples_s")
    return {"started": started, "command": "python -m benchmarks.train_scaling "
            + " ".join(map(shlex.quote, argv)), "quick": args.quick, "data": desc, "prepare_s": prep_s,
            "ray_start_s": ray_s, "runs": runs, "samples_s_1": one, "samples_s_2": two,
            "ratio": two / one if one and two else None, "steps": args.steps, "batch": args.batch,
            "image_size": args.image_size, "loads": loads, "waited_s": waited, "wait_idle": args.wait_idle,
            "commit": git_commit(), "info": machine()}


def section(r: dict[str, Any]) -> str:
    """The ``## Training scaling`` markdown section."""
    info = r["info"]
    lines = [f"## {SECTION}", ""]
    if r["quick"]:
        lines += ["> **Quick smoke run**: tiny model and images, a few steps; not a benchmark.", ""]
    lines += [f"Command: `{r['command']}`  ", f"Date: {r['started']}; commit {r['commit']}  ",
              f"Machine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, {info['os']}; CPU, gloo  ",
              f"Load average (1 min) at start / end: {r['loads'][0]:.2f} / {r['loads'][1]:.2f}"
              + (f"; before each run the harness waited up to {r['wait_idle']:.0f} s for idle cores: "
                 f"{' / '.join(f'{w:.0f} s' for w in r['waited_s'])}" if r["wait_idle"] else "") + "  ",
              f"Data: {r['data']} (prepared in {r['prepare_s']:.0f} s); configs/wikiart_classifier.yaml at "
              f"{r['image_size']} px, global batch {r['batch']}, {r['steps']} steps per run; `ray.init` "
              f"{r['ray_start_s']:.1f} s before both.", "",
              "| workers | torch threads / worker | steps | samples | train s | samples/s | wall s (incl. start-up, "
              "final validation + checkpoint) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["runs"]:
        lines.append(f"| {x['workers']} | {x['threads']} | {x['steps']} | {x['samples']} | {x['train_s'] or 0:.1f} | "
                     f"{x['samples_s'] or 0:.1f} | {x['wall_s']:.1f} |")
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "–"
    lines += ["", f"- 2 workers / 1 worker samples/s (best run of each, runs interleaved 1, 2, 1, 2, ...): **{ratio}** "
              f"(same cores: 1 x {r['runs'][0]['threads']} threads vs 2 x fewer threads; above 1x means DDP's "
              "process parallelism beats intra-op threads here, below 1x that the all-reduce and the second "
              "process cost more than they gain).",
              *([f"- **The machine was busy** (load average up to {max(r['loads']):.1f}): other processes competed "
                 "for the cores, so the rates are noisy; rerun on an idle machine for clean numbers."]
                if max(r["loads"]) > 1.5 * (os.cpu_count() or 1) else []), ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file; only this section is replaced")
    p.add_argument("--quick", action="store_true", help="tiny model/images, few steps (a temp file unless --out)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="global batch")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="runs per worker count, interleaved; "
                   "the best is reported (default 2, --quick 1)")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="Ray CPUs per worker (default 1; quick 0.5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    p.add_argument("--wait-idle", type=float, default=None, metavar="S", help="before each run wait up to S s for "
                   "the cores to be idle (shared machine; default 300, --quick 0)")
    p.add_argument("--work", help="working folder, kept afterwards (default: a temp folder, removed)")
    return p


def main(argv: list[str] | None = None, sink: dict[str, Any] | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict for the suite."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.steps, args.batch = args.steps or sizes["steps"], args.batch or sizes["batch"]
    args.image_size = args.image_size or sizes["image_size"]
    args.cpus_per_worker = args.cpus_per_worker or (0.5 if args.quick else 1.0)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 300.0
    res = run(args, argv)
    if sink is not None:
        sink.update(res)
    out = Path(args.out) if not args.quick or any(a.startswith("--out") for a in argv) else \
        Path(tempfile.mkstemp(prefix="benchmarks-quick-", suffix=".md")[1])
    body = section(res)
    write_doc(out, [(SECTION, body)])
    print(body)
    print(f"bench-train: wrote {out}", file=sys.stderr)
    return 0 if res["ratio"] else 1


if __name__ == "__main__":
    sys.exit(main())
