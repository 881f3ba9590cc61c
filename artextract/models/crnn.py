"""Convolutional-recurrent multi-task classifier: CNN feature map -> sequence -> (bi)GRU/LSTM -> heads.

The backbone's last feature map (B, C, h, w) is reduced by a 1x1 conv and read as a sequence:
``rows`` (h steps, each the mean over the width), ``cols`` (w steps, mean over the height) or
``both`` (two RNNs whose pooled outputs are concatenated). Reading the map as a sequence lets the
model relate distant regions of a composition, which global pooling alone discards.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from artextract.models.backbones import build_backbone
from artextract.core.registry import Registry

if TYPE_CHECKING:
    from artextract.config import ClassifierModelConfig, StorageConfig

RNNS: Registry[type[nn.RNNBase]] = Registry("rnn")
RNNS.add("gru", nn.GRU)
RNNS.add("lstm", nn.LSTM)

# Feature map (B, C, h, w) -> sequences (B, T, C), one per reading direction.
SEQUENCES: Registry[Callable[[torch.Tensor], list[torch.Tensor]]] = Registry("sequence")
SEQUENCES.add("rows", lambda f: [f.mean(dim=3).transpose(1, 2)])
SEQUENCES.add("cols", lambda f: [f.mean(dim=2).transpose(1, 2)])
SEQUENCES.add("both", lambda f: [f.mean(dim=3).transpose(1, 2), f.mean(dim=2).transpose(1, 2)])

# RNN outputs (B, T, H) -> (B, H).
POOLS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("sequence pool")
POOLS.add("mean", lambda out: out.mean(dim=1))
POOLS.add("max", lambda out: out.amax(dim=1))
POOLS.add("last", lambda out: out[:, -1])


class CRNNClassifier(nn.Module):
    """Images (B,3,H,W) -> {task: logits (B, n_classes[task])}; ``features`` gives the pooled vector."""

    def __init__(self, n_classes: dict[str, int], backbone: str = "resnet18", weights: str = "none",
                 sequence: str = "both", rnn: str = "gru", reduce_channels: int | None = 256,
                 hidden: int = 256, layers: int = 1, bidirectional: bool = True, pool: str = "mean",
                 dropout: float = 0.2, storage: StorageConfig | None = None) -> None:
        super().__init__()
        if not n_classes:
            raise ValueError("CRNNClassifier needs at least one task")
        self.backbone, channels = build_backbone(backbone, weights, storage)
        width = reduce_channels or channels
        self.reduce = (nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                     nn.ReLU(inplace=True)) if reduce_channels else nn.Identity())
        self.sequence, self.pool = SEQUENCES[sequence], POOLS[pool]
        n_seq = len(self.sequence(torch.zeros(1, 1, 1, 1)))
        self.rnns = nn.ModuleList(RNNS[rnn](width, hidden, num_layers=layers, batch_first=True,
                                            bidirectional=bidirectional) for _ in range(n_seq))
        self.feature_dim = n_seq * hidden * (2 if bidirectional else 1)
        self.heads = nn.ModuleDict({task: nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, n))
                                    for task, n in n_classes.items()})

    @classmethod
    def from_config(cls, cfg: ClassifierModelConfig, n_classes: dict[str, int],
                    storage: StorageConfig | None = None) -> CRNNClassifier:
        """Build from a :class:`ClassifierModelConfig` and the per-task class counts."""
        return cls(n_classes, storage=storage, **cfg.model_dump())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> pooled sequence features (B, feature_dim)."""
        fmap = self.reduce(self.backbone(x))
        pooled = []
        for rnn, seq in zip(self.rnns, self.sequence(fmap)):
            out, _ = rnn(seq)
            pooled.append(self.pool(out))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,3,H,W) float images -> {task: (B, C_task) logits}."""
        feats = self.features(x)
        return {task: head(feats) for task, head in self.heads.items()}
