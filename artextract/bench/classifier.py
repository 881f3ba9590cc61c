"""``python -m artextract.bench.classifier --out docs/benchmarks.md [--budget-s S] [--set key=value ...]``

WikiArt benchmark of the CNN-RNN classifier: ingest ../shared/data/wikiart, train from scratch
(configs/wikiart_classifier.yaml, stopped by the time budget at the latest), evaluate on the held-out
stratified 20% test split, and fit the classical baseline (colour histogram + 16x16 thumbnail +
logistic regression) on the same split. Writes the ``## Classifier (WikiArt)`` section.
"""
from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from artextract import storage
from artextract.bench.preprocess import git_commit, machine, write_doc
from artextract.config import (ClassifierTrainConfig, EvaluateClassifierConfig, IngestWikiartConfig,
                               load_config)

REPO = Path(__file__).resolve().parents[2]
WIKIART = REPO.parent / "shared" / "data" / "wikiart"
SECTION = "Classifier (WikiArt)"
TASKS = ("style", "genre")


def classical_features(data: bytes) -> np.ndarray:
    """Baseline features: 8x8x8 HSV colour histogram (512) + 16x16 RGB thumbnail (768)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        hsv = np.asarray(im.convert("HSV").resize((64, 64)), np.int64) // 32
        hist = np.bincount((hsv[..., 0] * 64 + hsv[..., 1] * 8 + hsv[..., 2]).ravel(), minlength=512)
        thumb = np.asarray(im.resize((16, 16), Image.BILINEAR), np.float32).ravel() / 255.0
    return np.concatenate([hist / hist.sum(), thumb]).astype(np.float32)


def baseline(run: str, manifest: str) -> dict[str, dict[str, float]]:
    """Fit logistic regression on train+val rows of the run's split, score the test rows."""
    from artextract.train import data as tdata

    splits = storage.read_parquet(storage.join(run, "splits.parquet"))
    keys = tdata.load_rows(manifest, TASKS, None)
    assert keys["image_id"].to_pylist() == splits["image_id"].to_pylist(), "split rows do not match"
    blobs = tdata.fetch_bytes(keys["src"].to_pylist(), keys["src_row"].to_pylist(), None)
    X = np.stack([classical_features(b) for b in blobs])
    split = np.array(splits["split"].to_pylist())
    out = {}
    for task in TASKS:
        y = splits[task].to_numpy()
        fit, test = (split != "test") & (y >= 0), (split == "test") & (y >= 0)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.05))
        clf.fit(X[fit], y[fit])
        p = clf.predict(X[test])
        out[task] = {"n": int(test.sum()), "accuracy": float(accuracy_score(y[test], p)),
                     "balanced_accuracy": float(balanced_accuracy_score(y[test], p)),
                     "macro_f1": float(f1_score(y[test], p, average="macro"))}
    return out


def _table(crnn: dict, base: dict) -> str:
    rows = ["| task | model | test n | accuracy | balanced acc. | macro-F1 | top-3 |", "|---|---|---|---|---|---|---|"]
    for task in TASKS:
        m, b = crnn[task], base[task]
        rows.append(f"| {task} | CNN-RNN (from scratch) | {m['n']} | {m['accuracy']:.3f} | "
                    f"{m['balanced_accuracy']:.3f} | {m['macro_f1']:.3f} | {m.get('top3', float('nan')):.3f} |")
        rows.append(f"| {task} | colour hist + thumbnail + logistic regression | {b['n']} | {b['accuracy']:.3f} | "
                    f"{b['balanced_accuracy']:.3f} | {b['macro_f1']:.3f} | – |")
    return "\n".join(rows)


def main(argv: list[str] | None = None, sink: dict | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``artextract.bench.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m artextract.bench.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--work", default="runs/bench-classifier")
    p.add_argument("--budget-s", type=float, default=1800.0, help="training time budget (s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if not (WIKIART / "images").is_dir():
        print(f"bench-classifier: needs the WikiArt sample at {WIKIART}", file=sys.stderr)
        return 2
    from artextract.ingest import wikiart
    from artextract.train import classifier, classifier_eval

    work = Path(args.work).resolve()
    manifest, run, report = str(work / "manifest"), str(work / "run"), str(work / "eval")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    wikiart.run(IngestWikiartConfig(splits=str(WIKIART / "artgan_splits"), images=str(WIKIART / "images"),
                                    out=manifest))
    cfg = load_config(ClassifierTrainConfig, str(REPO / "configs" / "wikiart_classifier.yaml"),
                      [f"data.input={manifest}", f"out={run}", f"train.time_budget_s={args.budget_s}",
                       "train.resume=false", *args.overrides])
    t0 = time.time()
    summary = classifier.run(cfg)
    train_s = time.time() - t0
    ev = classifier_eval.run(EvaluateClassifierConfig(run=run, out=report, split="test"))
    metrics = storage.read_json(storage.join(report, "metrics.json"))["tasks"]
    t1 = time.time()
    base = baseline(run, manifest)
    base_s = time.time() - t1
    info = machine()
    c = summary["counts"]
    partial = "" if summary["final"].get("epoch_complete", True) else " (stopped by the budget inside it)"
    body = (
        f"## {SECTION}\n\n"
        f"Command: `make bench-classifier` (`python -m artextract.bench.classifier "
        f"{' '.join(shlex.quote(a) for a in argv)}`)  \n"
        f"Date: {started}; commit {git_commit()}; {info['cores']} cores ({info['cpu']}), no GPU  \n"
        f"Data: ../shared/data/wikiart, {c['rows']} real paintings, 11 styles; split stratified by style: "
        f"{c['train_rows']} train / {c['val_rows']} val / {c['test_rows']} test (test rows are never used for "
        f"training or model selection)  \n"
        f"Model: configs/wikiart_classifier.yaml: {cfg.model.backbone} from scratch (no pretrained weights), "
        f"{cfg.model.sequence} sequences -> bi-{cfg.model.rnn.upper()}, {cfg.data.image_size} px, batch "
        f"{cfg.train.batch_size}; {c['steps']} steps ({c['epochs_completed']} full epochs) in {train_s / 60:.1f} min "
        f"(budget {args.budget_s / 60:.0f} min); best checkpoint by validation macro-F1: epoch "
        f"{summary['best_epoch']}{partial if summary['best_epoch'] > c['epochs_completed'] else ''}  \n"
        f"Baseline: fitted on train+val in {base_s:.0f} s\n\n"
        f"{_table(metrics, base)}\n\n"
        "Style balanced-accuracy target from scratch: >= 0.60. Published WikiArt results (ImageNet-pretrained, "
        f"full data, 27 styles): style 50-68%, genre 71-74%. Report: `{ev['report']}`.\n")
    if sink is not None:
        sink.update(crnn={t: metrics[t] for t in TASKS}, baseline=base, started=started)
    write_doc(Path(args.out), [(SECTION, body)])
    print(json.dumps({"crnn": {t: metrics[t] for t in TASKS}, "baseline": base}, indent=1, default=str)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
