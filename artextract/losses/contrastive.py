"""Contrastive (Siamese) loss, Hadsell, Chopra & LeCun 2006, over all pairs in the batch."""
from __future__ import annotations

import torch
from torch import nn

from artextract.losses.base import LOSSES, label_masks, pairwise_distance, zero_loss


@LOSSES.register("contrastive")
class ContrastiveLoss(nn.Module):
    """Positives pay d^2; negatives pay max(0, margin - d)^2; each averaged over its pairs, then summed.

    Averaging positives and negatives separately keeps the balance independent of P and m in an
    m-per-class batch (there are far more negative pairs than positive ones).
    """

    def __init__(self, margin: float = 0.5, distance: str = "euclidean") -> None:
        super().__init__()
        self.margin = float(margin)
        self.distance = distance

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,D) embeddings, (B,) int labels -> scalar loss."""
        dist = pairwise_distance(embeddings, self.distance)
        pos, neg = label_masks(labels)
        loss = zero_loss(embeddings)
        if pos.any():
            loss = loss + dist[pos].pow(2).mean()
        if neg.any():
            loss = loss + torch.relu(self.margin - dist[neg]).pow(2).mean()
        return loss
