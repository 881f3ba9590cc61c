"""Shared pieces of the metric losses: registries, pairwise distances, label masks.

Every loss takes (embeddings (B,D), labels (B,)) and returns a scalar, so ``GatherLoss`` can wrap
any of them. Embeddings are expected L2-normalised (``EmbeddingNet`` output).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from artextract.core.registry import Registry

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
MINERS: Registry[Callable[..., Any]] = Registry("miner")
DISTANCES: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("distance")


@DISTANCES.register("cosine")
def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """(B,D) unit vectors -> (B,B) cosine distance 1 - cos, in [0, 2]."""
    return (1.0 - x @ x.T).clamp(min=0.0)


@DISTANCES.register("euclidean")
def euclidean_distance(x: torch.Tensor) -> torch.Tensor:
    """(B,D) -> (B,B) Euclidean distance, with a finite gradient at zero distance."""
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp(min=0.0)
    # sqrt'(0) is infinite: take the root only where d2 > 0 (duplicates get 0 with grad 0). The
    # expansion leaves ~1e-7 of rounding on the diagonal, whose root (3e-4) is not small: mask it.
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    pos = (d2 > 1e-12) & ~eye
    return torch.where(pos, d2.clamp(min=1e-12).sqrt(), torch.zeros_like(d2))


def pairwise_distance(x: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """(B,D) embeddings -> (B,B) distances under ``metric`` ("cosine" or "euclidean")."""
    return DISTANCES[metric](x)


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) labels -> (positive mask without the diagonal, negative mask), both (B,B) bool."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """A zero that stays attached to the graph, so backward() and DDP still see every parameter."""
    return x.sum() * 0.0


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Loss module ``name`` from ``LOSSES`` with its keyword arguments (e.g. margin, miner)."""
    return LOSSES[name](**kwargs)
