"""``artextract demo``: the main jobs on the embedded default collection, offline.

Generates the sample collection (real photographic faces from scikit-image's bundled data,
painterly variants, faceless scenes, and deliberately broken files), ingests it, runs the Ray
preprocess pipeline, then (demo_models.py) trains a tiny style classifier with its report and a tiny
face-similarity model -> embeddings -> index -> query grid, and prints what happened. ``--images URI`` runs the same on your own data.
"""
from __future__ import annotations

import logging
import os

from artextract import demo_models

from artextract.core import layout, storage
from artextract.config import DemoConfig, IngestFolderConfig
from artextract.ingest import folder
from artextract.pipelines import preprocess
from artextract.core.runinfo import JobRun
from artextract.samples import write_collection

log = logging.getLogger(__name__)


def _check_expected(expected: dict[str, str], pre_out: str, cfg: DemoConfig) -> dict[str, int]:
    """Compare each sample file's outcome with the one the sample registry promises."""
    images = layout.PreprocessOutput(pre_out, cfg.storage).images.read(
        columns=["relpath", "status", "reason"]).to_pylist()
    got = {r["relpath"]: ("ok" if r["status"] == "ok" else r["reason"]) for r in images}
    bad = {f: (exp, got.get(f)) for f, exp in expected.items() if got.get(f) != exp}
    for f, (exp, g) in bad.items():
        log.warning("sample %s: expected %s, got %s", f, exp, g)
    return {"expected_outcomes_matched": len(expected) - len(bad), "expected_outcomes_total": len(expected)}


def run(cfg: DemoConfig) -> dict:
    """Ingest + preprocess the sample (or ``cfg.images``) under ``cfg.out``; returns the summary."""
    job = JobRun("demo", cfg, cfg.out)
    expected: dict[str, str] = {}
    images = cfg.images
    if not images:
        images = storage.join(cfg.out, "sample_collection")
        expected = write_collection(images)
        job.lap("generate_sample")
    man_out = storage.join(cfg.out, "manifest")
    ingest = folder.run(IngestFolderConfig(images=images, out=man_out, storage=cfg.storage))
    job.lap("ingest")
    pre_cfg = cfg.preprocess.model_copy(update={"manifest": man_out, "out": storage.join(cfg.out, "preprocess"),
                                                "storage": cfg.storage, "ray": cfg.ray})
    pre = preprocess.run(pre_cfg)
    job.lap("preprocess")
    counts = {"images": ingest["counts"]["manifest_rows"], **{k: pre["counts"][k] for k in (
        "processed", "quarantined", "faces", "images_with_faces", "quarantine_reasons")}}
    if expected:
        counts.update(_check_expected(expected, pre_cfg.out, cfg))
    extra: dict = {}
    if cfg.classifier:
        extra["classifier"] = demo_models.classifier_demo(cfg)
        job.lap("classifier")
    if cfg.similarity and counts["faces"] >= 8:
        extra["similarity"] = demo_models.similarity_demo(cfg, pre_cfg.out)
        job.lap("similarity")
    elif cfg.similarity:
        log.warning("similarity demo skipped: only %d faces detected (need 8)", counts["faces"])
    summary = job.finish(counts, images_per_s=pre.get("images_per_s"),
                         outputs={"manifest": man_out, "preprocess": pre_cfg.out}, **extra)
    _print(summary)
    return summary


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _show(uri: str) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    if storage.is_remote(uri) or not os.path.isabs(uri):
        return uri
    rel = os.path.relpath(uri)
    return uri if rel.startswith("..") else rel


def _print(summary: dict) -> None:
    c = summary["counts"]
    lines = [
        "",
        "artextract demo",
        f"  images      {c['images']}",
        f"  processed   {c['processed']}  ({c['images_with_faces']} with faces)",
        f"  faces       {c['faces']}",
        f"  quarantined {c['quarantined']}  " + ", ".join(f"{k}={v}" for k, v in sorted(c["quarantine_reasons"].items())),
        f"  throughput  {summary.get('images_per_s')} img/s (pipeline, after Ray start-up)",
        f"  wall time   {summary['timings_s']['total']} s",
    ]
    if "expected_outcomes_total" in c:
        lines.append(f"  sample checks {c['expected_outcomes_matched']}/{c['expected_outcomes_total']} outcomes as expected")
    lines.append(f"  outputs     {_show(summary['outputs']['preprocess'])} (images/ faces/ quarantine/ summary.json)")
    if "classifier" in summary:
        c = summary["classifier"]
        style = c["test_metrics"].get("style", {})
        lines.append(f"  classifier  {c['epochs']} epochs on the generated style collection; test style accuracy "
                     f"{_pct(style.get('accuracy'))}, macro-F1 {_pct(style.get('macro_f1'))}")
        lines.append(f"              report: {_show(c['report'])}")
    if "similarity" in summary:
        s = summary["similarity"]
        nd = s["near_duplicate"]
        lines.append(f"  similarity  {s['faces_embedded']} faces embedded and indexed")
        if nd.get("copies"):
            lines.append(f"  copies      {nd['copies']} reproductions (crop, rotation, colour, blur, JPEG) of "
                         f"{nd['originals']} faces, each searched among the {nd['originals']} originals; "
                         "its own original ranked first:")
            lines.append(f"              {_pct(nd.get('verified_recall@1'))} embedding + SIFT/RANSAC verification "
                         f"(search copies=true) | {_pct(nd.get('recall@1'))} trained embedding alone | "
                         f"{_pct(nd.get('baseline_recall@1'))} untrained | {_pct(nd.get('chance_recall@1'))} chance")
        lines.append(f"              query grid: {_show(s['query_grid'])}")
        if s.get("index"):
            lines.append(f"  browse      artextract serve --index {_show(s['index'])}   (then open http://127.0.0.1:8000/)")
    print("\n".join(lines))
