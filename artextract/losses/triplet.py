"""Triplet loss with online mining (FaceNet, Schroff et al. 2015; batch-hard, Hermans et al. 2017).

A miner turns (distances (B,B), labels (B,), margin) into index triplets (anchor, positive,
negative); mining runs without gradient, the loss is then taken on the mined distances.
"""
from __future__ import annotations

import torch
from torch import nn

from artextract.losses.base import LOSSES, MINERS, label_masks, pairwise_distance, zero_loss

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@MINERS.register("batch_hard")
def batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Per anchor: its farthest positive and closest negative (anchors lacking either are skipped)."""
    pos, neg = label_masks(labels)
    valid = pos.any(1) & neg.any(1)
    inf = torch.finfo(dist.dtype).max
    hardest_pos = dist.masked_fill(~pos, -inf).argmax(1)
    hardest_neg = dist.masked_fill(~neg, inf).argmin(1)
    anchors = valid.nonzero().squeeze(1)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


@MINERS.register("semi_hard")
def semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Per (anchor, positive): the closest negative with d_ap < d_an < d_ap + margin (FaceNet)."""
    pos, neg = label_masks(labels)
    a, p = pos.nonzero(as_tuple=True)
    d_ap = dist[a, p][:, None]
    d_an = dist[a]  # (num_pairs, B)
    ok = neg[a] & (d_an > d_ap) & (d_an < d_ap + margin)
    keep = ok.any(1)
    # Hard negatives (d_an <= d_ap) are excluded on purpose: FaceNet found they collapse training early.
    n = d_an.masked_fill(~ok, torch.finfo(dist.dtype).max).argmin(1)
    return a[keep], p[keep], n[keep]


@MINERS.register("all")
def all_triplets(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Every valid (a, p, n) triplet that still violates the margin (a zero-loss triplet adds nothing)."""
    pos, neg = label_masks(labels)
    viol = pos[:, :, None] & neg[:, None, :] & (dist[:, :, None] - dist[:, None, :] + margin > 0)
    a, p, n = viol.nonzero(as_tuple=True)
    return a, p, n


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
