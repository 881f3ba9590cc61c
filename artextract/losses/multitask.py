"""Multi-task cross-entropy for the classifier: one head per task, unknown labels (-1) masked."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def balanced_weights(labels: np.ndarray, n_classes: int, power: float = 1.0) -> torch.Tensor:
    """sklearn-style 'balanced' class weights (n / (C * count_c)) ** power from training labels (-1
    ignored); unseen classes get weight 1. Shape (C,). power 0.5 ("sqrt") tempers them: full
    balancing trades a lot of accuracy on frequent classes for recall on rare ones."""
    known = labels[labels >= 0]
    counts = np.bincount(known, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(known) / (n_classes * np.maximum(counts, 1)), 1.0) ** power
    return torch.tensor(w, dtype=torch.float32)


# loss.class_weights name -> power of the balanced weights (None = no weights).
CLASS_WEIGHT_POWER: dict[str, float | None] = {"none": None, "balanced": 1.0, "sqrt": 0.5}


class MultiTaskLoss(nn.Module):
    """Sum over tasks of ``task_weight * CE``, each task's CE normalised so it is DDP-exact.

    A task's loss is ``sum(CE over rows with a label) / (B_local * label_fraction)``: dividing by the
    local batch size (not by the count of labelled rows in it) keeps "mean over ranks of per-rank
    losses" equal to the single-process loss of the global batch, and dividing by the task's label
    fraction in the training set keeps a sparsely labelled task (artist: ~15% of WikiArt rows) from
    being silently down-weighted. Per-task values are returned for logging.
    """

    def __init__(self, tasks: list[str], label_fraction: dict[str, float],
                 class_weights: dict[str, torch.Tensor | None] | None = None,
                 task_weights: dict[str, float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.fraction = {t: max(float(label_fraction.get(t, 1.0)), 1e-6) for t in tasks}
        self.task_weights = {t: float((task_weights or {}).get(t, 1.0)) for t in tasks}
        self.smoothing = label_smoothing
        for t in tasks:
            w = (class_weights or {}).get(t)
            self.register_buffer(f"w_{t}", w if w is not None else None, persistent=False)

    def forward(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """logits {task: (B,C)}, targets {task: (B,) int, -1 unknown} -> (scalar loss, per-task floats)."""
        total = None
        parts = {}
        for t in self.tasks:
            y = targets[t]
            mask = y >= 0
            # Half-precision logits (AMP) are upcast for the softmax; float64 ones stay float64.
            z = logits[t].to(torch.promote_types(logits[t].dtype, torch.float32))
            w = getattr(self, f"w_{t}")
            ce = F.cross_entropy(z, y.clamp(min=0), weight=None if w is None else w.to(z.dtype),
                                 label_smoothing=self.smoothing, reduction="none")
            loss_t = (ce * mask).sum() / (len(y) * self.fraction[t])
            parts[t] = float(loss_t.detach())
            term = self.task_weights[t] * loss_t
            total = term if total is None else total + term
        return total, parts
