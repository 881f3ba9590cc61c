"""Write the classifier evaluation report (PNGs, CSVs, metrics.json, report.html) to a local
directory or an s3:// prefix. Every file goes through ``artextract.core.storage`` (atomic writes)."""
from __future__ import annotations

import csv
import html
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.eval.metrics import HEADLINE_KEYS, classification_metrics, confusion
from artextract.eval.outliers import class_distance_outliers, confident_mispredictions
from artextract.eval.plots import confusion_png, image_grid_png, tsne_png

# Task names become file names (confusion_<task>.png), so keep them to a safe alphabet.
_TASK_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class TaskPredictions:
    """One head's output: class names (C), y_true (N,) int64 with -1 unknown, probs (N, C) softmax."""

    classes: list[str]
    y_true: np.ndarray
    probs: np.ndarray


@dataclass
class ClassifierPredictions:
    """Per-image predictions for all tasks, plus shared embeddings (N, D) and JPEG thumbnails."""

    image_ids: list[str]
    tasks: dict[str, TaskPredictions]
    embeddings: np.ndarray
    thumbnails: list[bytes | None]
    titles: list[str] | None = None


def _validate(preds: ClassifierPredictions) -> None:
    n = len(preds.image_ids)
    if np.asarray(preds.embeddings).ndim != 2 or len(preds.embeddings) != n:
        raise ValueError(f"embeddings must be (N, D) with N={n}, got {np.shape(preds.embeddings)}")
    if len(preds.thumbnails) != n:
        raise ValueError(f"{len(preds.thumbnails)} thumbnails for {n} images")
    if preds.titles is not None and len(preds.titles) != n:
        raise ValueError(f"{len(preds.titles)} titles for {n} images")
    for name, task in preds.tasks.items():
        if not _TASK_NAME.match(name):
            raise ValueError(f"task name {name!r} must match {_TASK_NAME.pattern} (it names files)")
        if len(task.y_true) != n or np.shape(task.probs) != (n, len(task.classes)):
            raise ValueError(f"task {name!r}: y_true (N,) and probs (N, C) must have N={n}, "
                             f"C={len(task.classes)}; got {np.shape(task.y_true)}, {np.shape(task.probs)}")


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def confusion_csv(cm: np.ndarray, classes: list[str]) -> str:
    """CSV text of cm (C, C): header 'true\\predicted' + class names, first column = true class."""
    return _csv(["true\\predicted", *classes], [[c, *map(int, row)] for c, row in zip(classes, cm)])


def _caption(preds: ClassifierPredictions, row: int, detail: str) -> str:
    name = preds.titles[row] if preds.titles is not None else preds.image_ids[row]
    return f"{name}\n{detail}"


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _write_task(out: str, name: str, task: TaskPredictions, preds: ClassifierPredictions,
                cfg: StorageConfig | None, metrics: dict[str, Any], *, tsne_max_points: int,
                outlier_method: str, outlier_top: int, mispredict_min_prob: float, seed: int) -> None:
    """All per-task files for one task that has labelled rows."""
    def put(fname: str, data: bytes | str) -> None:
        uri = storage.join(out, fname)
        if isinstance(data, str):
            storage.write_text(uri, data, cfg)
        else:
            storage.write_bytes(uri, data, cfg)

    y_true = np.asarray(task.y_true, dtype=np.int64)
    probs = np.asarray(task.probs)
    cm = confusion(y_true, probs.argmax(axis=1), len(task.classes))
    put(f"confusion_{name}.png", confusion_png(cm, task.classes, title=f"{name}: confusion (row-normalised)"))
    put(f"confusion_{name}.csv", confusion_csv(cm, task.classes))
    put(f"classification_report_{name}.txt", metrics["report"])
    put(f"tsne_{name}.png", tsne_png(preds.embeddings, y_true, task.classes, title=f"{name}: t-SNE",
                                     max_points=tsne_max_points, seed=seed))

    outl = class_distance_outliers(preds.embeddings, y_true, task.classes, outlier_top,
                                   method=outlier_method, seed=seed)
    put(f"outliers_{name}.csv", _csv(["image_id", "label", "score", "distance"],
                                     [[preds.image_ids[o["row"]], o["label"], o["score"],
                                       "" if o["distance"] is None else o["distance"]] for o in outl]))
    put(f"outliers_{name}.png", image_grid_png(
        [preds.thumbnails[o["row"]] for o in outl],
        [_caption(preds, o["row"], f"{o['score']:.2f} {o['label']}") for o in outl]))

    mis = confident_mispredictions(y_true, probs, task.classes, mispredict_min_prob, outlier_top)
    put(f"mispredictions_{name}.csv", _csv(["image_id", "label", "predicted", "prob"],
                                           [[preds.image_ids[m["row"]], m["label"], m["predicted"], m["prob"]]
                                            for m in mis]))
    put(f"mispredictions_{name}.png", image_grid_png(
        [preds.thumbnails[m["row"]] for m in mis],
        [_caption(preds, m["row"], f"{m['prob']:.2f} {m['label']} → {m['predicted']}") for m in mis]))
    metrics["n_outliers"] = len(outl)
    metrics["n_mispredictions"] = len(mis)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
.note{color:#a15c00}.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{margin:0;flex:1 1 600px}
code{background:#f5f5f5;padding:1px 4px}"""


def render_html(metrics: dict[str, Any], preds: ClassifierPredictions, extra: dict[str, Any]) -> str:
    """Self-contained HTML page (inline CSS, relative <img>/<a> links) for a metrics.json dict."""
    e = html.escape
    headers = ["task", "n", *HEADLINE_KEYS]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Classifier report</title>",
             f"<style>{_CSS}</style></head><body><h1>Classifier report</h1>",
             f"<p>{metrics['n_images']} images, {len(preds.tasks)} tasks.</p>",
             "<h2>Headline metrics</h2><table><tr>", *[f"<th>{e(h)}</th>" for h in headers], "</tr>"]
    for name, m in metrics["tasks"].items():
        parts.append(f"<tr><td><a href='#task-{e(name)}'>{e(name)}</a></td>"
                     + "".join(f"<td>{e(_fmt(m.get(k)))}</td>" for k in headers[1:]) + "</tr>")
    parts.append("</table>")
    coverage = extra.get("label_coverage") or {}
    if any(c["unknown_class_rows"] or c["unlabelled"] for c in coverage.values()):
        parts.append("<h2>Labels not scored</h2><p>Rows whose class the model has no head for are counted here "
                     "and left out of the metrics, like unlabelled rows.</p><table><tr><th>task</th><th>rows</th>"
                     "<th>scored</th><th>unknown class</th><th>unlabelled</th><th>unknown classes (rows)</th></tr>")
        for name, c in coverage.items():
            listed = ", ".join(f"{k} ({v})" for k, v in c["unknown_classes"].items())
            parts.append(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{c[k]}</td>" for k in (
                "rows", "scored", "unknown_class_rows", "unlabelled")) + f"<td style='text-align:left'>{e(listed)}</td></tr>")
        parts.append("</table>")
    if extra:
        parts.append("<h2>Run</h2><table><tr><th>key</th><th>value</th></tr>")
        for k, v in extra.items():
            val = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
            parts.append(f"<tr><td>{e(str(k))}</td><td style='text-align:left'><code>{e(val)}</code></td></tr>")
        parts.append("</table>")
    for name, m in metrics["tasks"].items():
        parts.append(f"<h2 id='task-{e(name)}'>{e(name)}</h2>")
        if not m["n"]:
            parts.append("<p class='note'>No row has a known label for this task: no metrics or plots.</p>")
            continue
        links = [f"confusion_{name}.csv", f"classification_report_{name}.txt",
                 f"outliers_{name}.csv", f"mispredictions_{name}.csv"]
        parts.append("<p>" + " · ".join(f"<a href='{e(f)}'>{e(f)}</a>" for f in links) + "</p>")
        figs = [(f"confusion_{name}.png", "Confusion matrix (rows normalised by true class)"),
                (f"tsne_{name}.png", "t-SNE of embeddings, coloured by label"),
                (f"outliers_{name}.png", f"Embedding outliers within their labelled class ({m.get('n_outliers', 0)})"),
                (f"mispredictions_{name}.png", f"Confident mispredictions ({m.get('n_mispredictions', 0)})")]
        parts.append("<div class='figs'>" + "".join(
            f"<figure><figcaption>{e(cap)}</figcaption><img src='{e(f)}' alt='{e(cap)}'></figure>"
            for f, cap in figs) + "</div>")
        parts.append("<details><summary>Per-class metrics</summary><table><tr><th>class</th>"
                     "<th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>")
        for cls, row in m["per_class"].items():
            parts.append(f"<tr><td>{e(cls)}</td>" + "".join(
                f"<td>{e(_fmt(row.get(k)))}</td>" for k in ("precision", "recall", "f1-score", "support"))
                + "</tr>")
        parts.append("</table></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_classifier_report(out: str, preds: ClassifierPredictions, *, storage_cfg: StorageConfig | None = None,
                            tsne_max_points: int = 2000, outlier_method: str = "robust_distance",
                            outlier_top: int = 24, mispredict_min_prob: float = 0.8, seed: int = 0,
                            extra: dict | None = None) -> dict:
    """Write per-task PNG/CSV/TXT files, metrics.json and report.html under ``out``; return metrics.json."""
    _validate(preds)
    extra = dict(extra or {})
    clash = {"tasks", "n_images"} & set(extra)
    if clash:  # silently overwriting the metrics with run config would be a nasty surprise
        raise ValueError(f"extra must not contain reserved keys {sorted(clash)}")
    tasks_out: dict[str, dict[str, Any]] = {}
    for name, task in preds.tasks.items():
        m = classification_metrics(task.y_true, task.probs, task.classes)
        if m["n"]:
            _write_task(out, name, task, preds, storage_cfg, m, tsne_max_points=tsne_max_points,
                        outlier_method=outlier_method, outlier_top=outlier_top,
                        mispredict_min_prob=mispredict_min_prob, seed=seed)
        m.pop("report")  # the text report lives in classification_report_<task>.txt
        tasks_out[name] = m
    result = {"tasks": tasks_out, "n_images": len(preds.image_ids), **extra}
    storage.write_json(storage.join(out, "metrics.json"), result, storage_cfg)
    # Written last: report.html is the entry point, so it only appears once everything it links exists.
    storage.write_text(storage.join(out, "report.html"), render_html(result, preds, extra), storage_cfg)
    return result
