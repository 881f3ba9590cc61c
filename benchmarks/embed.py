"""Embed benchmark: the ``artextract embed`` Ray Data pipeline vs. a plain PyTorch DataLoader loop.

Why: the embed stage is Ray Data batch inference (read tasks -> ``EmbedStage`` actor pool -> shard
writer). The claim to check is that Ray's orchestration costs (almost) nothing against the simplest
single-process alternative on the same machine: goal Ray img/s >= 0.95x the DataLoader's.

Both sides use the same model (``load_model(spec, dim, seed)``), the same JPEG crops in the same
order, the same batch size, the same transform (``decode_square``: RGB, bilinear resize, ImageNet
normalisation) and the same total intra-op threads (Ray: N actors x ``torch_threads``; DataLoader: one
process with N x ``torch_threads`` threads and N decode workers). The Ray side is
``artextract.pipelines.embed.run`` itself (plan, shards, reconcile), on a synthetic preprocess output
holding the crops in ``faces/part-00000.parquet``.

Timing: *end to end* is from the first batch requested to the last vector: Ray's ``pipeline_s``
(which includes starting the actor pool and loading the model in each actor) and the DataLoader loop
(its model load is done before and reported apart, as is ``ray.init``). *Steady state* excludes
start-up on both sides: vectors after the first ``shard_rows`` over the time from that point to the
last vector (Ray: the driver's shard-commit times; DataLoader: the same row counts).
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DEFAULT_IMAGES, git_commit, machine, wait_for_idle, write_doc

SECTION = "Embed (Ray Data vs DataLoader)"
GOAL = 0.95
FULL = {"rows": 1536, "shard_rows": 128, "crop": 160, "image_size": 160}
QUICK = {"rows": 96, "shard_rows": 32, "crop": 96, "image_size": 64}


def _err(msg: str) -> None:
    print(f"[bench-embed] {msg}", file=sys.stderr, flush=True)


def crops(images: Path | None, rows: int, side: int, seed: int = 0) -> list[bytes]:
    """``rows`` square JPEG crops (face-crop sized) cut at random from the source images; generated
    sample images when ``images`` is None or empty."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources: list[Image.Image] = []
    files = sorted(p for p in images.iterdir() if p.is_file()) if images and images.is_dir() else []
    if not files:
        from artextract.samples import CASES
        files_data = [make() for _, make, outcome in CASES.values() if outcome == "ok"]
    else:
        files_data = [p.read_bytes() for p in files]
    for data in files_data:
        try:
            im = Image.open(io.BytesIO(data))
            im.draft("RGB", (512, 512))
            sources.append(im.convert("RGB"))
        except Exception:  # noqa: BLE001 - skip unreadable sources
            continue
    out = []
    for i in range(rows):
        im = sources[i % len(sources)]
        s = int(min(im.size) * rng.uniform(0.2, 0.6))
        x, y = int(rng.integers(0, im.width - s + 1)), int(rng.integers(0, im.height - s + 1))
        buf = io.BytesIO()
        im.crop((x, y, x + s, y + s)).resize((side, side), Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_input(jpegs: list[bytes], pre: Path) -> list[str]:
    """A minimal preprocess output (``faces/part-00000.parquet``) that ``embed.plan`` reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"img{i:06d}" for i in range(len(jpegs))]  # zero-padded: plan order == list order
    nan = pa.array(np.full(len(ids), np.nan, np.float32))
    t = pa.table({"image_id": ids, "face_idx": pa.array(np.zeros(len(ids), np.int16)), "yaw": nan,
                  "pitch": nan, "roll": nan, "crop_jpeg": pa.array(jpegs, pa.binary())})
    (pre / "faces").mkdir(parents=True, exist_ok=True)
    pq.write_table(t, pre / "faces" / "part-00000.parquet")
    return ids


class _ShardTimes(logging.Handler):
    """Records (time, cumulative vectors) as the driver sees each shard committed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)  # pipelines.embed logs each committed shard at DEBUG
        self.marks: list[tuple[float, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("embedding shard"):
            total = (self.marks[-1][1] if self.marks else 0) + int(record.args[-1])
            self.marks.append((time.perf_counter(), total))


def steady(marks: list[tuple[float, int]], skip: int) -> float | None:
    """Vectors per second after the first ``skip`` vectors, from (time, cumulative vectors) marks."""
    first = next(((t, n) for t, n in marks if n >= skip), None)
    if first is None or marks[-1][1] <= first[1] or marks[-1][0] <= first[0]:
        return None
    return (marks[-1][1] - first[1]) / (marks[-1][0] - first[0])


def run_ray(pre: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``artextract embed`` (pipelines.embed.run) on the synthetic input; vectors sorted by image_id."""
    from artextract.core import storage
    from artextract.config import EmbedConfig, RayConfig
    from artextract.pipelines import embed
    from artextract.pipelines.ray_env import cluster_counts, init_ray

    cfg = EmbedConfig(input=str(pre), out=str(out), model=args.model, image_size=args.image_size, dim=args.dim,
                      batch_size=args.batch_size, shard_rows=args.shard_rows, torch_threads=args.torch_threads,
                      overwrite=True, device="cpu", ray=RayConfig())
    t0 = time.perf_counter()
    ray = init_ray(cfg.ray)
    ray_start = time.perf_counter() - t0
    cpus, _ = cluster_counts(ray)
    actors = cfg.actors or max(1, int((cpus - cfg.resources.read.num_cpus) // cfg.resources.embed.num_cpus))
    handler = _ShardTimes()
    lg = logging.getLogger(embed.__name__)
    old_level = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(handler)
    try:
        t1 = time.perf_counter()
        summary = embed.run(cfg)
        wall = time.perf_counter() - t1
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old_level)
    t = storage.read_parquet(str(out), columns=["image_id", "vector"]).sort_by("image_id")
    vectors = np.asarray(t["vector"].combine_chunks().values.to_numpy(), np.float32).reshape(len(t), -1)
    n = summary["counts"]["vectors_out"]
    return {"vectors": vectors, "rows": n, "ray_start_s": ray_start, "run_wall_s": wall,
            "pipeline_s": summary["pipeline_s"], "img_s": n / summary["pipeline_s"],
            "steady_img_s": steady(handler.marks, args.shard_rows), "actors": actors, "cpus": cpus}


def run_loader(jpegs: list[bytes], args: argparse.Namespace, threads: int, workers: int) -> dict[str, Any]:
    """The plain PyTorch loop: Dataset decodes with ``decode_square``, DataLoader batches, model in-process."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from artextract.stages.embed import decode_square, load_model

    class Crops(Dataset):
        def __len__(self) -> int:
            return len(jpegs)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.from_numpy(decode_square(jpegs[i], args.image_size)).permute(2, 0, 1).contiguous()

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        model, _ = load_model(args.model, args.dim, args.seed)
        load_s = time.perf_counter() - t0
        loader = DataLoader(Crops(), batch_size=args.batch_size, shuffle=False, num_workers=workers)
        out, marks, done = [], [], 0
        t1 = time.perf_counter()
        with torch.inference_mode():
            for x in loader:
                v = torch.nn.functional.normalize(model(x).float(), dim=1)
                out.append(v.numpy())
                done += len(v)
                marks.append((time.perf_counter(), done))
        loop_s = time.perf_counter() - t1
    finally:
        torch.set_num_threads(saved)
    return {"vectors": np.concatenate(out), "rows": done, "model_load_s": load_s, "loop_s": loop_s,
            "img_s": done / loop_s, "steady_img_s": steady(marks, args.shard_rows)}


def _layout(args: argparse.Namespace) -> tuple[int, int]:
    """DataLoader (torch threads, decode workers) matching the Ray actor pool ``embed`` picks here."""
    from artextract.config import EmbedConfig

    d = EmbedConfig()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    actors = max(1, int((cpus - d.resources.read.num_cpus) // d.resources.embed.num_cpus))
    return (args.loader_threads or actors * args.torch_threads,
            actors if args.loader_workers is None else args.loader_workers)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run both sides (DataLoader first, before Ray has any workers busy); returns the results."""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="artextract-bench-embed-"))
    work.mkdir(parents=True, exist_ok=True)
    images = None if args.quick else Path(args.images or DEFAULT_IMAGES)
    real = bool(images and images.is_dir() and any(images.iterdir()))
    try:
        t0 = time.perf_counter()
        jpegs = crops(images, args.rows, args.crop)
        write_input(jpegs, work / "pre")
        src = (f"{args.rows} random square crops ({args.crop} px JPEG) of the "
               + (f"{sum(1 for p in images.iterdir() if p.is_file())} images in {images}" if real and images
                  else "generated sample images") + f", made in {time.perf_counter() - t0:.1f} s")
        _err(src)
        threads, workers = _layout(args)
        loads = [os.getloadavg()[0]]
        waited = [wait_for_idle(args.wait_idle, log=_err) if args.wait_idle else 0.0]
        loader = run_loader(jpegs, args, threads, workers)
        _err(f"DataLoader: {loader['img_s']:.1f} img/s")
        waited.append(wait_for_idle(args.wait_idle, log=_err) if args.wait_idle else 0.0)
        ray = run_ray(work / "pre", work / "emb", args)
        loads.append(os.getloadavg()[0])
        _err(f"Ray Data: {ray['img_s']:.1f} img/s")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    diff = float(np.abs(ray.pop("vectors") - loader.pop("vectors")).max())
    return {"started": started, "command": "python -m benchmarks.embed " + " ".join(map(shlex.quote, argv)),
            "quick": args.quick, "source": src, "model": args.model, "image_size": args.image_size,
            "batch_size": args.batch_size, "dim": args.dim, "shard_rows": args.shard_rows,
            "torch_threads": args.torch_threads, "loader_threads": threads, "loader_workers": workers,
            "ray": ray, "loader": loader, "max_abs_diff": diff, "loads": loads, "waited_s": waited,
            "wait_idle": args.wait_idle, "ratio": _ratio(ray["img_s"], loader["img_s"]),
            "steady_ratio": _ratio(ray["steady_img_s"], loader["steady_img_s"]), "goal": GOAL,
            "commit": git_commit(), "info": machine()}


def _f(x: float | None, fmt: str = ".1f") -> str:
    return format(x, fmt) if x is not None else "–"


def section(r: dict[str, Any]) -> str:
    """The ``## Embed (Ray Data vs DataLoader)`` markdown section."""
    ray, dl, info = r["ray"], r["loader"], r["info"]
    met = r["steady_ratio"] is not None and r["steady_ratio"] >= GOAL
    lines = [f"## {SECTION}", ""]
    if r["quick"]:
        lines += ["> **Quick smoke run**: tiny sizes, exercises the harness; not a benchmark.", ""]
    lines += [
        f"Command: `{r['command']}`  ",
        f"Date: {r['started']}; commit {r['commit']}  ",
        f"Machine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, {info['os']}  ",
        f"Load average (1 min) at start / end: {r['loads'][0]:.2f} / {r['loads'][1]:.2f}"
        + (f"; before each side the harness waited up to {r['wait_idle']:.0f} s for other processes to leave "
           f"the cores (< 20% busy): {' / '.join(f'{w:.0f} s' for w in r['waited_s'])}" if r["wait_idle"] else "")
        + "  ",
        f"Data: {r['source']}; model `{r['model']}` at {r['image_size']} px, batch {r['batch_size']}.  ",
        f"Ray: `artextract.pipelines.embed.run` (the code path of `artextract embed`), {ray['actors']} "
        f"`EmbedStage` actors x {r['torch_threads']} torch thread(s) on {ray['cpus']:.0f} Ray CPUs, "
        f"shards of {r['shard_rows']} rows. DataLoader: one process, {r['loader_threads']} torch threads, "
        f"{r['loader_workers']} decode worker(s), same model, crops, order, batch and transform.", "",
        "| variant | vectors | end-to-end s | img/s end to end | img/s steady state | start-up reported apart |",
        "|---|---:|---:|---:|---:|---|",
        f"| Ray Data pipeline | {ray['rows']} | {ray['pipeline_s']:.1f} | {ray['img_s']:.1f} | "
        f"{_f(ray['steady_img_s'])} | `ray.init` {ray['ray_start_s']:.1f} s; `embed.run` wall "
        f"{ray['run_wall_s']:.1f} s (plan + pipeline + reconcile) |",
        f"| PyTorch DataLoader loop | {dl['rows']} | {dl['loop_s']:.1f} | {dl['img_s']:.1f} | "
        f"{_f(dl['steady_img_s'])} | model load {dl['model_load_s']:.1f} s |", "",
        f"- Ray / DataLoader, steady state: **{_f(r['steady_ratio'], '.2f')}x** (goal ≥ {GOAL}x: "
        f"{'**met**' if met else '**not met**'}); end to end: {_f(r['ratio'], '.2f')}x (Ray's includes starting "
        "the actor pool and loading the model in every actor).",
        "- *End to end*: first batch requested to last vector (Ray: `pipeline_s` of `embed.run`, which "
        "includes starting the actor pool and loading the model in each actor; DataLoader: the loop, its model "
        f"loaded before). *Steady state*: vectors after the first {r['shard_rows']} over the time from then to "
        "the last vector (Ray: shard-commit times seen by the driver), i.e. without either side's start-up.",
        *([f"- **The machine was busy** (load average up to {max(r['loads']):.1f} on {ray['cpus']:.0f} cores): "
           "other processes competed for the cores, so both rates are low and their ratio noisy; rerun on an "
           "idle machine for clean numbers."] if max(r["loads"]) > 1.5 * (ray["cpus"] or 1) else []),
        f"- Vectors agree: max abs difference {r['max_abs_diff']:.2e} over {ray['rows']} x "
        f"{r['dim']} values (different thread counts may reorder float sums).", ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file; only this section is replaced")
    p.add_argument("--quick", action="store_true", help="tiny smoke run on generated images (a temp file "
                                                         "unless --out is given)")
    p.add_argument("--images", help=f"source images for the crops (default {DEFAULT_IMAGES})")
    p.add_argument("--rows", type=int, default=None, help=f"vectors to compute (default {FULL['rows']})")
    p.add_argument("--crop", type=int, default=None, help="side of the stored JPEG crops")
    p.add_argument("--model", default="untrained:resnet18")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-rows", type=int, default=None)
    p.add_argument("--torch-threads", type=int, default=1, help="per Ray actor (the embed default)")
    p.add_argument("--loader-threads", type=int, default=None, help="DataLoader torch threads (default: "
                                                                     "actors x torch-threads)")
    p.add_argument("--loader-workers", type=int, default=None, help="DataLoader decode workers (default: actors)")
    p.add_argument("--wait-idle", type=float, default=None, metavar="S", help="before each side wait up to S s for "
                   "the cores to be idle (shared machine; default 300, --quick 0)")
    p.add_argument("--work", help="working folder, kept afterwards (default: a temp folder, removed)")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` and fill the size defaults (full or --quick)."""
    args = _parser().parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.rows = args.rows or sizes["rows"]
    args.shard_rows = args.shard_rows or sizes["shard_rows"]
    args.crop = args.crop or sizes["crop"]
    args.image_size = args.image_size or sizes["image_size"]
    if args.wait_idle is None:
        args.wait_idle = 0.0 if args.quick else 300.0
    return args


def main(argv: list[str] | None = None, sink: dict[str, Any] | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict for the suite."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    res = run(args, argv)
    if sink is not None:
        sink.update(res)
    out = Path(args.out) if not args.quick or any(a.startswith("--out") for a in argv) else \
        Path(tempfile.mkstemp(prefix="benchmarks-quick-", suffix=".md")[1])
    body = section(res)
    write_doc(out, [(SECTION, body)])
    print(body)
    print(f"bench-embed: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
