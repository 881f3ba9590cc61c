"""Preprocess benchmark: the Ray pipeline vs. a naive per-image loop, local folder vs. S3.

Every run is a fresh subprocess, timed by wall clock from launch to exit, so interpreter start,
imports, model load and Ray start are all counted (a cold start):

- ``naive``: ``python -m benchmarks.naive`` (PIL + MTCNN per image, full resolution);
- ``ray_local``: ``python -m artextract ingest folder`` then ``python -m artextract preprocess``
  over the local folder;
- ``ray_s3``: the same two commands over the same images in a bucket of a local S3 server (moto
  over HTTP on 127.0.0.1, started by this harness; the upload is not timed); outputs stay local.

Variants are interleaved (naive, local, s3, naive, ...) so a change in machine load hits all of
them alike, and the median of ``--repeats`` runs is reported. Faces are compared too: the naive
loop runs MTCNN's defaults at full resolution, the pipeline at ``decode.detect_max_side``
(1024 px) keeping faces with probability >= ``faces.min_prob``, so the report matches the
pipeline's boxes to the naive loop's (IoU >= 0.5) instead of only comparing counts.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from artextract.config import FacesConfig
from benchmarks.harness import REPO, replace_section, wait_for_idle  # noqa: F401 (replace_section: tests use it here)

SECTION = "Preprocess"
TUNING_SECTION = "Preprocess tuning"
# The quick smoke run: a few generated samples, faces and no faces, one broken file.
QUICK_CASES = ("astronaut", "double_portrait", "exif_rotated", "landscape_1", "coffee_cmyk", "truncated_jpeg")
MIN_PROB = 0.92  # the naive loop's faces: MTCNN's own probability (the pipeline's threshold before issue 17)
IOU_MATCH = 0.5


@dataclass(frozen=True)
class Variant:
    """One way of processing the images."""

    key: str
    label: str
    kind: str  # "naive" | "pipeline"
    source: str = "local"  # "local" | "s3"
    overrides: tuple[str, ...] = ()


_DEFAULT_FACES = FacesConfig()
NAIVE = Variant("naive", "naive loop (PIL + MTCNN per image, full res)", "naive")


def main_variants(overrides: tuple[str, ...] = ()) -> list[Variant]:
    """The headline comparison: naive loop, Ray pipeline on the local folder, Ray pipeline on S3."""
    tag = f" `{' '.join(overrides)}`" if overrides else " (defaults)"
    return [NAIVE,
            Variant("ray_local", f"Ray pipeline, local dir{tag}", "pipeline", "local", overrides),
            Variant("ray_s3", f"Ray pipeline, S3 over HTTP{tag}", "pipeline", "s3", overrides)]


# What the tuning sweep tries (local dir, pipeline only), each row relative to the current
# defaults: the actor/thread layout on the cores, the detector batch, the previous defaults, and
# the detection resolution / minimum face size (speed vs. recall).
SWEEP: tuple[tuple[str, ...], ...] = (
    (),
    ("detector_actors=1",),                               # 1 actor x 1 thread
    ("detector_actors=1", "torch_threads=2"),             # 1 actor x 2 threads
    ("fuse_decode=false",),                               # a decode pool of its own, images through the object store
    ("faces.views=[identity]",),                          # one view: what the grey-half vote costs
    ("decode.detect_max_side=768",),                      # speed at the cost of recall
    ("decode.detect_max_side=1600",),                     # recall at the cost of speed
    ("limit=64",),  # half the images: (wall(128) - wall(64)) / 64 is the marginal cost per image
)


def sweep_variants(configs: list[tuple[str, ...]] | None = None) -> list[Variant]:
    """Pipeline variants (local dir) for the given override lists, default: ``SWEEP``."""
    return [Variant(f"sweep{i}", f"`{' '.join(o)}`" if o else "(defaults)", "pipeline", "local", o)
            for i, o in enumerate(SWEEP if configs is None else configs)]


@dataclass
class Run:
    """One timed cold-start run of a variant."""

    variant: Variant
    repeat: int
    wall_s: float = 0.0
    ok: bool = False
    error: str = ""
    steps_s: dict[str, float] = field(default_factory=dict)  # wall per subprocess
    summary: dict = field(default_factory=dict)  # summary.json of preprocess / the naive loop
    images: int = 0
    failed: int = 0  # quarantined (pipeline) or skipped unreadable (naive)
    faces: list[tuple[str, list[float]]] = field(default_factory=list)  # (relpath, [x1,y1,x2,y2,prob])
    loads: list[float] = field(default_factory=list)  # 1-min load average, sampled every second

    @property
    def load(self) -> float | None:
        """Mean load average during the run (2 on an otherwise idle 2-core machine)."""
        return sum(self.loads) / len(self.loads) if self.loads else None

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("repeat", "wall_s", "ok", "error", "steps_s", "summary", "images",
                                           "failed", "faces", "loads")}
        d["variant"] = {k: getattr(self.variant, k) for k in ("key", "label", "kind", "source", "overrides")}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Run":
        v = dict(d["variant"], overrides=tuple(d["variant"]["overrides"]))
        rest = {k: val for k, val in d.items() if k != "variant"}
        rest["faces"] = [(rel, box) for rel, box in rest.get("faces", [])]
        return cls(Variant(**v), **rest)

    @property
    def kept_faces(self) -> list[tuple[str, list[float]]]:
        """The faces this variant keeps: all of the pipeline's; the naive loop's with prob >= 0.92."""
        if self.variant.kind == "naive":
            return [f for f in self.faces if f[1][4] >= MIN_PROB]
        return self.faces


# ---------------------------------------------------------------------------------------------
# Running variants


def _env(extra: dict[str, str] | None = None, ray_address: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray: a cold start, never a shared cluster ...
    if ray_address:  # ... unless told (the suite's --quick: start-up is not what a smoke run checks)
        env["RAY_ADDRESS"] = ray_address
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _timed(cmd: list[str], log: Path, env: dict[str, str], timeout: float,
           loads: list[float] | None = None) -> tuple[float, int]:
    """Run ``cmd`` to completion with its output in ``log``; returns (wall seconds, exit code).
    The 1-min load average is appended to ``loads`` every second meanwhile."""
    with open(log, "ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if loads is not None:
                    loads.append(os.getloadavg()[0])
                if time.perf_counter() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    rc = -9
                    break
        return time.perf_counter() - t0, rc


def _tail(log: Path, n: int = 12) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_naive(images: Path, work: Path, run: Run, timeout: float) -> Run:
    out = work / "naive"
    log = work / "log.txt"
    wall, rc = _timed([sys.executable, "-m", "benchmarks.naive", "--images", str(images),
                       "--out", str(out)], log, _env(), timeout, run.loads)
    run.wall_s, run.steps_s = wall, {"naive": round(wall, 3)}
    if rc != 0:
        run.error = f"naive loop exited {rc}:\n{_tail(log)}"
        return run
    run.summary = json.loads((out / "naive_summary.json").read_text())
    c = run.summary["counts"]
    run.images, run.failed = c["images"], c["failed"]
    for rel, boxes in json.loads((out / "naive_faces.json").read_text()).items():
        run.faces.extend((rel, b) for b in boxes)
    run.ok = True
    return run


def run_pipeline(source_uri: str, work: Path, run: Run, timeout: float, endpoint: str | None,
                 s3_env: dict[str, str] | None, ray_address: str = "") -> Run:
    from artextract.core import storage

    log = work / "log.txt"
    env = _env(s3_env if endpoint else None, ray_address)
    s3 = ["--s3-endpoint", endpoint] if endpoint else []
    manifest, out = str(work / "manifest"), str(work / "out")
    cli = [sys.executable, "-m", "artextract"]
    t_ingest, rc = _timed(cli + ["ingest", "folder", "--images", source_uri, "--out", manifest] + s3,
                          log, env, timeout, run.loads)
    run.steps_s["ingest"] = round(t_ingest, 3)
    if rc != 0:
        run.wall_s, run.error = t_ingest, f"ingest exited {rc}:\n{_tail(log)}"
        return run
    t_pre, rc = _timed(cli + ["preprocess", "--manifest", manifest, "--out", out] + s3
                       + list(run.variant.overrides), log, env, max(1.0, timeout - t_ingest), run.loads)
    run.steps_s["preprocess"] = round(t_pre, 3)
    run.wall_s = t_ingest + t_pre
    if rc != 0:
        run.error = f"preprocess exited {rc}:\n{_tail(log)}"
        return run
    run.summary = storage.read_json(storage.join(out, "summary.json"))
    c = run.summary["counts"]
    run.images, run.failed = c["manifest_rows"], c["quarantined"]
    images = storage.read_parquet(storage.join(out, "images"), columns=["image_id", "relpath"])
    rel_of = dict(zip(images["image_id"].to_pylist(), images["relpath"].to_pylist()))
    faces = storage.read_parquet(storage.join(out, "faces"), columns=["image_id", "box", "prob"])
    for image_id, box, prob in zip(faces["image_id"].to_pylist(), faces["box"].to_pylist(),
                                   faces["prob"].to_pylist()):
        run.faces.append((rel_of[image_id], [float(v) for v in box] + [float(prob)]))
    run.ok = True
    return run


# ---------------------------------------------------------------------------------------------
# Face agreement


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(reference: list[tuple[str, list[float]]], found: list[tuple[str, list[float]]]) -> int:
    """How many ``reference`` faces have a ``found`` face in the same image with IoU >= 0.5
    (greedy one-to-one matching, highest IoU first)."""
    by_image: dict[str, list[list[float]]] = {}
    for rel, box in found:
        by_image.setdefault(rel, []).append(box)
    hits = 0
    refs: dict[str, list[list[float]]] = {}
    for rel, box in reference:
        refs.setdefault(rel, []).append(box)
    for rel, boxes in refs.items():
        cands = by_image.get(rel, [])
        pairs = sorted(((_iou(r, c), i, j) for i, r in enumerate(boxes) for j, c in enumerate(cands)),
                       reverse=True)
        used_r, used_c = set(), set()
        for iou, i, j in pairs:
            if iou < IOU_MATCH:
                break
            if i not in used_r and j not in used_c:
                used_r.add(i)
                used_c.add(j)
                hits += 1
    return hits


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Bench:
    images: Path
    work: Path
    repeats: int = 2
    timeout: float = 3600.0
    log: Callable[[str], None] = print
    idle_wait: float = 0.0  # max seconds to wait for an idle machine before each run
    s3_uri: str = ""
    s3: object = None
    runs: list[Run] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # command, dates, machine, loads: what the report cites
    save_to: Path | None = None  # runs.json, rewritten after every run (``--render`` reads it back)
    ray_address: str = ""  # pipeline runs attach to this running Ray instead of a cold local one

    def save(self) -> None:
        if self.save_to is not None:
            tmp = self.save_to.with_suffix(".tmp")
            tmp.write_text(json.dumps({"images": str(self.images), "repeats": self.repeats,
                                       "idle_wait": self.idle_wait, "meta": self.meta,
                                       "runs": [r.to_json() for r in self.runs]}))
            tmp.replace(self.save_to)

    @classmethod
    def load(cls, path: Path) -> "Bench":
        d = json.loads(Path(path).read_text())
        return cls(images=Path(d["images"]), work=Path(path).parent, repeats=d["repeats"],
                   idle_wait=d["idle_wait"], meta=d["meta"], runs=[Run.from_json(r) for r in d["runs"]])

    def run_one(self, variant: Variant, repeat: int) -> Run:
        work = self.work / f"{variant.key}-{repeat}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if self.idle_wait > 0:
            wait_for_idle(self.idle_wait, log=self.log)
        run = Run(variant, repeat)
        if variant.kind == "naive":
            run_naive(self.images, work, run, self.timeout)
        elif variant.source == "s3":
            run_pipeline(self.s3_uri, work, run, self.timeout, self.s3.endpoint, self.s3.env, self.ray_address)
        else:
            run_pipeline(str(self.images), work, run, self.timeout, None, None, self.ray_address)
        faces = len(run.kept_faces)
        self.log(f"  {variant.key} #{repeat + 1}: {run.wall_s:.1f} s, {run.images} images, {faces} faces, "
                 f"load {_fmt(run.load)}"
                 f"{'' if run.ok else ' FAILED: ' + run.error}")
        # Outputs are not needed once counted; keep the logs.
        for sub in ("naive", "out", "manifest"):
            shutil.rmtree(work / sub, ignore_errors=True)
        self.runs.append(run)
        self.save()
        if not self.ray_address:
            time.sleep(2)  # let the previous run's Ray processes exit before the next cold start
        return run

    def run_all(self, variants: list[Variant], repeats: int | None = None) -> None:
        for r in range(repeats or self.repeats):
            for v in variants:
                self.run_one(v, r)

    def variants(self, keys: list[str] | None = None) -> list[Variant]:
        """The variants that have runs, in first-run order (optionally only ``keys``)."""
        seen: dict[str, Variant] = {}
        for r in self.runs:
            seen.setdefault(r.variant.key, r.variant)
        return [v for k, v in seen.items() if keys is None or k in keys]


def median_run(runs: list[Run]) -> Run | None:
    """The representative run: the median by wall time (the faster of the middle two for an even
    count). Its faces and own timings are what the tables show."""
    ok = sorted((r for r in runs if r.ok), key=lambda r: r.wall_s)
    return ok[(len(ok) - 1) // 2] if ok else None


def median_wall(runs: list[Run]) -> float | None:
    """Median wall seconds of the successful runs."""
    ok = [r.wall_s for r in runs if r.ok]
    return statistics.median(ok) if ok else None


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def best_wall(runs: list[Run]) -> float | None:
    """Fastest successful run: on a shared machine interference only adds time."""
    ok = [r.wall_s for r in runs if r.ok]
    return min(ok) if ok else None


def results_table(bench: Bench, variants: list[Variant], naive_key: str | None = "naive") -> tuple[str, dict]:
    """The markdown table of medians (and best runs) per variant and the numbers behind it."""
    by = {v.key: [r for r in bench.runs if r.variant.key == v.key] for v in variants}
    med = {k: median_run(rs) for k, rs in by.items()}
    wall = {k: median_wall(rs) for k, rs in by.items()}
    best = {k: best_wall(rs) for k, rs in by.items()}
    base = med.get(naive_key) if naive_key else None
    rows = ["| variant | wall s: median | best | runs: s (load) | images/s (median) | vs naive: median | "
            "best | images | faces kept | images with faces | naive faces (p≥0.92) found |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    numbers: dict[str, dict] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    for v in variants:
        m = med[v.key]
        walls = ", ".join(f"{r.wall_s:.1f} ({_fmt(r.load, 1)})" if r.ok else "failed" for r in by[v.key])
        if m is None:
            rows.append(f"| {v.label} | failed | – | {walls} | – | – | – | – | – | – | – |")
            numbers[v.key] = {"ok": False}
            continue
        kept = m.kept_faces
        w, b = wall[v.key], best[v.key]
        ips = m.images / w if w else None
        speedup = ratio(wall.get(naive_key), w) if base else None
        speedup_best = ratio(best.get(naive_key), b) if base else None
        ref = base.kept_faces if base else []
        hit = matched(ref, kept) if base else None
        with_faces = len({rel for rel, _ in kept})
        recall = f"{hit}/{len(ref)} ({100 * hit / len(ref):.0f}%)" if base and ref else "–"
        n_fail = f" ({m.failed} {'skipped' if v.kind == 'naive' else 'quarantined'})" if m.failed else ""
        rows.append(f"| {v.label} | {w:.1f} | {b:.1f} | {walls} | {_fmt(ips)} | {_x(speedup)} | "
                    f"{_x(speedup_best)} | {m.images}{n_fail} | {len(kept)} | {with_faces} | {recall} |")
        numbers[v.key] = {"ok": True, "wall_s": w, "best_s": b, "images_per_s": ips, "speedup": speedup,
                          "speedup_best": speedup_best, "faces": len(kept), "images_with_faces": with_faces,
                          "recall_hits": hit, "reference_faces": len(ref)}
    numbers["s3_vs_local"] = ratio(wall.get("ray_local"), wall.get("ray_s3"))
    numbers["s3_vs_local_best"] = ratio(best.get("ray_local"), best.get("ray_s3"))
    return "\n".join(rows), numbers


def _x(r: float | None) -> str:
    return f"{r:.2f}x" if r else "–"


def timings_table(bench: Bench, variants: list[Variant]) -> str:
    """Startup vs steady state: the median run's own timings per variant."""
    rows = ["| variant | wall s | ingest s | preprocess s | plan s | process s | Ray Data pipeline s | "
            "images/s over pipeline_s (loop) | cold-start overhead s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        m = median_run([r for r in bench.runs if r.variant.key == v.key])
        if m is None:
            continue
        t = m.summary.get("timings_s", {})
        if v.kind == "naive":
            rows.append(f"| {v.label} | {m.wall_s:.1f} | – | {m.wall_s:.1f} | startup {_fmt(t.get('startup'), 1)} | "
                        f"loop {_fmt(t.get('loop'), 1)} | – | {_fmt(m.summary.get('images_per_s'))} | "
                        f"{m.wall_s - t.get('loop', 0):.1f} |")
        else:
            pipe = m.summary.get("pipeline_s")
            rows.append(f"| {v.label} | {m.wall_s:.1f} | {_fmt(m.steps_s.get('ingest'), 1)} | "
                        f"{_fmt(m.steps_s.get('preprocess'), 1)} | {_fmt(t.get('plan'), 1)} | "
                        f"{_fmt(t.get('process'), 1)} | {_fmt(pipe, 1)} | "
                        f"{_fmt(m.summary.get('images_per_s'))} | {m.wall_s - (pipe or 0):.1f} |")
    return "\n".join(rows)


def _verdict(ok: bool | None) -> str:
    return "**met**" if ok else ("**not met**" if ok is not None else "not measured")


def preprocess_section(bench: Bench, variants: list[Variant]) -> tuple[str, dict]:
    """The ``## Preprocess`` section: machine, command, the results and timings tables."""
    meta = bench.meta
    info = meta["info"]
    table, numbers = results_table(bench, variants)
    local = numbers.get("ray_local", {})
    speedup, speedup_best = local.get("speedup"), local.get("speedup_best")
    s3, s3_best = numbers.get("s3_vs_local"), numbers.get("s3_vs_local_best")
    loads = meta.get("loads", [0.0, 0.0])
    lines = [f"## {SECTION}", ""]
    if meta.get("quick"):
        lines += ["> **Quick smoke run** (a few generated sample images, 1 repeat"
                  + (f"; pipeline runs attached to the running Ray at {meta['ray_address']}, no cold Ray start"
                     if meta.get("ray_address") else "")
                  + "): this exercises the harness; its timings are not a benchmark.", ""]
    lines += [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['started']}  ",
        f"Machine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, {info['os']}  ",
        f"Load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f}  ",
        f"Versions: {info['versions']}  ",
        f"Code: commit {meta.get('commit', '?')}  ",
        f"Images: {bench.images} ({meta.get('images_desc', '?')}); S3: the same files in a bucket of a "
        "local moto server over HTTP on 127.0.0.1 (upload not timed)  ",
        f"Each run is a fresh subprocess, timed from launch to exit (interpreter, imports, model load "
        f"and Ray start included); variants interleaved; median of {bench.repeats} and the best run"
        + (f"; before each run the harness waited (up to {bench.idle_wait:.0f} s) for other processes to "
           "leave the cores idle (< 20% busy), as the machine is shared." if bench.idle_wait else "."),
        "",
        table,
        "",
        f"- Ray pipeline (local dir) vs naive loop: **{_x(speedup)}** on medians, {_x(speedup_best)} on "
        f"best runs (goal ≥ 2x: {_verdict(speedup and speedup >= 2)})",
        f"- S3 over HTTP vs local dir: **{_x(s3)}** the local throughput on medians, {_x(s3_best)} on "
        f"best runs (goal ≥ 0.8x: {_verdict(s3 and s3 >= 0.8)})",
        f"- *faces kept*: the pipeline keeps faces of its default detector (`faces.detector={_DEFAULT_FACES.detector}`, "
        f"views {', '.join(_DEFAULT_FACES.views)}) with calibrated probability ≥ `faces.min_prob` ({_DEFAULT_FACES.min_prob}), "
        "detected at long side `decode.detect_max_side` (1024 px by default); the naive loop's MTCNN boxes are "
        "counted at MTCNN's own probability ≥ 0.92, the pipeline's threshold before the detector registry (it returns every box over MTCNN's stage thresholds: "
        f"{_naive_all(bench)} in all). *naive faces found*: naive faces (p ≥ 0.92) that the variant "
        "also found (same image, IoU ≥ 0.5).",
        "- *runs: s (load)*: every run's wall seconds and the mean 1-min load average during it. A run "
        "alone keeps about 2 threads busy on this 2-core machine; clearly more means other processes "
        "competed for the cores. *best*: the fastest run; interference only ever adds time, so on a "
        "shared machine the best run is the closest to the uncontended cost.",
        "",
        "Where the time goes (the representative run's own timings — the median run, or the faster "
        "of the middle two: `summary.json` of `artextract preprocess`, "
        "`naive_summary.json` of the loop). *Ray Data pipeline s* (`pipeline_s`) runs from the start "
        "of execution to the last shard written, so it includes starting the actor pools (a worker "
        "process importing its libraries and loading the detector); `images_per_s` is images over those seconds. "
        "*Cold-start overhead* is the rest of the wall time: interpreters, imports, the ingest command, "
        "Ray start, plan, reconcile and shutdown (for the loop: imports and model load).",
        "",
        timings_table(bench, variants),
    ]
    return "\n".join(lines) + "\n", numbers


def tuning_section(bench: Bench, variants: list[Variant]) -> str:
    """The ``## Preprocess tuning`` section: the config sweep (with the naive loop when it ran)."""
    meta = bench.meta
    info = meta["info"]
    loads = meta.get("sweep_loads", [0.0, 0.0])
    naive = [NAIVE] if any(r.variant.key == "naive" for r in bench.runs) else []
    table, _ = results_table(bench, naive + variants)
    reps = meta.get("sweep_repeats", bench.repeats)
    return "\n".join([
        f"## {TUNING_SECTION}", "",
        "Pipeline config overrides (`key=value` on `artextract preprocess`) relative to the defaults "
        f"of this checkout, local dir, each a cold start like the Preprocess table, median of {reps}"
        + (" (the naive loop's row is the Preprocess table's)." if naive else "."), "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta.get('sweep_started', meta['started'])} · {info['cores']} cores, {info['cpu']}, "
        f"{info['ram']} RAM · load average at start / end: {loads[0]:.2f} / {loads[1]:.2f}",
        "", table, "",
        "Own timings of each config's representative run (columns as in the Preprocess section):", "",
        timings_table(bench, variants), ""])


def _naive_all(bench: Bench) -> str:
    m = median_run([r for r in bench.runs if r.variant.key == "naive"])
    return f"{len(m.faces)} boxes" if m else "–"


def describe(images: Path) -> str:
    files = [p for p in images.rglob("*") if p.is_file() and not p.name.startswith(".")]
    size = sum(p.stat().st_size for p in files)
    sides = []
    try:
        from PIL import Image

        for p in files:
            try:
                with Image.open(p) as im:
                    sides.append(max(im.size))
            except Exception:  # noqa: BLE001 - broken samples are part of the quick collection
                pass
    except ImportError:
        pass
    side = f", long side {min(sides)}–{max(sides)} px" if sides else ""
    return f"{len(files)} files, {size / 1e6:.1f} MB{side}"


