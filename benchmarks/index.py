"""``python -m benchmarks.index --out docs/benchmarks.md [--n 1000000] [--dim 256] [--queries 1000] [--work DIR]``

Index benchmark (issue 5) on synthetic clustered vectors, every baseline in the same run:
exact Flat vs IVF variants at 1 and 4 shards (build time through ``build_index``, QPS, recall@10
against an exact ground truth), an incremental +1% / -0.1% ``update_index`` vs a full rebuild of
the resulting collection, and GPU (torch) vs CPU (faiss) exact search where CUDA is available.
Vectors are a Gaussian mixture (uniform vectors have no neighbourhood structure, so IVF recall on
them says nothing about embeddings), L2-normalised, metric ip, fixed seed.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import re
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import pyarrow as pa

from artextract.core import storage
from benchmarks import index_compressed
from benchmarks.index_report import section, write_section
from benchmarks.harness import git_commit, machine
from artextract.index import IndexReader, build_index, exact_search, torch_exact_search, update_index
from artextract.index import versions as V

K = 10
SHARDS = (1, 4)
GOAL_RECALL, GOAL_SPEEDUP, GOAL_REINDEX = 0.95, 20.0, 0.05
MIN_TIME_S = 2.0  # repeated batches per QPS cell for at least this long (the CPU may be shared)
ROWS_PER_FILE = 100_000


def nlists(n: int) -> tuple[int, int]:
    """Power-of-two list counts nearest sqrt(n) and 4*sqrt(n) (build.choose_factory's default):
    1024 and 4096 at 1M, so a smaller validation run keeps the same vectors-per-list regime."""
    return tuple(int(2 ** round(math.log2(f * math.sqrt(n)))) for f in (1, 4))  # type: ignore[return-value]


def pq(nlist: int, dim: int) -> str:
    return f"IVF{nlist},PQ{max(1, dim // 8)}np"


def ivf_variants(n: int, dim: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(factory, nprobe sweep, shard counts) of the approximate variants: nprobe as a share of the
    lists (8..64 of 1024, 16..128 of 4096); PQ with 8 dims per sub-quantizer (32 bytes a vector at
    d=256), "np": the factory's default polysemous training costs ~9x the PQ training and nothing
    here uses it; PQ at 4 shards only (a 1M PQ build is minutes and sharding is shown by the others)."""
    small, large = nlists(n)
    sweep = lambda nl, div, mult: tuple(max(1, nl // div) * m for m in mult)  # noqa: E731
    return [(f"IVF{small},Flat", sweep(small, 128, (1, 2, 4, 8)), SHARDS),
            (f"IVF{large},Flat", sweep(large, 256, (1, 2, 4, 8)), SHARDS),
            (pq(large, dim), sweep(large, 256, (1, 4)), (4,))]


def reindex_variants(n: int, dim: int) -> list[tuple[str, int]]:
    """(factory, nprobe) compared for update vs rebuild, at 4 shards: Flat, the large IVF-Flat, IVF-PQ and
    the default compressed type (fast-scan + exact re-ranking; nprobe 0 = the one its build tuned)."""
    large = nlists(n)[1]
    return [("Flat", 0), (f"IVF{large},Flat", max(1, large // 64)), (pq(large, dim), max(1, large // 64)),
            (f"IVF{large},PQ{dim // 2}x4fs,RFlat", 0)]


class Log:
    """Progress lines with the elapsed time: a 1M run takes many minutes."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[bench-index {time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


def mixture(rng: np.random.Generator, centres: np.ndarray, weights: np.ndarray, spread: np.ndarray,
            n: int) -> np.ndarray:
    """``n`` L2-normalised draws: a centre (by weight) + Gaussian noise of that centre's spread."""
    c = rng.choice(len(centres), n, p=weights)
    x = rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    x *= (spread[c] / np.sqrt(centres.shape[1]))[:, None]
    x += centres[c]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(n: int, dim: int, queries: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Base, query and +1% vectors from one mixture of ~n/250 centres (lognormal sizes, noise
    norm 0.3..1.5 relative to the centre: tight and diffuse clusters side by side)."""
    rng = np.random.default_rng(seed)
    m = max(8, n // 250)
    centres = rng.standard_normal((m, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, m)
    weights /= weights.sum()
    spread = rng.uniform(0.3, 1.5, m).astype(np.float32)
    draw = lambda k: mixture(rng, centres, weights, spread, k)  # noqa: E731
    return {"base": draw(n), "queries": draw(queries), "added": draw(max(1, n // 100))}


def table(vectors: np.ndarray, start: int) -> pa.Table:
    """Embedding-table layout (versions.py) for rows ``start..``: image_id bench-<row>, face 0."""
    d = vectors.shape[1]
    return pa.table({"image_id": pa.array([f"bench-{i:08d}" for i in range(start, start + len(vectors))]),
                     "face_idx": pa.array(np.zeros(len(vectors), np.int16)),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d),
                     "model_version": pa.array(["synthetic"] * len(vectors))})


def write_embeddings(uri: str, t: pa.Table) -> None:
    """Write ``t`` as embedding parquet shards, as the embed stage would."""
    for i, s in enumerate(range(0, len(t), ROWS_PER_FILE)):
        storage.write_parquet(storage.join(uri, f"part-{i:05d}.parquet"), t.slice(s, ROWS_PER_FILE))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k ids found in the returned top-k (order ignored)."""
    return float((found[:, :, None] == truth[:, None, :]).any(2).sum() / truth.size)


def throughput(search: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int,
               min_s: float = MIN_TIME_S) -> tuple[float, float]:
    """(QPS, median ms per batch): consecutive batches of ``queries`` (wrapping around) for at least
    ``min_s`` and at least one batch, after a 1-query warm-up. QPS = batch / median batch time, so a
    burst from another process on a shared machine moves it less than a mean would."""
    search(queries[:1])
    lat, pos, t0 = [], 0, time.perf_counter()
    while not lat or time.perf_counter() - t0 < min_s:
        b = queries[pos:pos + batch]
        t = time.perf_counter()
        search(b)
        lat.append(time.perf_counter() - t)
        pos = (pos + batch) % len(queries) if pos + batch < len(queries) else 0
    med = float(np.median(lat))
    return min(batch, len(queries)) / med, med * 1e3


class Bench:
    """One benchmark run: the data, its ground truth and every measured row."""

    def __init__(self, args: argparse.Namespace, work: Path, log: Log):
        self.args, self.work, self.log = args, work, log
        self.res: dict[str, Any] = {"exact": [], "ivf": [], "compressed": [], "reindex": [], "phases": {}}

    def phase(self, name: str, t0: float) -> None:
        self.res["phases"][name] = round(time.perf_counter() - t0, 1)

    def prepare(self) -> None:
        t0 = time.perf_counter()
        a = self.args
        self.data = make_data(a.n, a.dim, a.queries, a.seed)
        self.base_t = table(self.data["base"], 0)
        self.emb = str(self.work / "embeddings")
        write_embeddings(self.emb, self.base_t)
        self.ids = V.key_ids(self.base_t["image_id"].to_pylist(), [0] * a.n)
        self.log(f"data: {a.n} x {a.dim} base, {a.queries} queries, {len(self.data['added'])} to add; "
                 f"written to {self.emb} ({time.perf_counter() - t0:.1f}s)")
        t = time.perf_counter()
        _, pos = exact_search(self.data["base"], self.data["queries"], K, "ip", backend="faiss")
        self.truth = self.ids[pos]
        self.res["truth_qps"] = round(a.queries / (time.perf_counter() - t), 1)
        self.log(f"ground truth: exact_search of {a.queries} queries, {self.res['truth_qps']} QPS")
        self.phase("data + ground truth", t0)

    def build(self, factory: str, shards: int, nprobe: int, emb: str | None = None,
              name: str | None = None) -> tuple[str, dict, float]:
        out = str(self.work / "indexes" / (name or f"{re.sub('[^A-Za-z0-9]+', '_', factory)}-s{shards}"))
        t = time.perf_counter()
        m = build_index(emb or self.emb, out, shards=shards, factory=factory, metric="ip", nprobe=nprobe or 1)
        sec = time.perf_counter() - t
        mib = sum(e["bytes"] for e in m["shards"]) / 2 ** 20
        self.log(f"built {factory} x{shards} shards in {sec:.1f}s, {mib:.0f} MiB")
        return out, m, sec

    def exact(self) -> None:
        t0, a = time.perf_counter(), self.args
        q = self.data["queries"][:a.exact_queries]
        for shards in SHARDS:
            out, m, sec = self.build("Flat", shards, 0)
            reader = IndexReader(out)
            search = functools.partial(reader.search_ids, k=K)
            _, ids = reader.search_ids(q, K)
            row = {"shards": shards, "build_s": sec, "bytes": sum(e["bytes"] for e in m["shards"]),
                   "recall": recall(ids, self.truth[:len(q)]), "queries": len(q)}
            for key, b in (("all", len(q)), ("16", 16), ("1", 1)):
                row[f"qps_{key}"], row[f"ms_{key}"] = throughput(search, q, b, self.args.min_time)
            self.res["exact"].append(row)
            self.log(f"exact x{shards}: {row['qps_all']:.1f} QPS batched, {row['qps_1']:.1f} QPS at batch 1, "
                     f"recall {row['recall']:.4f}")
            del reader, search  # free the index before the next build
            if shards == 1:
                shutil.rmtree(out, ignore_errors=True)
        self.phase("exact", t0)

    def ivf(self) -> None:
        t0, q = time.perf_counter(), self.data["queries"]
        # The reference is the fastest exact configuration, so a slow exact sharding cannot flatter IVF.
        exact_qps = max(r["qps_all"] for r in self.res["exact"])
        for factory, sweep, shard_counts in ivf_variants(self.args.n, self.args.dim):
            for shards in shard_counts:
                out, m, sec = self.build(factory, shards, sweep[0])
                reader = IndexReader(out)
                for nprobe in sweep:
                    search = functools.partial(reader.search_ids, k=K, nprobe=nprobe)
                    _, ids = search(q)
                    qps, _ = throughput(search, q, len(q), self.args.min_time)
                    qps1, ms1 = throughput(search, q, 1, self.args.min_time)
                    row = {"factory": factory, "shards": shards, "nprobe": nprobe, "build_s": sec,
                           "bytes": sum(e["bytes"] for e in m["shards"]), "recall": recall(ids, self.truth),
                           "qps": qps, "speedup": qps / exact_qps, "qps_1": qps1, "ms_1": ms1}
                    row["goal"] = row["recall"] >= GOAL_RECALL and row["speedup"] >= GOAL_SPEEDUP
                    self.res["ivf"].append(row)
                    self.log(f"{factory} x{shards} nprobe {nprobe}: recall {row['recall']:.4f}, {qps:.0f} QPS "
                             f"({row['speedup']:.1f}x exact), {qps1:.0f} QPS at batch 1")
                del reader, search
                if shards == 1 or factory not in dict(reindex_variants(self.args.n, self.args.dim)):
                    shutil.rmtree(out, ignore_errors=True)
        self.phase("ivf", t0)

    def reindex(self) -> None:
        """Update the 4-shard builds by +1% / -0.1% and compare with a full rebuild of the result."""
        t0, a, q = time.perf_counter(), self.args, self.data["queries"]
        rng = np.random.default_rng(a.seed + 1)
        gone = np.sort(rng.choice(a.n, max(1, a.n // 1000), replace=False))
        added = table(self.data["added"], a.n)
        keep = np.ones(a.n, bool)
        keep[gone] = False
        new_t = pa.concat_tables([self.base_t.filter(pa.array(keep)), added])
        new_emb = str(self.work / "embeddings_plus1pct")
        write_embeddings(new_emb, new_t)
        vec = np.concatenate([self.data["base"][keep], self.data["added"]])
        new_ids = np.concatenate([self.ids[keep], V.key_ids(added["image_id"].to_pylist(), [0] * len(added))])
        _, pos = exact_search(vec, q, K, "ip", backend="faiss")
        truth = new_ids[pos]
        removed = [(f"bench-{i:08d}", 0) for i in gone]
        for factory, nprobe in reindex_variants(a.n, a.dim):
            out = str(self.work / "indexes" / f"{re.sub('[^A-Za-z0-9]+', '_', factory)}-s4")
            t = time.perf_counter()
            mu = update_index(out, add_embeddings=added, remove_keys=removed)
            upd = time.perf_counter() - t
            nprobe = nprobe or int(mu["nprobe"]) if "IVF" in factory else nprobe
            kf = (mu.get("refine") or {}).get("k_factor")  # both searched at the update's k_factor
            out2, _, full = self.build(factory, 4, nprobe, new_emb, out.rsplit("/", 1)[1] + "-rebuild")
            # Readers merge delta segments at load: that cost moves from the writer to every reader.
            t = time.perf_counter()
            reader_u = IndexReader(out)
            load_u = time.perf_counter() - t
            t = time.perf_counter()
            reader_r = IndexReader(out2)
            load_r = time.perf_counter() - t
            ids_u = reader_u.search_ids(q, K, nprobe or None, kf)[1]
            ids_r = reader_r.search_ids(q, K, nprobe or None, kf)[1]
            del reader_u, reader_r
            t = time.perf_counter()
            mc = update_index(out, compact=True)
            compact_s = time.perf_counter() - t
            ids_c = IndexReader(out).search_ids(q, K, nprobe or None, kf)[1]
            u = mu["update"]
            written = sum(e["delta"]["bytes"] + (e["delta"].get("refine") or {}).get("bytes", 0)
                          for e in mu["shards"] if e.get("delta"))  # + the delta's re-ranking codes
            row = {"factory": factory, "nprobe": nprobe, "update_s": upd, "rebuild_s": full, "ratio": upd / full,
                   "delta": len(u["delta_shards"]), "compacted": len(u["compacted_shards"]),
                   "shards": mu["num_shards"], "delta_bytes": written, "load_update_s": load_u,
                   "load_rebuild_s": load_r, "compact_s": compact_s, "total": mu["total"],
                   "identical": float((ids_u == ids_r).all(1).mean()), "overlap": recall(ids_u, ids_r),
                   "compact_identical": float((ids_u == ids_c).all(1).mean()) if mc["total"] == mu["total"] else 0.0,
                   "recall_update": recall(ids_u, truth), "recall_rebuild": recall(ids_r, truth)}
            self.res["reindex"].append(row)
            self.log(f"reindex {factory}: update {upd:.1f}s vs rebuild {full:.1f}s ({row['ratio']:.1%}); "
                     f"identical top-{K} {row['identical']:.1%}, overlap {row['overlap']:.4f}; reader load "
                     f"{load_u:.1f}s vs {load_r:.1f}s; compaction {compact_s:.1f}s")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out2, ignore_errors=True)
        self.phase("reindex", t0)

    def gpu(self) -> None:
        """Exact search QPS: torch on CUDA (database uploaded per call, as torch_exact_search does)
        vs faiss IndexFlatIP on the CPU cores, same queries."""
        try:
            import torch

            ok = torch.cuda.is_available()
        except ImportError:
            ok = False
        if not ok:
            self.res["gpu"] = None
            self.log("gpu: torch.cuda is not available, skipped")
            return
        q, base = self.data["queries"], self.data["base"]
        out = {"device": torch.cuda.get_device_name(0)}
        for name, fn in (("torch cuda", lambda x: torch_exact_search(base, x, K, device="cuda")),
                         ("faiss cpu", lambda x: exact_search(base, x, K, "ip", backend="faiss"))):
            fn(q[:1])
            t = time.perf_counter()
            _, pos = fn(q)
            out[name] = {"qps": len(q) / (time.perf_counter() - t), "recall": recall(self.ids[pos], self.truth)}
        self.res["gpu"] = out
        self.log(f"gpu: {out}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file; only the index section is replaced")
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the collection")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batched IVF QPS")
    p.add_argument("--exact-queries", type=int, default=200,
                   help="queries for the exact (Flat) QPS: exhaustive search is slow, 200 give a stable rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-time", type=float, default=MIN_TIME_S,
                   help="seconds of repeated batches per QPS cell (tests use a tiny value)")
    p.add_argument("--work", help="working folder, kept afterwards (default: a temp folder, removed)")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: the usable cores)")
    return p


def main(argv: list[str] | None = None, sink: dict[str, Any] | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``benchmarks.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.exact_queries = min(args.exact_queries, args.queries)
    if args.n < 1000 or args.dim < 8 or args.queries < 1:
        print("bench-index: needs --n >= 1000, --dim >= 8, --queries >= 1", file=sys.stderr)
        return 2
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    faiss.omp_set_num_threads(threads)  # the whole machine, recorded in the section
    log = Log()
    meta: dict[str, Any] = {
        "command": "python -m benchmarks.index " + " ".join(shlex.quote(a) for a in argv),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(), "info": machine(),
        "faiss": faiss.__version__, "threads": threads, "loads": [os.getloadavg()[0]] * 2, "n": args.n,
        "dim": args.dim, "queries": args.queries, "exact_queries": args.exact_queries, "seed": args.seed,
        "centres": max(8, args.n // 250), "added": max(1, args.n // 100), "removed": max(1, args.n // 1000),
        "min_time_s": args.min_time, "goal_recall": GOAL_RECALL, "goal_speedup": GOAL_SPEEDUP,
        "goal_reindex": GOAL_REINDEX}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="artextract-bench-index-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"{args.n} x {args.dim}, {args.queries} queries, faiss {faiss.__version__} on {threads} threads, "
        f"work {work}, load {meta['loads'][0]:.2f}")
    bench = Bench(args, work, log)
    try:
        bench.prepare()
        bench.exact()
        bench.ivf()
        index_compressed.run(bench, throughput, recall, {f for f, _ in reindex_variants(args.n, args.dim)})
        bench.reindex()
        bench.gpu()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    g = bench.res.get("gpu")
    meta.update(wall_s=time.perf_counter() - log.t0, gpu=g["device"] if g else None,
                peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)  # KiB on Linux
    meta["loads"][1] = os.getloadavg()[0]
    if sink is not None:
        sink.update(res=bench.res, meta=meta)
    body = section(bench.res, meta)
    write_section(Path(args.out), args.n, args.dim, body)
    print(body)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
