"""m-per-class batch sampling for metric learning: every batch holds P labels x m samples each."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class MPerClassBatchSampler(Sampler[list[int]]):
    """Yields index lists of P distinct labels x m samples (label-major order), deterministic per (seed, epoch).

    Labels with fewer than m items are sampled with replacement, so every batch has exactly P*m
    indices. With ``num_replicas > 1`` every rank draws the same global batch and keeps its
    contiguous slice, so ``GatherLoss`` reassembles exactly the batch a single process would see.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, m: int, p: int, batches_per_epoch: int | None = None,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-D sequence")
        if m < 1 or p < 1:
            raise ValueError(f"m and p must be >= 1, got m={m}, p={p}")
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if len(self.classes) < p:
            raise ValueError(f"p={p} labels per batch but only {len(self.classes)} distinct labels")
        if (p * m) % num_replicas:
            raise ValueError(f"batch size p*m={p * m} is not divisible by num_replicas={num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self.by_class = np.split(order, bounds)
        self.m, self.p, self.seed = m, p, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.batches_per_epoch = batches_per_epoch or max(1, len(labels) // (p * m))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; each epoch gets its own deterministic stream."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _batch(self, rng: np.random.Generator) -> list[int]:
        chosen = rng.choice(len(self.classes), size=self.p, replace=False)
        parts = [rng.choice(self.by_class[c], size=self.m, replace=len(self.by_class[c]) < self.m)
                 for c in chosen]
        return np.concatenate(parts).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        local = self.p * self.m // self.num_replicas
        for _ in range(self.batches_per_epoch):
            batch = self._batch(rng)
            yield batch[self.rank * local:(self.rank + 1) * local]
