"""Embedding network for similarity search: backbone -> global pool -> projection head -> unit sphere."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from artextract.models.backbones import build_backbone
from artextract.core.registry import Registry
from artextract.models.vit import ViTFeatures

if TYPE_CHECKING:
    from artextract.config import StorageConfig


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): p=1 is average, p->inf approaches max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) -> (B,C)."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


POOLS: Registry[Callable[[], nn.Module]] = Registry("pool")
POOLS.add("avg", lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
POOLS.add("max", lambda: nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1)))
POOLS.add("gem", GeM)


class EmbeddingNet(nn.Module):
    """Images (B,3,H,W) -> L2-normalised embeddings (B, dim); ``dim=None``: no projection head, the
    pooled backbone features themselves (ImageNet features + cosine, the seeds' naive method)."""

    def __init__(self, backbone: str = "resnet50", dim: int | None = 256, weights: str = "none",
                 pool: str = "avg", hidden: int | None = None, storage: StorageConfig | None = None) -> None:
        super().__init__()
        # pooled: a ViT hands over its CLS token (B, C, 1, 1) rather than its patch-token grid.
        self.backbone, channels = build_backbone(backbone, weights, storage, pooled=True)
        if pool == "gem" and isinstance(self.backbone, ViTFeatures):
            raise ValueError(f"pool=gem needs a non-negative (post-ReLU) feature map; {backbone} gives its "
                             "CLS token: use pool=avg")
        self.pool = POOLS[pool]()
        hidden = hidden or channels
        # Linear-BN-ReLU-Linear as in SimCLR-style heads; BN before ReLU keeps the head trainable
        # from a randomly initialised or frozen backbone.
        self.head = (nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                   nn.Linear(hidden, dim)) if dim else nn.Identity())
        self.dim = dim or channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, C) before the projection head."""
        return self.pool(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float images -> (B, dim) unit-norm embeddings."""
        return F.normalize(self.head(self.features(x)), dim=1)
