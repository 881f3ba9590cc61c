"""Triplet loss with online mining (FaceNet, Schroff et al. 2015; batch-hard, Hermans et al. 2017).

The miners (miners.py) turn (distances (B,B), labels (B,), margin) into index triplets; mining runs
without gradient, the loss is then taken on the mined distances.
"""
from __future__ import annotations

import torch
from torch import nn

from artextract.losses.base import LOSSES, MINERS, pairwise_distance, zero_loss

@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """mean over mined triplets of max(0, d(a,p) - d(a,n) + margin); zero when nothing is mined."""

    def __init__(self, margin: float = 0.2, miner: str = "batch_hard", distance: str = "euclidean") -> None:
        super().__init__()
        self.margin = float(margin)
        self.miner = MINERS[miner]
        self.miner_name = miner
        self.distance = distance
        self.last_num_triplets = 0  # for logging: how many triplets the last batch mined

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,D) embeddings, (B,) int labels -> scalar loss."""
        dist = pairwise_distance(embeddings, self.distance)
        with torch.no_grad():
            a, p, n = self.miner(dist.detach(), labels, self.margin)
        self.last_num_triplets = int(a.numel())
        if a.numel() == 0:
            return zero_loss(embeddings)
        return torch.relu(dist[a, p] - dist[a, n] + self.margin).mean()
