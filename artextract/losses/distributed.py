"""``GatherLoss``: compute a batch loss over the *global* batch when training data-parallel.

Mining and pairwise losses need every rank's embeddings: with 2 ranks x B/2 each, a plain loss
would only ever compare samples within a rank's half. This wrapper all-gathers embeddings (with
``torch.distributed.nn.functional.all_gather``, whose backward routes each rank's gradient back to
its own slice) and labels, then applies the wrapped loss to the concatenation in rank order.

Gradient scaling. Every rank computes the same global loss L. The all_gather backward *sums*
the incoming gradients of all ranks for each slice, so on rank r the gradient w.r.t. its local
embeddings is ``world_size * dL/dx_r``. DDP then *averages* parameter gradients over ranks, which
divides that factor back out: the parameter update equals single-process training on the whole
batch (design principle: 2 workers x B/2 == 1 worker x B). Do not rescale the loss here.

This module is the only place in ``artextract.losses`` that touches ``torch.distributed``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather(embeddings: torch.Tensor, labels: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.distributed.nn.functional import all_gather

    # all_gather needs equal shapes; the last batch of an epoch may differ, so pad to the max size.
    n = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    pad = max(counts) - embeddings.shape[0]
    emb = torch.cat([embeddings, embeddings.new_zeros(pad, *embeddings.shape[1:])]) if pad else embeddings
    lab = torch.cat([labels, labels.new_zeros(pad)]) if pad else labels
    embs = all_gather(emb.contiguous())
    labs = [torch.empty_like(lab) for _ in range(world)]
    dist.all_gather(labs, lab.contiguous())
    return (torch.cat([e[:c] for e, c in zip(embs, counts)]),
            torch.cat([lb[:c] for lb, c in zip(labs, counts)]))


class GatherLoss(nn.Module):
    """Wrap a loss(embeddings, labels) so it runs over all ranks' samples; plain loss without a group."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B_local,D), (B_local,) -> scalar loss over the concatenated global batch (rank order)."""
        world = _world_size()
        if world > 1:
            labels = labels.to(embeddings.device)  # NCCL gathers only device tensors
            embeddings, labels = _gather(embeddings, labels, world)
        return self.loss(embeddings, labels)
