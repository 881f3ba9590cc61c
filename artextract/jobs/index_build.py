"""``artextract index build``: :func:`artextract.index.build.build_index` in a :class:`JobRun`.

Where the run records go:

- ``<out>/config.resolved.yaml`` -- written when the run STARTS (so it is the config of the latest
  attempt, also of one that failed, e.g. on a held LOCK);
- ``<out>/summary.json`` -- written when a build SUCCEEDS (the latest published build);
- ``<out>/versions/vNNNNNN/config.resolved.yaml`` and ``.../summary.json`` -- copies of both for
  the version that build published. These are the authoritative per-version records: they are
  pruned together with their version, and ``search`` reads ``embeddings`` from the index's lineage when
  it must fall back to the embedding shards. Versions published by ``update_index`` carry none.

``parallel=ray`` attaches to Ray first with ``init_ray(cfg.ray)`` (``ray.address`` /
``RAY_ADDRESS``, else a local Ray), so shard builds run on the configured cluster.

The index records what it descends from (``lineage`` in index.json: the embed run, its preprocess
output and manifest, :func:`artextract.core.layout.lineage`), so search and serve find the model,
crops and metadata without walking earlier runs' records.
"""
from __future__ import annotations

import logging
from typing import Any

from artextract.core import storage
from artextract.config import ConfigError, IndexBuildConfig, save_resolved
from artextract.core.runinfo import JobRun
from artextract.index import versions as V
from artextract.index.build import build_index
from artextract.pipelines.ray_env import init_ray

log = logging.getLogger(__name__)


def run_build(cfg: IndexBuildConfig) -> dict[str, Any]:
    """Build and publish a new index version; returns the summary written to summary.json."""
    if not cfg.embeddings or not cfg.out:
        raise ConfigError("index build needs embeddings= and out= (or --embeddings/--out)")
    job = JobRun("index_build", cfg, cfg.out)
    if cfg.parallel == "ray":
        init_ray(cfg.ray)
        job.lap("ray_init")
    manifest = build_index(cfg.embeddings, cfg.out, shards=cfg.shards, storage_cfg=cfg.storage,
                           parallel=cfg.parallel, keep=cfg.keep, seed=cfg.seed, force_lock=cfg.force_lock,
                           **cfg.build_kwargs())
    job.lap("build")
    version = int(manifest["version"])
    counts = {"vectors": manifest["total"], "shards": manifest["num_shards"], "per_shard": manifest["counts"],
              "dim": manifest["dim"], "metric": manifest["metric"], "factory": manifest["factory"],
              "nprobe": manifest["nprobe"], "k_factor": (manifest.get("refine") or {}).get("k_factor"),
              "refine_store": (manifest.get("refine") or {}).get("store"), "recall_at_10": manifest["recall_at_10"],
              "recall_queries": manifest["recall_queries"], "version": version,
              "model_versions": manifest["model_versions"]}
    summary = job.finish(counts, version_dir=V.version_dir(cfg.out, version))
    vdir = V.version_dir(cfg.out, version)
    try:  # per-version copies (best effort: the version is already published)
        save_resolved(cfg, vdir)
        storage.write_json(storage.join(vdir, "summary.json"), summary, cfg.storage)
    except OSError as exc:  # pragma: no cover - e.g. pruned meanwhile by a concurrent build
        log.warning("could not write the per-version run records into %s: %s", vdir, exc)
    return summary
