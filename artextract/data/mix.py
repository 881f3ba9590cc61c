"""Mixup and CutMix for multi-task batches (Zhang et al. 2018; Yun et al. 2019).

torchvision's v2.MixUp/CutMix one-hot a single label tensor; the classifier has one label per task,
some unknown (-1), so we mix the images here and let the loss mix the per-task cross-entropies:
``lam * CE(y) + (1 - lam) * CE(y[perm])``, each term masking its own unknown labels. Randomness comes
from torch's global RNG, which the training loop seeds per step (resumable, world-size independent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: images, the partner of each row (``perm``) and the weight of the row's own labels."""

    x: torch.Tensor
    perm: torch.Tensor | None  # None: this batch was not mixed
    lam: float


def _beta(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def _cutmix(x: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    h, w = x.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    # The box is clipped at the border: weight the labels by the area actually pasted.
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def mix_batch(x: torch.Tensor, mixup: float, cutmix: float, prob: float = 1.0) -> Mixed:
    """Mix batch ``x`` (B, C, H, W) with a random permutation of itself; alphas 0 switch a method off."""
    methods = [m for m, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
    if not methods or len(x) < 2 or float(torch.rand(())) >= prob:
        return Mixed(x, None, 1.0)
    method = methods[int(torch.randint(len(methods), ()))]
    perm = torch.randperm(len(x), device=x.device)
    if method == "mixup":
        lam = _beta(mixup)
        return Mixed(lam * x + (1.0 - lam) * x[perm], perm, lam)
    out, lam = _cutmix(x, perm, _beta(cutmix))
    return Mixed(out, perm, lam)
