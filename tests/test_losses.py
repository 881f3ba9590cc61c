"""Miners and losses on hand-made batches with known answers; GatherLoss over 2 gloo ranks."""
from __future__ import annotations

import itertools
import socket

import pytest
import torch
import torch.nn.functional as F

from artextract.losses import LOSSES, MINERS, build_loss, pairwise_distance
from artextract.losses.distributed import GatherLoss

torch.set_num_threads(1)


def line(*xs: float) -> torch.Tensor:
    """Points on the x axis of R^2 (euclidean distances are plain differences)."""
    return torch.tensor([[x, 0.0] for x in xs])


def test_registries_list_the_builtins():
    assert {"triplet", "contrastive", "supcon"} <= set(LOSSES.names())
    assert {"batch_hard", "semi_hard"} <= set(MINERS.names())
    with pytest.raises(KeyError, match="unknown miner"):
        build_loss("triplet", miner="nope")


def test_distances():
    x = F.normalize(torch.randn(6, 5), dim=1)
    torch.testing.assert_close(pairwise_distance(x, "euclidean"), torch.cdist(x, x), atol=1e-5, rtol=0)
    torch.testing.assert_close(pairwise_distance(x, "cosine"), 1 - x @ x.T, atol=1e-6, rtol=0)
    x.requires_grad_()
    pairwise_distance(x, "euclidean").sum().backward()  # zero diagonal must not give NaN grads
    assert torch.isfinite(x.grad).all()


def test_batch_hard_picks_farthest_positive_and_closest_negative():
    emb = line(0.0, 1.0, 3.0, 3.5, 10.0)
    labels = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = MINERS["batch_hard"](pairwise_distance(emb), labels, 0.5)
    got = {int(i): (int(j), int(k)) for i, j, k in zip(a, p, n)}
    assert got == {0: (2, 3), 1: (2, 3), 2: (0, 3), 3: (4, 2), 4: (3, 2)}
    loss = build_loss("triplet", miner="batch_hard", margin=0.5)(emb, labels)
    # per anchor relu(d_ap - d_an + 0.5): 3-3.5, 2-2.5, 3-0.5, 6.5-0.5, 6.5-7 (+0.5 each)
    expected = (0.0 + 0.0 + 3.0 + 6.5 + 0.0) / 5
    torch.testing.assert_close(loss, torch.tensor(expected))


def _semi_hard_reference(dist, labels, margin):
    out = set()
    for a, p in itertools.permutations(range(len(labels)), 2):
        if labels[a] != labels[p]:
            continue
        cands = [n for n in range(len(labels)) if labels[n] != labels[a]
                 and dist[a][p] < dist[a][n] < dist[a][p] + margin]
        if cands:
            out.add((a, p, min(cands, key=lambda n: dist[a][n])))
    return out


def test_semi_hard_picks_negatives_beyond_the_positive_within_margin():
    # anchor 0, positive at 1.0; negatives: hard (0.5), semi-hard (1.3, 1.35), easy (5.0)
    emb = line(0.0, 1.0, 0.5, 1.3, 1.35, 5.0)
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    dist = pairwise_distance(emb)
    a, p, n = MINERS["semi_hard"](dist, labels, 0.4)
    got = {(int(i), int(j), int(k)) for i, j, k in zip(a, p, n)}
    assert (0, 1, 3) in got  # the closest semi-hard negative, not 2 (hard) nor 5 (easy)
    assert got == _semi_hard_reference(dist.tolist(), labels.tolist(), 0.4)
    for i, j, k in got:
        assert dist[i, j] < dist[i, k] < dist[i, j] + 0.4


def test_semi_hard_matches_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        emb = F.normalize(torch.randn(12, 3, generator=g), dim=1)
        labels = torch.randint(0, 3, (12,), generator=g)
        dist = pairwise_distance(emb, "cosine")
        a, p, n = MINERS["semi_hard"](dist, labels, 0.3)
        got = {(int(i), int(j), int(k)) for i, j, k in zip(a, p, n)}
        assert got == _semi_hard_reference(dist.tolist(), labels.tolist(), 0.3)


@pytest.mark.parametrize("name,kwargs", [
    ("triplet", {"miner": "batch_hard"}), ("triplet", {"miner": "semi_hard"}),
    ("triplet", {"miner": "all"}), ("contrastive", {}),
])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_loss_is_zero_when_classes_are_separated_beyond_margin(name, kwargs, distance):
    e = torch.eye(3)  # three orthogonal unit vectors: d = sqrt(2) (euclidean) or 1 (cosine)
    emb = e[[0, 0, 1, 1, 2, 2]].clone().requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = build_loss(name, margin=0.5, distance=distance, **kwargs)(emb, labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()  # still attached to the graph
    assert emb.grad is not None and torch.all(emb.grad == 0)


@pytest.mark.parametrize("name,kwargs", [("triplet", {"miner": "batch_hard"}),
                                         ("triplet", {"miner": "semi_hard"}), ("contrastive", {}),
                                         ("supcon", {"temperature": 0.2})])
def test_gradient_steps_reduce_the_loss(name, kwargs):
    g = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(12, 4, generator=g), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 2] * 4)
    loss_fn = build_loss(name, margin=0.5, **kwargs)
    first = loss_fn(emb, labels)
    assert first.item() > 0
    opt = torch.optim.SGD([emb], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(emb, labels).backward()
        opt.step()
    assert loss_fn(emb, labels).item() < first.item()


def test_contrastive_pulls_positives_together():
    emb = line(0.0, 0.4, 5.0).requires_grad_()
    loss = build_loss("contrastive", margin=1.0)(emb, torch.tensor([0, 0, 1]))
    (g,) = torch.autograd.grad(loss, emb)
    assert g[0, 0] < 0 < g[1, 0]  # descent moves point 0 right and point 1 left: toward each other


def test_contrastive_known_value():
    emb = line(0.0, 0.3, 1.0)
    labels = torch.tensor([0, 0, 1])
    loss = build_loss("contrastive", margin=0.8)(emb, labels)
    # positives: 0.3^2; negatives: relu(0.8-1.0)^2=0, relu(0.8-0.7)^2=0.01, averaged
    torch.testing.assert_close(loss, torch.tensor(0.09 + 0.005))


def test_supcon_known_value():
    """Two anchors per class on 2-D unit vectors, checked against the formula written out by hand."""
    import math

    c, s = math.cos(0.3), math.sin(0.3)
    emb = torch.tensor([[1.0, 0.0], [c, s], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])  # the third sample has no positive: it is no anchor
    t = 0.5
    # Anchor 0: positive 1 (cos c), negative 2 (cos 0). Anchor 1: positive 0 (cos c), negative 2 (cos s).
    l0 = -(c / t - math.log(math.exp(c / t) + math.exp(0.0)))
    l1 = -(c / t - math.log(math.exp(c / t) + math.exp(s / t)))
    loss = build_loss("supcon", temperature=t)(emb, labels)
    torch.testing.assert_close(loss, torch.tensor((l0 + l1) / 2))


def test_supcon_prefers_positives_closer_and_rejects_bad_temperature():
    near = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]]), dim=1)
    far = near[[0, 2, 1, 3]]  # same vectors, positives now on opposite sides
    labels = torch.tensor([0, 0, 1, 1])
    loss = build_loss("supcon", temperature=0.1)
    assert loss(near, labels).item() < loss(far, labels).item()
    with pytest.raises(ValueError, match="temperature"):
        build_loss("supcon", temperature=0.0)


def test_no_triplets_gives_attached_zero():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = build_loss("triplet")(emb, torch.arange(4))  # all labels distinct: no positives
    assert loss.item() == 0.0
    loss.backward()


def test_gather_loss_without_process_group_is_the_plain_loss():
    emb, labels = F.normalize(torch.randn(8, 4), dim=1), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    inner = build_loss("triplet", miner="semi_hard", margin=0.5)
    torch.testing.assert_close(GatherLoss(inner)(emb, labels), inner(emb, labels))


# ---- two ranks over gloo --------------------------------------------------------------------

CASES = [("triplet", {"miner": "batch_hard", "margin": 0.3}),
         ("triplet", {"miner": "semi_hard", "margin": 0.5, "distance": "cosine"}),
         ("contrastive", {"margin": 1.0}), ("supcon", {"temperature": 0.1})]
WORLD = 2


def _global_batch():
    # float64: 2 ranks and 1 process sum in different orders (and CPUs' kernels differ), ~1e-16
    # relative per operation, so a 1e-10 bound is strict on any CPU; float32 needed 1e-4.
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3] * 4)[torch.randperm(16, generator=g)]
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64)
    return x, labels, weight


def _single_process(name, kwargs, x, labels, weight):
    w = weight.clone().requires_grad_()
    emb = F.normalize(x @ w.T, dim=1)
    emb.retain_grad()
    loss = build_loss(name, **kwargs)(emb, labels)
    loss.backward()
    return loss.detach(), emb.grad, w.grad


SPLITS = [(8, 8), (10, 6)]  # equal halves, and unequal ones (GatherLoss pads to gather)


def _worker(rank, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x, labels, weight = _global_batch()
        results = []
        for splits in SPLITS:
            lo, hi = sum(splits[:rank]), sum(splits[:rank + 1])
            for name, kwargs in CASES:
                w = weight.clone().requires_grad_()  # same init on every rank, as DDP guarantees
                emb = F.normalize(x[lo:hi] @ w.T, dim=1)
                emb.retain_grad()
                loss = GatherLoss(build_loss(name, **kwargs))(emb, labels[lo:hi])
                loss.backward()
                wgrad = w.grad.clone()
                dist.all_reduce(wgrad)
                results.append((loss.detach(), emb.grad.clone(), wgrad / WORLD))  # DDP's average
        torch.save(results, f"{out}/rank{rank}.pt")
        dist.barrier()  # neither rank tears gloo down while the other still uses it (SIGABRT at exit)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_loss_two_ranks_matches_single_process(tmp_path):
    """Each rank's loss is the global loss; local grads are WORLD x the single-process rows (the
    all_gather backward sums over ranks), so DDP's averaged parameter grads equal the single-process ones."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    x, labels, weight = _global_batch()
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    cases = [(splits, name, kwargs) for splits in SPLITS for name, kwargs in CASES]
    for i, (splits, name, kwargs) in enumerate(cases):
        loss, emb_grad, w_grad = _single_process(name, kwargs, x, labels, weight)
        assert loss.item() > 0
        for rank in range(WORLD):
            r_loss, r_emb_grad, r_w_grad = per_rank[rank][i]
            lo, hi = sum(splits[:rank]), sum(splits[:rank + 1])
            torch.testing.assert_close(r_loss, loss, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(r_emb_grad, WORLD * emb_grad[lo:hi], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(r_w_grad, w_grad, rtol=1e-10, atol=1e-12)


# ---- training data: m-per-class batches and positive-pair augmentations -------------------------
# (they live here because they feed these losses; artextract/data has no test module of its own yet)

def test_m_per_class_sampler_guarantees():
    from artextract.data.sampler import MPerClassBatchSampler

    labels = [0] * 10 + [1] * 2 + [2] * 5 + [3] * 1 + [4] * 7  # labels 1 and 3 have fewer than m
    sampler = MPerClassBatchSampler(labels, m=4, p=3, batches_per_epoch=25, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25
    seen = set()
    for batch in batches:
        assert len(batch) == 12
        batch_labels = [labels[i] for i in batch]
        counts = {lb: batch_labels.count(lb) for lb in set(batch_labels)}
        assert len(counts) == 3 and set(counts.values()) == {4}
        for lb in counts:
            if lb in (0, 2, 4):  # enough items: sampled without replacement
                assert len({i for i in batch if labels[i] == lb}) == 4
        seen.update(batch_labels)
    assert seen == {0, 1, 2, 3, 4}
    assert batches == list(MPerClassBatchSampler(labels, m=4, p=3, batches_per_epoch=25, seed=7))
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new epoch reshuffles, still deterministically
    ranks = [list(MPerClassBatchSampler(labels, m=4, p=3, batches_per_epoch=25, seed=7, num_replicas=2, rank=r))
             for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == batches  # rank slices reassemble the global batch
    with pytest.raises(ValueError, match="distinct labels"):
        MPerClassBatchSampler(labels, m=2, p=6)


def test_sampler_drives_a_dataloader():
    from torch.utils.data import DataLoader, TensorDataset

    from artextract.data.sampler import MPerClassBatchSampler

    labels = torch.arange(20) % 5
    loader = DataLoader(TensorDataset(torch.randn(20, 3), labels),
                        batch_sampler=MPerClassBatchSampler(labels.tolist(), m=2, p=4, seed=0))
    x, y = next(iter(loader))
    assert x.shape == (8, 3) and len(set(y.tolist())) == 4 and len(loader) == 2


def test_two_views_are_different_and_sized():
    import numpy as np
    from PIL import Image

    from artextract.data.augment import reproduction_transform, two_views

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((90, 120, 3)) * 255).astype("uint8"))
    tf = reproduction_transform(size=64)
    a, b = two_views(img, tf)
    assert a.shape == b.shape == (3, 64, 64) and a.dtype == torch.float32
    assert not torch.allclose(a, b)
    gray = torch.randint(0, 256, (1, 50, 40), dtype=torch.uint8)  # grayscale scans become RGB
    assert two_views(gray, reproduction_transform(size=32, normalize=False))[0].shape == (3, 32, 32)
