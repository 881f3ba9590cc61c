"""Near-duplicate protocol: can the model find the original work from a reproduction of it?

Each sampled original (a face crop or a whole painting, as JPEG bytes) gets ``copies`` random
"reproductions" (``reproduction_transform``: crop, flip, small rotation, colour jitter, greyscale,
blur, JPEG). Originals and copies are embedded with the same :class:`EmbedStage`; every copy queries
the set of originals, and the rank of its own original gives recall@1 / recall@5 and the mean
copy-original cosine. Chance level for recall@1 is 1 / originals.
"""
from __future__ import annotations

import io
import logging
import re
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from artextract.config import NearDuplicateConfig, StorageConfig
from artextract.data.augment import reproduction_transform
from artextract.stages.embed import EmbedStage
from artextract.stages.verify import GeometricVerifier

log = logging.getLogger(__name__)
COPY_JPEG_QUALITY = 95  # near-lossless: the transform already applies its own JPEG degradation
RECALL_KS = (1, 5, 10)


def built_model_args(model_spec: str, model_versions: list[str]) -> dict[str, int]:
    """``dim``/``seed`` for an ``untrained:``/``imagenet:`` spec, parsed from the shards' model_version
    (``<spec>@seed<seed>/d<dim>``) so the copies are embedded by the very model of the shards."""
    for mv in model_versions:
        m = re.fullmatch(re.escape(model_spec) + r"@seed(-?\d+)/d(\d+)", mv or "")
        if m:
            return {"seed": int(m.group(1)), "dim": int(m.group(2))}
    return {}


def make_copies(jpegs: list[bytes], copies: int, image_size: int, seed: int) -> list[bytes]:
    """``copies`` reproductions of each JPEG as JPEG bytes, original-major order (len = n * copies)."""
    transform = reproduction_transform(size=image_size, normalize=False)
    out: list[bytes] = []
    # fork_rng: seeded and reproducible without disturbing the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for data in jpegs:
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB")
                for _ in range(copies):
                    t = transform(im).clamp(0, 1)  # float (3, S, S) in [0, 1]
                    pil = v2.functional.to_pil_image((t * 255).round().to(torch.uint8))
                    # EmbedStage.embed takes JPEG bytes, so copies take the same decode path as originals.
                    buf = io.BytesIO()
                    pil.save(buf, format="JPEG", quality=COPY_JPEG_QUALITY)
                    out.append(buf.getvalue())
    return out


def copy_ranks(originals: np.ndarray, copies: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank (1 = best) of each copy's own original among all originals, and that cosine;
    originals (n, D), copies (m, D) unit vectors, owner (m,) index of each copy's original."""
    return copy_ranks_from_scores(copies @ originals.T, owner)


def copy_ranks_from_scores(scores: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks from a (copies, originals) score matrix (higher = better), and each copy's own score."""
    own = scores[np.arange(len(scores)), owner]
    # Strictly greater: ties with another original are resolved in the copy's favour.
    return 1 + (scores > own[:, None]).sum(1), own


def _verified(orig_v: np.ndarray, copy_v: np.ndarray, owner: np.ndarray, originals: list[bytes],
              copies: list[bytes], cfg: NearDuplicateConfig, seed: int) -> dict[str, Any]:
    """The same ranks after geometric verification of each copy's top-K originals."""

    t0 = time.perf_counter()
    verifier = GeometricVerifier(min_inliers=cfg.verify_min_inliers, seed=seed)
    scores, inl = verifier.rerank(copy_v @ orig_v.T, copies, originals, top_k=cfg.verify_top_k)
    rank, _ = copy_ranks_from_scores(scores, owner)
    own = inl[np.arange(len(copies)), owner]
    others = np.where(np.eye(len(originals), dtype=bool)[owner], -1, inl).max(1)
    out: dict[str, Any] = {
        "verify_top_k": cfg.verify_top_k, "verify_min_inliers": cfg.verify_min_inliers,
        "verify_s": round(time.perf_counter() - t0, 2), "verified_mrr": float((1.0 / rank).mean()),
        # Inliers of each copy with its own original (-1: the original was outside the top-K) and
        # the most any other original reached: the margin the threshold sits in.
        "own_inliers_median": float(np.median(own)), "own_inliers_min": int(own.min()),
        "other_inliers_max": int(others.max())}
    for k in RECALL_KS:
        out[f"verified_recall@{k}"] = float((rank <= k).mean())
    log.info("near-duplicate verified: %s", {k: out[k] for k in ("verified_recall@1", "other_inliers_max")})
    return out


def near_duplicate(originals: list[bytes], cfg: NearDuplicateConfig, seed: int = 0,
                   model_versions: list[str] | None = None, storage_cfg: StorageConfig | None = None,
                   device: str = "auto") -> dict[str, Any]:
    """Run the protocol on original JPEGs; returns recall@1/@5, MRR, mean/median copy-original cosine
    (plain floats) and counts."""

    if len(originals) < 2:
        return {"skipped": f"needs at least 2 originals, got {len(originals)}"}
    extra = built_model_args(cfg.model, model_versions or [])
    stage = EmbedStage(cfg.model, image_size=cfg.image_size, device=device, storage_cfg=storage_cfg, **extra)
    copies = make_copies(originals, cfg.copies, cfg.copy_size or cfg.image_size, seed)
    orig_v, copy_v = stage.embed(originals), stage.embed(copies)
    owner = np.repeat(np.arange(len(originals)), cfg.copies)
    rank, own = copy_ranks(orig_v, copy_v, owner)
    out: dict[str, Any] = {
        "model": cfg.model, "model_version": stage.model_version, "what": cfg.what,
        "image_size": cfg.image_size, "copy_size": cfg.copy_size or cfg.image_size,
        "originals": len(originals), "copies": len(copies),
        "chance_recall@1": 1.0 / len(originals),
        "mrr": float((1.0 / rank).mean()),
        "mean_cosine": float(own.mean()), "median_cosine": float(np.median(own)),
        "mean_rank": float(rank.mean())}
    for k in RECALL_KS:
        out[f"recall@{k}"] = float((rank <= k).mean())
    if cfg.baseline:
        # The same originals and copies through the baseline model: what training bought.
        base = EmbedStage(cfg.baseline, image_size=cfg.image_size, device=device, storage_cfg=storage_cfg)
        b_rank, b_own = copy_ranks(base.embed(originals), base.embed(copies), owner)
        out["baseline"] = {"model": cfg.baseline, "mrr": float((1.0 / b_rank).mean()),
                           "mean_cosine": float(b_own.mean()),
                           **{f"recall@{k}": float((b_rank <= k).mean()) for k in RECALL_KS}}
    if cfg.verify_top_k:
        out.update(_verified(orig_v, copy_v, owner, originals, copies, cfg, seed))
    log.info("near-duplicate: %s", {k: out[k] for k in ("recall@1", "recall@5", "mean_cosine")})
    return out
