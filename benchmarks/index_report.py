"""Markdown section of the index benchmark (``benchmarks.index``): tables and verdicts are
derived from the measured rows only, so a rerun on another machine rewrites every claim."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks import index_compressed
from benchmarks.harness import write_doc

SECTION_PREFIX = "Index (sharded FAISS"


def size_label(n: int) -> str:
    """1000000 -> '1M', 100000 -> '100k' (the section title carries the collection size)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def title(n: int, dim: int) -> str:
    return f"{SECTION_PREFIX}, {size_label(n)} x {dim})"


def write_section(out: Path, n: int, dim: int, body: str) -> None:
    """Replace the one index section (whatever size it was run at) or append it; other sections
    are kept (shared ``write_doc``): the old title is looked up so a 100k run replaces a 1M one."""
    old = re.search(rf"^## ({re.escape(SECTION_PREFIX)}.*?)\s*$", out.read_text(), re.M) if out.exists() else None
    write_doc(out, [(old.group(1) if old else title(n, dim), body)])


def _mib(b: float) -> str:
    return f"{b / 2 ** 20:.1f}"


def _verdict_ivf(rows: list[dict[str, Any]], goal_recall: float, goal_speedup: float) -> str:
    ok = [r for r in rows if r["goal"]]
    if ok:
        best = max(ok, key=lambda r: r["speedup"])
        names = sorted({f"{r['factory']} x{r['shards']} nprobe {r['nprobe']}" for r in ok})
        return (f"Goal recall@10 >= {goal_recall} at >= {goal_speedup:.0f}x the exact QPS: **met** by "
                f"{len(ok)} configuration(s) ({'; '.join(names)}); fastest: {best['factory']} x{best['shards']} "
                f"shard(s), nprobe {best['nprobe']}: recall@10 {best['recall']:.4f} at {best['speedup']:.1f}x.")
    good = [r for r in rows if r["recall"] >= goal_recall]
    best = max(good, key=lambda r: r["speedup"]) if good else max(rows, key=lambda r: r["recall"])
    return (f"Goal recall@10 >= {goal_recall} at >= {goal_speedup:.0f}x the exact QPS: **not met** by any "
            f"configuration measured; closest: {best['factory']} x{best['shards']} nprobe {best['nprobe']}, "
            f"recall@10 {best['recall']:.4f} at {best['speedup']:.1f}x.")


def _reindex_note(rows: list[dict[str, Any]], goal: float) -> str:
    met = [r["factory"] for r in rows if r["ratio"] <= goal]
    return (f"Goal update <= {goal:.0%} of a full rebuild: {'met by ' + ', '.join(met) if met else 'met by none'}. "
            "Shards are chosen by id hash (`id % N`), so +1% random keys touch every shard; the update writes "
            "each touched shard's changes as a *delta segment* (the new vectors in a copy of the build's trained "
            "empty index) plus tombstones (removed base ids), and refers to the unchanged base files of the "
            "previous version instead of reading or copying them (`artextract/index/segments.py`). It reads the "
            "shards' id maps, not their vectors. Readers merge the segments when they load a version "
            "(`remove_ids` + `merge_from`), so part of the cost moves to loading (*reader load*); a shard is "
            "compacted into a new base once delta + tombstones pass `compact_ratio` (10%) of it (*compaction*: "
            "`update_index(compact=True)` of the same version). The update keeps the build's centroids and "
            "codebooks while the rebuild retrains them on a new sample, so approximate results differ from the "
            "rebuild by the id overlap shown; *identical after compaction* compares the delta version with its "
            "compacted self (same quantizer: must be 100%).")


def section(res: dict[str, Any], meta: dict[str, Any]) -> str:
    """The whole ``## Index (...)`` section from the run's results and metadata."""
    n, dim, q, qe = meta["n"], meta["dim"], meta["queries"], meta["exact_queries"]
    info = meta["info"]
    out = [f"## {title(n, dim)}", "",
           f"Command: `make bench-index` (`{meta['command']}`)  ",
           f"Date: {meta['started']}; commit {meta['commit']}; whole run {meta['wall_s'] / 60:.1f} min "
           f"({', '.join(f'{k} {v:.0f} s' for k, v in res['phases'].items())}); peak RSS "
           f"{meta['peak_rss_gib']:.1f} GiB  ",
           f"Machine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, {info['os']}; "
           f"GPU: {meta['gpu'] or 'none'}  ",
           f"FAISS: faiss {meta['faiss']}, {meta['threads']} OpenMP threads (`faiss.omp_set_num_threads`); "
           f"load average (1 min) at start / end: {meta['loads'][0]:.2f} / {meta['loads'][1]:.2f}  ",
           f"Versions: {info['versions']}", "",
           f"Data: {n} x {dim} float32 from a Gaussian mixture of {meta['centres']} centres (lognormal sizes, "
           "noise norm 0.3..1.5 x the centre's), L2-normalised, metric ip, seed "
           f"{meta['seed']}; {q} queries drawn from the same mixture (not in the collection). Ground truth: "
           f"`exact_search` (faiss IndexFlatIP) of all {q} queries in one batch, {res['truth_qps']:.1f} QPS. "
           "Build time is `build_index` from the embedding parquet shards: reading, key hashing, training on at "
           "most 100k rows (its `train_size` default), adding, serialising, writing, and its own 200-query "
           "recall check. Search is `IndexReader.search_ids` (every shard searched, exact top-k merge), k = 10.", "",
           f"QPS = batch size / median batch time, batches repeated for at least {meta['min_time_s']:g} s a cell.",
           "",
           f"**1. Exact baseline (Flat)** — {qe} queries (exhaustive search is slow: fewer queries than below).", "",
           f"| index | shards | build s | index MiB | recall@10 | QPS batch {qe} | QPS batch 16 | QPS batch 1 "
           "| ms per query at batch 1 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["exact"]:
        out.append(f"| Flat | {r['shards']} | {r['build_s']:.1f} | {_mib(r['bytes'])} | {r['recall']:.4f} | "
                   f"{r['qps_all']:.1f} | {r['qps_16']:.1f} | {r['qps_1']:.1f} | {r['ms_1']:.1f} |")
    ref = max(res["exact"], key=lambda r: r["qps_all"]) if res["exact"] else {"shards": "?", "qps_all": 0.0}
    out += ["", f"**2. IVF variants** — all {q} queries in one batch; x exact = QPS / the fastest exact batched QPS "
            f"(Flat x{ref['shards']}, {ref['qps_all']:.1f} QPS).", "",
            f"| index | shards | nprobe | build s | index MiB | recall@10 | QPS batch {q} | x exact | QPS batch 1 "
            "| goal |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["ivf"]:
        out.append(f"| {r['factory']} | {r['shards']} | {r['nprobe']} | {r['build_s']:.1f} | {_mib(r['bytes'])} | "
                   f"{r['recall']:.4f} | {r['qps']:.0f} | {r['speedup']:.1f} | {r['qps_1']:.0f} | "
                   f"{'yes' if r['goal'] else 'no'} |")
    out += ["", _verdict_ivf(res["ivf"], meta["goal_recall"], meta["goal_speedup"])]
    out += index_compressed.markdown(res, meta)
    out += ["",
            f"**3. Reindex +1% vs full rebuild** — from the published {n}-vector 4-shard build, `update_index` adds "
            f"{meta['added']} new keys and removes {meta['removed']} (timed); a full `build_index` of the resulting "
            f"{res['reindex'][0]['total'] if res['reindex'] else '?'} vectors from their parquet shards (timed). "
            f"Neighbours of the {q} queries compared between the two and against a new exact ground truth.", "",
            "| index (4 shards) | nprobe | update s | full rebuild s | update / rebuild | delta segments "
            "| delta MiB | reader load s: update / rebuild | compaction s | identical top-10 vs rebuild "
            "| id overlap | identical after compaction | recall@10 update | recall@10 rebuild |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["reindex"]:
        out.append(f"| {r['factory']} | {r['nprobe'] or '-'} | {r['update_s']:.2f} | {r['rebuild_s']:.1f} | "
                   f"{r['ratio']:.1%} | {r['delta']}/{r['shards']} | {_mib(r['delta_bytes'])} | "
                   f"{r['load_update_s']:.1f} / {r['load_rebuild_s']:.1f} | {r['compact_s']:.1f} | "
                   f"{r['identical']:.1%} | {r['overlap']:.4f} | {r['compact_identical']:.1%} | "
                   f"{r['recall_update']:.4f} | {r['recall_rebuild']:.4f} |")
    out += ["", _reindex_note(res["reindex"], meta["goal_reindex"]), "", "**4. GPU vs CPU exact search**", ""]
    g = res.get("gpu")
    if not g:
        out.append("No GPU was available on this machine (`torch.cuda.is_available()` is false): not measured.")
    else:
        out += [f"{g['device']}; all {q} queries in one call; both include putting the database in place per call "
                "(torch_exact_search uploads it in chunks, exact_search builds an IndexFlatIP).", "",
                "| backend | QPS | recall@10 | x faiss CPU |", "|---|---:|---:|---:|"]
        for name in ("torch cuda", "faiss cpu"):
            out.append(f"| {name} | {g[name]['qps']:.1f} | {g[name]['recall']:.4f} | "
                       f"{g[name]['qps'] / g['faiss cpu']['qps']:.1f} |")
    return "\n".join(out) + "\n"
