"""Online triplet miners for TripletLoss (registry ``MINERS``; ``loss.miner=<name>``): each turns
(distances (B,B), labels (B,), margin) into index triplets (anchor, positive, negative)."""
from __future__ import annotations

import torch

from artextract.losses.base import MINERS, label_masks

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
