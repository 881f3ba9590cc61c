"""The one search service behind ``artextract search`` (jobs/search.py) and ``artextract serve``
(serve/engine.py): a published index version, what is known about its images (the catalog), the
models image queries are embedded with, and one ``search`` that turns query vectors into hits.

One hit schema, built here only::

    rank, image_id, face_idx, score          always (score: the index metric's, see ``score_note``)
    pose_distance_deg (+ pose_score)         with pose=filter|rerank
    inliers, verified                        with copies=true
    box                                      face box in original pixels (None when unknown), when asked

Callers add presentation only: the CLI the manifest ``metadata`` and a grid, the server the page's
title/artist/links. ``pose`` re-ranks by head pose, ``copies`` by geometric verification of the
shortlist (search/rerank.py); one re-ranking at a time.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from artextract.core import storage
from artextract.index import versions as V
from artextract.index.search import IndexReader
from artextract.pipelines.ray_env import init_ray
from artextract.search.catalog import PUBLIC_COLUMNS, Catalog
from artextract.search.query import QueryModels, lineage_of
from artextract.search.rerank import apply_copies, apply_pose, hit_image

FAN_OUT = {"local": "local", "ray": "ray_actors"}  # parallel= -> the fan_out recorded in the results


def open_reader(cfg, parallel: str, version: int | None = None):
    """(reader, fan_out) of ``cfg.index``: in-process shards, or one Ray actor per shard (``parallel``;
    ``auto`` picks Ray actors from ``cfg.ray_min_vectors`` vectors on)."""
    if not storage.exists(storage.join(cfg.index, "CURRENT"), cfg.storage):
        raise FileNotFoundError(f"no published index at {cfg.index} (CURRENT is missing; build it first "
                                f"with `artextract index build`)")
    mode = parallel
    if mode == "auto":
        total = int(V.read_manifest(cfg.index, version, cfg.storage).get("total", 0))
        mode = "ray" if total >= cfg.ray_min_vectors else "local"
    if mode == "ray":
        from artextract.index.ray_search import RayIndexReader  # lazy: ray

        init_ray(cfg.ray)
        return RayIndexReader(cfg.index, cfg.storage, version=version, **cfg.reader_kwargs(),
                              **cfg.ray_kwargs()), FAN_OUT[mode]
    return IndexReader(cfg.index, cfg.storage, version=version, **cfg.reader_kwargs()), FAN_OUT[mode]


def fetch_depth(k: int, pose: str, copies: bool, cfg) -> int:
    """How many candidates to fetch for k results: more when pose filtering may drop some, the
    verification shortlist with copies."""
    if copies:
        return max(k, cfg.copies_shortlist)
    return k * (cfg.pose_oversample if pose != "off" else 1)


def _query_pose(q: dict[str, Any], poses: dict[V.Key, Any]) -> tuple[float, float, float] | None:
    """A query's head pose: a stored key's from the catalog, else the one it carries (None entries:
    undefined angles)."""
    if q.get("key") is not None:
        p = poses.get(tuple(q["key"]))
        return None if p is None else tuple(math.nan if v is None else float(v) for v in p)
    p = q.get("pose")
    return None if p is None else tuple(math.nan if v is None else float(v) for v in p)


class SearchService:
    """One index version + its catalog + the query models (search and serve options ``cfg``)."""

    def __init__(self, cfg, reader, catalog: Catalog, fan_out: str = "local", models: QueryModels | None = None):
        self.cfg, self.reader, self.catalog, self.fan_out = cfg, reader, catalog, fan_out
        self.models = models or QueryModels(cfg)

    @classmethod
    def open(cls, cfg, parallel: str, version: int | None = None, discover: bool = True,
             columns: tuple[str, ...] = PUBLIC_COLUMNS, models: QueryModels | None = None) -> "SearchService":
        """Open ``cfg.index`` (``version`` or CURRENT). ``discover``: find the preprocess output and
        the manifest from the index's lineage when ``cfg.faces`` / ``cfg.manifest`` are unset."""
        reader, fan_out = open_reader(cfg, parallel, version)
        try:
            catalog = Catalog(cfg.index, reader.version, cfg.storage, cfg.faces, cfg.manifest,
                              lineage_of(reader) if discover else None, discover=discover, columns=columns)
        except BaseException:
            reader.close()
            raise
        return cls(cfg, reader, catalog, fan_out, models)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "SearchService":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def score_note(self) -> str:
        return ("inner product (higher is better)" if self.reader.metric == "ip"
                else "squared L2 distance (lower is better)")

    def search(self, q: np.ndarray, queries: list[dict[str, Any]], k: int, fetch: int, pose: str = "off",
               copies: bool = False, boxes: bool = True) -> tuple[list[list[dict[str, Any]]], dict[str, int]]:
        """(hits (the schema above) of each query row of ``q`` (q, d), at most ``k`` each; counts of the
        verification with copies=true, else {}).

        ``queries[i]``: ``key`` (image_id, face_idx) of a stored query, or its own ``pose`` and
        ``jpeg`` (the query's pixels, for copies=true)."""
        reader = self.reader
        if q.shape[1] != reader.manifest["dim"]:
            raise ValueError(f"query vectors have dim {q.shape[1]}, the index has dim {reader.manifest['dim']}")
        scores, keys = reader.search(q, fetch, self.cfg.nprobe, self.cfg.k_factor)
        results = [[{"rank": r + 1, "image_id": key[0], "face_idx": int(key[1]), "score": round(float(s), 6)}
                    for r, (s, key) in enumerate(zip(srow, krow))] for srow, krow in zip(scores, keys)]
        if pose != "off":
            wanted = {(h["image_id"], h["face_idx"]) for hits in results for h in hits}
            wanted |= {tuple(qd["key"]) for qd in queries if qd.get("key") is not None}
            poses = self.catalog.poses(sorted(k_ for k_ in wanted if k_[1] >= 0))
            results = [apply_pose(hits, _query_pose(qd, poses), poses, pose, k, self.cfg.pose_max_deg,
                                  self.cfg.pose_weight) for hits, qd in zip(results, queries)]
        counts: dict[str, int] = {}
        if copies:
            results, counts = self._verify(results, queries, k)
        results = [hits[:k] for hits in results]
        if boxes:
            found = self.catalog.boxes(sorted({(h["image_id"], h["face_idx"]) for hits in results for h in hits
                                               if h["face_idx"] >= 0}))
            for hits in results:
                for h in hits:
                    h["box"] = found.get((h["image_id"], h["face_idx"]))
        return results, counts

    def _verify(self, results: list[list[dict[str, Any]]], queries: list[dict[str, Any]], k: int
                ) -> tuple[list[list[dict[str, Any]]], dict[str, int]]:
        keys = {(h["image_id"], h["face_idx"]) for hits in results for h in hits}
        keys |= {tuple(qd["key"]) for qd in queries if qd.get("key") is not None}
        crops, wholes = self.catalog.pixels(sorted(keys))
        jpegs = [qd.get("jpeg") if qd.get("key") is None else hit_image(tuple(qd["key"]), crops, wholes)
                 for qd in queries]
        wrapped = [{"hits": hits} for hits in results]
        counts = apply_copies(wrapped, jpegs, crops, wholes, k, self.cfg.copies_min_inliers,
                              self.reader.metric == "ip")
        return [w["hits"] for w in wrapped], counts
