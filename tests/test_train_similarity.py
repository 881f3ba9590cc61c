"""Similarity training with Ray Train: 1 vs 2 workers give the same weights (global-batch mining
through GatherLoss), label positives, and the exported model.pt feeds the embed stage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from artextract.core import storage
from artextract.config import SimilarityTrainConfig, load_config
from artextract.synthetic_styles import STYLES, render
from artextract.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    """A preprocess-shaped output: 12 images x 2 'face' crops, with an artist label per image."""
    root = str(tmp_path_factory.mktemp("pre"))
    styles = STYLES.names()
    ids, whole, artist, f_ids, f_idx, crops = [], [], [], [], [], []
    for i in range(12):
        image_id = f"img{i:03d}"
        ids.append(image_id)
        whole.append(render(styles[i % 4], "portrait", i % 2, seed=i, size=48))
        artist.append(f"artist{i % 3}")
        for f in range(2):
            f_ids.append(image_id)
            f_idx.append(f)
            crops.append(render(styles[(i + f) % 4], "portrait", f, seed=100 + 2 * i + f, size=40))
    storage.write_parquet(storage.join(root, "images", "part-00000.parquet"), pa.table({
        "image_id": ids, "status": ["ok"] * 12, "whole_jpeg": pa.array(whole, pa.binary()), "artist": artist}))
    storage.write_parquet(storage.join(root, "faces", "part-00000.parquet"), pa.table({
        "image_id": f_ids, "face_idx": pa.array(f_idx, pa.int16()), "crop_jpeg": pa.array(crops, pa.binary())}))
    return root


def _cfg(pre: str, out, **over) -> SimilarityTrainConfig:
    base = [f"out={out}", f"data.input={pre}", "model.backbone=resnet18", "model.dim=16", "model.hidden=32",
            "data.image_size=32", "data.p=4", "data.m=2", "data.batches_per_epoch=3", "data.val_fraction=0.25",
            "train.epochs=2", "train.freeze_bn=true", "train.cpus_per_worker=0.5", "train.torch_threads=1",
            "optim.warmup_epochs=0", "optim.lr=0.001", "loss.distance=cosine"]
    return load_config(SimilarityTrainConfig, overrides=base + [f"{k}={v}" for k, v in over.items()])


def _weights(out) -> dict[str, torch.Tensor]:
    return ckpt.load(ckpt.checkpoint_uri(str(out), "last"), task="similarity")["state_dict"]


def test_instance_batches_are_views_of_the_same_crop(pre, tmp_path):
    from artextract.train.similarity import SimilarityTask, prepare

    cfg = _cfg(pre, tmp_path)
    prep = prepare(cfg)
    assert prep.counts["train_rows"] + prep.counts["val_rows"] == prep.counts["crops"] == 24
    # by-image split: no image has faces on both sides
    assert not set(prep.train["image_id"].to_pylist()) & set(prep.val["image_id"].to_pylist())
    task = SimilarityTask(cfg, prep)
    b1 = next(iter(task.batches(0, 0, 0, 1)))
    halves = [next(iter(task.batches(0, 0, r, 2))) for r in (0, 1)]
    assert b1["image"].shape == (8, 3, 32, 32)
    assert (b1["label"][0::2] == b1["label"][1::2]).all()  # m=2 views of each instance, label-major
    assert not np.allclose(b1["image"][0], b1["image"][1])  # two different augmentations
    # rank slices reassemble the global batch exactly (same views, not just the same rows)
    assert np.allclose(np.concatenate([h["image"] for h in halves]), b1["image"])


def test_label_positives_need_a_column(pre, tmp_path):
    from artextract.train.similarity import prepare

    with pytest.raises(ValueError, match="label_column"):
        prepare(_cfg(pre, tmp_path, **{"data.positives": "label"}))
    prep = prepare(_cfg(pre, tmp_path, **{"data.positives": "label", "data.label_column": "artist",
                                          "data.p": 2}))
    assert set(prep.train["label"].to_pylist()) <= {"artist0", "artist1", "artist2"}


def test_extra_inputs_add_training_instances_only(pre, tmp_path):
    from artextract.models.embedding import EmbeddingNet
    from artextract.train.similarity import SimilarityTask, prepare

    extra = {"data.extra_inputs": f"[{{input: {pre}, what: images}}]"}
    base, prep = prepare(_cfg(pre, tmp_path)), prepare(_cfg(pre, tmp_path, **extra))
    # the 12 whole paintings join training; validation is the main input's held-out faces, unchanged
    assert prep.counts["extra_rows"] == 12
    assert len(prep.train) == len(base.train) + 12
    assert prep.val["label"].to_pylist() == base.val["label"].to_pylist()
    extra_labels = [x for x in prep.train["label"].to_pylist() if x.startswith("extra0:")]
    assert sorted(extra_labels) == [f"extra0:img{i:03d}/-1" for i in range(12)]  # one instance each
    assert prep.counts["train_labels"] == base.counts["train_labels"] + 12
    # a supcon batch over the combined instances gives a finite, positive loss with gradients
    cfg = _cfg(pre, tmp_path, **extra, **{"loss.name": "supcon", "loss.temperature": 0.2})
    task = SimilarityTask(cfg, prep)
    model = task.build_model()
    loss = task.loss(model, next(iter(task.batches(0, 0, 0, 1))), torch.device("cpu"))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert isinstance(model, EmbeddingNet) and model.head[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="positives=instance"):
        prepare(_cfg(pre, tmp_path, **extra, **{"data.positives": "label", "data.label_column": "artist",
                                                "data.p": 2}))


@pytest.mark.slow
def test_two_workers_match_one_and_model_embeds(ray_session, pre, tmp_path):
    from artextract.stages.embed import EmbedStage
    from artextract.train.similarity import run

    # float64 (train.dtype): 1 and 2 ranks (and any two CPUs) differ only by summation order, ~1e-12
    # after 6 Adam steps; wrong global-batch mining or gradient averaging moves weights by >1e-3.
    # Cosine distance: the euclidean sqrt near zero amplifies that noise; GatherLoss over 2 ranks
    # with euclidean distance is checked on the loss in test_losses.
    f64 = {"train.dtype": "float64"}
    s1 = run(_cfg(pre, tmp_path / "w1", **f64, **{"train.launcher": "process"}))  # the plain loop, no Ray
    run(_cfg(pre, tmp_path / "w2", **f64, **{"train.workers": 2}))
    w1, w2 = _weights(tmp_path / "w1"), _weights(tmp_path / "w2")
    assert s1["counts"]["steps"] == 6
    for k in w1:
        assert not w1[k].is_floating_point() or w1[k].dtype == torch.float64, k
        torch.testing.assert_close(w1[k], w2[k], atol=1e-9, rtol=1e-9, msg=k)
    assert "val_copy_recall@1" in s1["final"]
    # model.pt is an embedding checkpoint the embed stage loads as-is
    stage = EmbedStage(s1["model"], image_size=32, device="cpu")
    crops = storage.read_parquet(storage.join(pre, "faces"), columns=["crop_jpeg"])["crop_jpeg"].to_pylist()[:3]
    vecs = stage.embed(crops)
    assert vecs.shape == (3, 16) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_pretrained_recipe_through_the_job_entry_point_on_ray_train(ray_session, pre, tmp_path):
    """configs/nga_similarity_pretrained.yaml through jobs/train_similarity.py (the Ray job entry point:
    ``artextract train similarity``'s CLI, Ray Train launcher) from a torchvision MobileNetV2 file:
    frozen first epoch, then fine-tuning, EMA weights exported in model.pt, which the embed stage loads."""
    import runpy

    import torchvision.models as tvm

    from artextract.stages.embed import EmbedStage

    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "jobs" / "train_similarity.py"))["main"]

    weights = tmp_path / "mobilenet_v2.pth"  # stands in for torchvision's download: same keys and shapes
    torch.manual_seed(0)
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), weights)
    out = tmp_path / "run"
    recipe = str(Path(__file__).resolve().parents[1] / "configs" / "nga_similarity_pretrained.yaml")
    assert main(["--config", recipe, "--input", pre, "--out", str(out),
                 f"model.weights={weights}", "data.image_size=32", "data.p=4", "data.m=2", "data.batches_per_epoch=3",
                 "data.val_fraction=0.25", "train.epochs=2", "train.eval_every=1", "train.cpus_per_worker=0.5",
                 "train.torch_threads=1"]) == 0
    state = ckpt.load(ckpt.checkpoint_uri(str(out), "last"), task="similarity")
    assert state["progress"]["epoch"] == 2 and "train_state_dict" in state
    first = [k for k in state["state_dict"] if k.startswith("backbone.0.")][0]
    ref = tvm.mobilenet_v2(weights=None)
    ref.load_state_dict(torch.load(weights, weights_only=True))
    # The backbone started from the file and then moved (the second, unfrozen epoch).
    start = ref.features.state_dict()[first.removeprefix("backbone.")]
    assert not torch.equal(state["train_state_dict"][first], start)
    assert float((state["train_state_dict"][first] - start).abs().max()) < 0.05
    vecs = EmbedStage(str(out / "model.pt"), image_size=32, device="cpu").embed(
        storage.read_parquet(storage.join(pre, "faces", "part-00000.parquet"))["crop_jpeg"].to_pylist()[:4])
    assert vecs.shape == (4, 256)
