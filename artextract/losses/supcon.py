"""Supervised contrastive loss (Khosla et al. 2020); with instance labels it is SimCLR's NT-Xent.

Every sample is an anchor; its positives are the other samples with its label, and the softmax over
cosine similarity / temperature runs against *every* other sample of the (global) batch. Unlike a
mined triplet, each step pushes against all B-1 negatives at once, which is what instance
discrimination ("find this painting's reproduction") needs from small CPU batches.
"""
from __future__ import annotations

import torch
from torch import nn

from artextract.losses.base import LOSSES, label_masks, zero_loss


@LOSSES.register("supcon")
class SupConLoss(nn.Module):
    """Mean over anchors with >= 1 positive of -mean_p log softmax_j(z_a.z_j / T)[p] (SupCon "L_out").

    ``margin`` and ``distance`` are accepted (and ignored) so the config's shared loss keys build any
    registered loss; the geometry is always cosine on the unit sphere.
    """

    def __init__(self, temperature: float = 0.1, margin: float | None = None, distance: str | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,D) unit embeddings, (B,) int labels -> scalar loss (a graph-attached 0 without positives)."""
        pos, _ = label_masks(labels)
        has_pos = pos.any(1)
        if not has_pos.any():
            return zero_loss(embeddings)
        logits = embeddings @ embeddings.T / self.temperature
        eye = torch.eye(len(labels), dtype=torch.bool, device=embeddings.device)
        # Self-similarity is excluded from the denominator: -inf drops it from logsumexp.
        log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        per_anchor = (log_prob * pos).sum(1)[has_pos] / pos.sum(1)[has_pos]
        return -per_anchor.mean()
