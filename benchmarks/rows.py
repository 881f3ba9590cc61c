"""Headline rows of the benchmark summary: one function per benchmark turns the results dict its
``main(argv, sink=...)`` hands over into rows (benchmark, comparison, measured, baseline, ratio, goal,
met?, run date); plus parsing and merging of the ``## Summary`` table, so rows of benchmarks not run
this time are kept with their older date. Kept apart from ``suite.py`` so they are unit-testable
without running anything."""
from __future__ import annotations

from typing import Any

SECTION = "Summary"
COLUMNS = ("benchmark", "comparison", "measured", "baseline", "ratio", "goal", "met?", "run date")


def row(bench: str, comparison: str, measured: str, baseline: str, ratio: float | None, goal: str,
        met: bool | None, date: str) -> dict[str, str]:
    """One summary row; ``met`` None means no goal is set for this comparison."""
    return dict(zip(COLUMNS, (bench, comparison, measured, baseline, f"{ratio:.3g}x" if ratio is not None else "–",
                              goal, "–" if met is None else ("yes" if met else "**no**"), date)))


def status_row(bench: str, status: str, date: str) -> dict[str, str]:
    """A row recording a failure or a skip (the reason goes into the comparison column)."""
    return dict(zip(COLUMNS, (bench, status, "–", "–", "–", "–", "FAILED" if status.startswith("FAILED") else "–",
                              date)))


def failed(rows: list[dict[str, str]]) -> bool:
    return any(r["met?"] == "FAILED" for r in rows)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _date(res: dict[str, Any], date: str) -> str:
    return res.get("started") or date


def preprocess(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    n = res["numbers"]
    naive, local, s3 = (n.get(k, {}) for k in ("naive", "ray_local", "ray_s3"))
    ips = lambda d: d.get("images_per_s")  # noqa: E731
    d = _date(res, date)
    sp, s3r = local.get("speedup"), n.get("s3_vs_local")
    return [row("preprocess", "Ray pipeline (local dir) vs naive loop, img/s (median, cold start)",
                f"{ips(local) or 0:.2f} img/s", f"{ips(naive) or 0:.2f} img/s", sp, "≥ 2x", sp is not None and sp >= 2, d),
            row("preprocess", "Ray pipeline: S3 over HTTP vs local dir, img/s", f"{ips(s3) or 0:.2f} img/s",
                f"{ips(local) or 0:.2f} img/s", s3r, "≥ 0.8x", s3r is not None and s3r >= 0.8, d)]


def embed(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    ray, dl, d = res["ray"], res["loader"], _date(res, date)
    sr = res["steady_ratio"]
    return [row("embed", "Ray Data vs PyTorch DataLoader, img/s steady state", f"{ray['steady_img_s'] or 0:.1f} img/s",
                f"{dl['steady_img_s'] or 0:.1f} img/s", sr, f"≥ {res['goal']}x", sr is not None and sr >= res["goal"], d),
            row("embed", "Ray Data vs PyTorch DataLoader, img/s end to end (Ray incl. actor start)",
                f"{ray['img_s']:.1f} img/s", f"{dl['img_s']:.1f} img/s", res["ratio"], "none set", None, d)]


def index(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    r, meta = res["res"], res["meta"]
    d = _date(meta, date)
    exact = max((x["qps_all"] for x in r.get("exact", [])), default=None)
    good = [x for x in r.get("ivf", []) if x["recall"] >= meta["goal_recall"]]
    # None at the recall goal: the highest-recall configuration, so the row still has a measured ratio.
    best = max(good, key=lambda x: x["speedup"]) if good else max(r.get("ivf", []), key=lambda x: x["recall"],
                                                                  default=None)
    what = "fastest IVF at" if good else "no IVF reached; highest-recall IVF vs"
    out = [row("index", f"{what} recall@10 ≥ {meta['goal_recall']} vs exact Flat, QPS"
               + (f" ({best['factory']} x{best['shards']} nprobe {best['nprobe']}, recall {best['recall']:.3f})"
                  if best else ""),
               f"{best['qps']:.0f} QPS" if best else "–", f"{exact or 0:.1f} QPS",
               best["speedup"] if best else None, f"≥ {meta['goal_speedup']:.0f}x",
               bool(good and best and best["speedup"] >= meta["goal_speedup"]), d)]
    re_rows = [x for x in r.get("reindex", []) if x.get("rebuild_s")]
    if re_rows:
        # The worst index type: the goal holds only if every type meets it.
        b = max(re_rows, key=lambda x: x["update_s"] / x["rebuild_s"])
        ratio = b["update_s"] / b["rebuild_s"]
        out.append(row("index", f"reindex +1% vs full rebuild, seconds (worst of {len(re_rows)} index types: "
                       f"{b['factory']})", f"{b['update_s']:.1f} s",
                       f"{b['rebuild_s']:.1f} s", ratio, f"≤ {meta['goal_reindex']}x", ratio <= meta["goal_reindex"], d))
    return out


def train(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    return [row("train", "Ray Train 2 workers vs 1 worker (CPU, gloo), samples/s, same global batch",
                f"{res['samples_s_2'] or 0:.1f} samples/s", f"{res['samples_s_1'] or 0:.1f} samples/s", res["ratio"],
                "none set", None, _date(res, date))]


def serve(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    api, reader = res["api_vector"]["p50"], res["reader_vector"]["p50"]
    return [row("serve", "`POST /api/search/vector` vs in-process search, p50 latency", f"{api:.1f} ms",
                f"{reader:.1f} ms", _ratio(api, reader), "none set", None, date)]


def reliability(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    results, clean = res["results"], res["clean_rows"]
    lost = sum(r.get("compare", {}).get("rows_lost", 0) for r in results)
    bad = sum(1 for r in results if r["rc"] != 0 or any(r.get("compare", {}).values()))
    faults = sum(r["stats"].get("injected", 0) for r in results)
    total = clean * len(results)
    return [row("reliability", f"rows intact under {faults} injected S3 faults vs a clean run",
                f"{total - lost} rows", f"{total} rows", _ratio(total - lost, total), "1x (0 rows lost)",
                lost == 0 and bad == 0, _date(res, date))]


def similarity(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    """Fine-tuned embedding vs the naive one, and (NGA) the fine-tuned shortlist + geometric verification."""
    def pick(rows: dict[str, Any], *words: str, plain: bool = True) -> tuple[str, dict] | None:
        hit = [(n, r) for n, r in rows.items() if all(w in n for w in words) and ("verification" not in n) == plain]
        return hit[-1] if hit else None  # the last fine-tuned row is the recommended recipe

    out = []
    for part, metric, goals in (("nga", "recall@1", (0.95, 0.99)), ("wikiart", "map@r", (None,))):
        rows = res[part]["rows"]
        base = pick(rows, "naive")  # the last naive row: ImageNet features where the run had them
        pairs = [pick(rows, "fine-tuned")] + ([pick(rows, "fine-tuned", "verification", plain=False)]
                                             if part == "nga" else [])
        for got, goal in zip(pairs, goals):
            if not base or not got:
                continue
            (tn, t), (bn, b) = got, base
            out.append(row("similarity", f"{part} {metric}: {tn} vs {bn}", f"{t[metric]:.3f}", f"{b[metric]:.3f}",
                           _ratio(t[metric], b[metric]), f"{metric} ≥ {goal}" if goal else "none set",
                           (t[metric] >= goal) if goal else None, _date(res, date)))
    return out


def classifier(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    r = res.get("results") or {"scratch": res["crnn"], "baseline": res["baseline"]}  # older runs: two rows
    out = []
    for model, base, text, goal in (
            ("pretrained", "probe", "CNN-RNN fine-tuned from ImageNet MobileNetV2 vs its linear probe", 0.75),
            ("scratch", "baseline", "CNN-RNN from scratch vs colour-histogram logistic regression", 0.60)):
        if r.get(model) and r.get(base):
            m, b = r[model]["style"]["balanced_accuracy"], r[base]["style"]["balanced_accuracy"]
            out.append(row("classifier", f"style balanced accuracy: {text}", f"{m:.3f}", f"{b:.3f}", _ratio(m, b),
                           f"balanced acc. ≥ {goal:.2f}", m >= goal, _date(res, date)))
    return out


def gpu(res: dict[str, Any], date: str) -> list[dict[str, str]]:
    meta = res["meta"]
    emb = next((r for r in res["results"] if r.get("stage", "").startswith("embedding") and "error" not in r), None)
    if emb is None:
        return []
    inc, exc = emb["img_s_incl_decode"], emb["img_s_excl_decode"]
    tag = " (dry run on CPU)" if meta.get("dry_run") else f" on {meta.get('device_name')}"
    return [row("gpu", f"ResNet50 embedding img/s incl. vs excl. JPEG decode{tag}", f"{inc:.1f} img/s",
                f"{exc:.1f} img/s", _ratio(inc, exc), "none set", None, meta.get("date") or date)]


def parse_rows(text: str) -> list[dict[str, str]]:
    """The rows of the ``## Summary`` table in ``text`` (empty when there is none)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == f"## {SECTION}"), None)
    if start is None:
        return []
    out = []
    for ln in lines[start + 1:]:
        if ln.startswith("## "):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")] if ln.startswith("| ") else []
        if len(cells) == len(COLUMNS) and cells[0] != COLUMNS[0] and not set(cells[0]) <= set("-:"):
            out.append(dict(zip(COLUMNS, cells)))
    return out


def merge(old: list[dict[str, str]], new: list[dict[str, str]], ran: list[str], order: list[str]) -> list[dict[str, str]]:
    """This run's rows for the benchmarks in ``ran``; the previous rows for every other benchmark;
    sorted by the suite's benchmark order (stable within a benchmark)."""
    kept = [r for r in old if r["benchmark"] not in ran]
    have = {r["benchmark"] for r in kept + new}
    # A benchmark with no row at all says so, instead of silently missing from the table.
    missing = [status_row(k, f"not run by this command: see its own section (`make bench-{k}`)", "–")
               for k in order if k not in have]
    rank = {k: i for i, k in enumerate(order)}
    return sorted(kept + new + missing, key=lambda r: rank.get(r["benchmark"], len(order)))


def summary_section(rows: list[dict[str, str]], meta: dict[str, str]) -> str:
    """The ``## Summary`` markdown: run facts and the headline table."""
    lines = [f"## {SECTION}", ""]
    if meta.get("quick") == "True":
        lines += ["> **Quick smoke run** (`--quick`): tiny sizes; the numbers exercise the harness and mean "
                  "nothing.", ""]
    lines += [f"Date: {meta['date']}  ", f"Machine: {meta['machine']}  ", f"Command: `{meta['command']}`  ",
              f"Commit: {meta['commit']}  ", f"Total wall time: {meta['wall']}", "",
              "Each ratio is measured / baseline, both measured in the same run (see each section for "
              "the method). Rows with an older run date come from an earlier run of the suite that "
              "included that benchmark (`--only`/`--skip` left it out this time).", "",
              "| " + " | ".join(COLUMNS) + " |", "|---|---|---:|---:|---:|---|---|---|"]
    lines += ["| " + " | ".join(r[c].replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"
