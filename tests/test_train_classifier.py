"""CNN-RNN classifier: model shapes, masked multi-task loss, splits, and Ray Train runs (1 vs 2
workers equivalence, crash + automatic resume, Ray Data streaming)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from artextract.core import storage
from artextract.config import ClassifierDataConfig, ClassifierTrainConfig, load_config
from artextract.losses.multitask import MultiTaskLoss, balanced_weights
from artextract.models.crnn import CRNNClassifier
from artextract.synthetic_styles import write_labelled_collection
from artextract.train import checkpoint as ckpt
from artextract.data import loaders as tdata


@pytest.mark.parametrize("sequence,rnn,pool", [("rows", "gru", "mean"), ("cols", "lstm", "last"),
                                               ("both", "gru", "max")])
def test_crnn_shapes(sequence, rnn, pool):
    m = CRNNClassifier({"style": 5, "genre": 3}, backbone="resnet18", sequence=sequence, rnn=rnn, pool=pool,
                       reduce_channels=16, hidden=8)
    out = m(torch.randn(2, 3, 64, 48))
    assert out["style"].shape == (2, 5) and out["genre"].shape == (2, 3)
    assert m.features(torch.randn(2, 3, 64, 48)).shape == (2, m.feature_dim)
    assert m.feature_dim == (2 if sequence == "both" else 1) * 16


def test_crnn_efficientnet_and_unknown_names():
    m = CRNNClassifier({"style": 2}, backbone="efficientnet_b0", reduce_channels=None, hidden=8)
    assert m(torch.randn(1, 3, 64, 64))["style"].shape == (1, 2)
    with pytest.raises(KeyError, match="unknown rnn"):
        CRNNClassifier({"style": 2}, rnn="transformer")


def test_multitask_loss_masks_unknown_and_is_ddp_exact():
    torch.manual_seed(0)
    logits = {"a": torch.randn(8, 4), "b": torch.randn(8, 3)}
    y = {"a": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), "b": torch.tensor([-1, 0, -1, 1, 2, -1, -1, 0])}
    loss = MultiTaskLoss(["a", "b"], {"a": 1.0, "b": 0.5})
    total, parts = loss(logits, y)
    known = y["b"] >= 0
    want_b = torch.nn.functional.cross_entropy(logits["b"][known], y["b"][known], reduction="sum") / (8 * 0.5)
    assert parts["b"] == pytest.approx(float(want_b), rel=1e-6)
    # Mean of the two halves' losses == the loss of the whole batch (what DDP averaging needs).
    halves = [loss({k: v[s] for k, v in logits.items()}, {k: v[s] for k, v in y.items()})[0]
              for s in (slice(0, 4), slice(4, 8))]
    assert float(sum(halves) / 2) == pytest.approx(float(total), rel=1e-6)
    # A batch where a task has no label at all is still finite.
    t2, p2 = loss(logits, {"a": y["a"], "b": torch.full((8,), -1)})
    assert torch.isfinite(t2) and p2["b"] == 0.0


def test_balanced_weights():
    w = balanced_weights(np.array([0, 0, 0, 1, -1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])
    assert balanced_weights(np.array([0, 0, 0, 1, -1]), 3, power=0.5).tolist() == pytest.approx(
        [2 / 3, (4 / 3) ** 0.5, 1.0])


def test_splits_are_stratified_deterministic_and_stable():
    ids = [f"img{i:04d}" for i in range(300)]
    styles = ["A"] * 200 + ["B"] * 100
    t = pa.table({"image_id": ids, "style": styles})
    cfg = ClassifierDataConfig(test_fraction=0.2, val_fraction=0.1, stratify="style")
    s1 = tdata.assign_splits(t, cfg)
    assert (s1 == tdata.assign_splits(t, cfg)).all()
    st = np.array(styles)
    assert ((s1 == "test") & (st == "A")).sum() == 40 and ((s1 == "test") & (st == "B")).sum() == 20
    # Adding rows never moves an existing row from test to train (hash-ranked, not shuffled).
    t2 = pa.table({"image_id": ids + ["zz1", "zz2"], "style": styles + ["B", "B"]})
    s2 = tdata.assign_splits(t2, cfg)[:300]
    assert ((s1 == "test") != (s2 == "test")).sum() <= 2


def test_vocab_min_count_and_encoding():
    t = pa.table({"style": ["a", "a", "b", None, "c", "c"]})
    vocab = tdata.build_vocab(t, ("style",), np.array([True] * 6), min_count=2)
    assert vocab == {"style": ["a", "c"]}
    assert tdata.encode_labels(t, vocab)["style"].tolist() == [0, 0, -1, -1, 1, 1]


def test_label_columns_must_exist(tmp_path):
    man = write_labelled_collection(str(tmp_path / "c"), per_style=2, size=32)
    with pytest.raises(ValueError, match="label columns"):
        tdata.load_rows(man, ("style", "sitter"), ClassifierTrainConfig().storage)


# ---------------------------------------------------------------- Ray Train runs


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return write_labelled_collection(str(tmp_path_factory.mktemp("styles")), per_style=8, size=40)


def _cfg(collection: str, out, **over) -> ClassifierTrainConfig:
    base = [f"out={out}", f"data.input={collection}", "data.image_size=32", "data.loader=local",
            "data.augment=false", "data.test_fraction=0.2", "data.val_fraction=0.15",
            "model.reduce_channels=16", "model.hidden=8", "model.dropout=0.0",
            "train.batch_size=8", "train.epochs=2", "train.freeze_bn=true", "train.cpus_per_worker=0.5",
            "train.torch_threads=1", "train.dtype=float64", "optim.warmup_epochs=0", "optim.lr=0.003"]
    return load_config(ClassifierTrainConfig, overrides=base + [f"{k}={v}" for k, v in over.items()])


def _weights(out) -> dict[str, torch.Tensor]:
    return ckpt.load(ckpt.checkpoint_uri(str(out), "last"), task="classifier")["state_dict"]


@pytest.fixture(scope="module")
def one_worker_run(ray_session, collection, tmp_path_factory):
    from artextract.train.classifier import run

    # The reference: the plain loop in this process (train.launcher=process), 1 worker x batch B.
    out = tmp_path_factory.mktemp("w1")
    return out, run(_cfg(collection, out, **{"train.launcher": "process"}))


@pytest.mark.slow
def test_two_workers_crash_after_epoch_and_resume_to_the_one_worker_result(ray_session, collection, one_worker_run,
                                                                          tmp_path):
    """Two checks that each need a whole Ray Train run, on one run (one worker-group start saved):
    2 DDP Ray Train workers train to the weights of the plain loop in one process, and a crash after
    epoch 1 (the worker group restarted by FailureConfig, resumed from last.pt) changes nothing:
    same history, score and weights."""
    import json

    from artextract.train.classifier import run

    out1, summary1 = one_worker_run
    assert summary1["counts"]["steps"] == 2 * summary1["counts"]["steps"] // 2 > 0
    out = tmp_path / "crash-w2"
    summary = run(_cfg(collection, out, **{"train.workers": 2, "train.fault_after_epoch": 1,
                                           "train.max_failures": 1}))
    assert storage.exists(str(out / "checkpoints" / "fault-injected-epoch1"))
    assert summary["counts"]["steps"] == summary1["counts"]["steps"]
    h1 = [json.loads(ln) for ln in (out1 / "history.jsonl").read_text().splitlines()]
    h2 = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert len(h2) == len(h1) == 2
    strip = ("seconds", "images_per_s")
    # float64 (train.dtype): 2 ranks sum in another order than 1, and CPUs' kernels differ, by
    # ~1e-15 per operation; a few Adam steps leave ~1e-12. A bad resume or a wrong gradient average
    # moves weights by >1e-3, so 1e-9 is strict and still holds on any CPU.
    for a, b in zip(h1, h2):
        assert {k: v for k, v in a.items() if k not in strip} == pytest.approx(
            {k: v for k, v in b.items() if k not in strip}, rel=1e-9, abs=1e-9)
    assert summary["final"]["val_score"] == pytest.approx(summary1["final"]["val_score"], rel=1e-9)
    w1, w2 = _weights(out1), _weights(out)
    init = CRNNClassifier({"style": 4, "genre": 2, "artist": 8}, reduce_channels=16, hidden=8).state_dict()
    moved = max(float((w1[k] - init[k]).abs().max()) for k in w1 if w1[k].is_floating_point() and k in init
                and w1[k].shape == init[k].shape)
    assert moved > 1e-2, "training did not change the weights"
    for k in w1:
        assert w1[k].dtype == w2[k].dtype and (not w1[k].is_floating_point() or w1[k].dtype == torch.float64), k
        torch.testing.assert_close(w1[k], w2[k], atol=1e-9, rtol=1e-9, msg=k)


# The streaming Ray Data loader with 2 DDP workers (augmentation on, BatchNorm training) is
# trained end to end by tests/test_cluster.py::test_submitted_classifier_training_with_two_workers,
# as a submitted Ray job: one Ray Train start for both checks.


# ---------------------------------------------------------------- crops, evaluation size, TTA


def test_crop_scale_validated_and_reaches_the_transform():
    with pytest.raises(ValueError, match="crop_scale"):
        ClassifierDataConfig(crop_scale=(0.5, 0.2))
    cfg = load_config(ClassifierTrainConfig, overrides=["data.crop_scale=[0.2,0.25]", "data.eval_size=64"])
    assert cfg.data.crop_scale == (0.2, 0.25) and cfg.data.eval_size == 64
    # A 1-px checkerboard survives a native-scale crop (~32 px of 64 resized to 32) but averages to
    # grey when the whole image is squeezed into 32 px: the spread tells which crop was taken.
    board = Image.fromarray(((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    torch.manual_seed(0)
    native = tdata.image_transform(32, True, crop_scale=(0.2, 0.25))(board)
    whole = tdata.image_transform(32, False)(board)
    assert float(native.std()) > 3 * float(whole.std())


def test_eval_size_used_for_validation_batches():
    from artextract.train.classifier import ClassifierTask, Prepared

    cfg = load_config(ClassifierTrainConfig, overrides=["data.tasks=[style]", "data.image_size=48",
                                                        "data.eval_size=96"])
    task = ClassifierTask(cfg, Prepared({}, {"style": ["a", "b"]}, {"style": 1.0}, {"style": None}))
    assert task.batch_maker(True).size == 48 and task.batch_maker(False).size == 96
    assert task.meta()["eval_size"] == 96


def test_flip_tta_makes_predictions_mirror_invariant(tmp_path):
    from artextract.eval.classifier import predict

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    paths = [tmp_path / "a.png", tmp_path / "a_mirror.png"]
    img.save(paths[0])
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[1])  # PNG: lossless, an exact mirror
    keys = pa.table({"src": [str(p) for p in paths], "src_row": [-1, -1]})
    torch.manual_seed(0)
    model = CRNNClassifier({"style": 3}, reduce_channels=16, hidden=8).eval()
    plain, _, _ = predict(model, keys, 32, 2, torch.device("cpu"), tta="none")
    flipped, feats, _ = predict(model, keys, 32, 2, torch.device("cpu"), tta="flip")
    # Convolutions and the GRUs are not mirror-symmetric, so without TTA the two differ.
    assert np.abs(plain["style"][0] - plain["style"][1]).max() > 1e-4
    np.testing.assert_allclose(flipped["style"][0], flipped["style"][1], atol=1e-5)
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-5)


def test_process_launcher_is_one_local_worker():
    from artextract.config import ConfigError

    with pytest.raises(ConfigError, match="runs 1 worker"):
        load_config(ClassifierTrainConfig, overrides=["train.launcher=process", "train.workers=2",
                                                      "data.loader=local"])
    with pytest.raises(ConfigError, match="needs data.loader=local"):
        load_config(ClassifierTrainConfig, overrides=["train.launcher=process"])
    assert load_config(ClassifierTrainConfig, overrides=["train.launcher=process", "data.loader=local"]
                       ).train.launcher == "process"


# ---------------------------------------------------------------- fine-tuning recipe pieces


def test_param_groups_scale_the_backbone_and_decay_it_layer_by_layer():
    from artextract.config import OptimConfig
    from artextract.train.param_groups import param_groups, set_backbone_frozen

    m = CRNNClassifier({"style": 3}, backbone="resnet18", reduce_channels=16, hidden=8)
    groups = param_groups(m, OptimConfig(lr=1e-3, backbone_lr_scale=0.1, layer_decay=0.25))
    lr = {g["name"].split("/")[0]: g["lr"] for g in groups}  # decay and no_decay groups share a stage's LR
    assert lr["head"] == 1e-3
    stages = sorted(int(n.removeprefix("backbone")) for n in lr if n.startswith("backbone"))
    assert lr[f"backbone{stages[-1]}"] == pytest.approx(1e-4)   # last stage: lr * scale
    assert lr[f"backbone{stages[0]}"] == pytest.approx(2.5e-5)  # first: times layer_decay
    by_depth = [lr[f"backbone{i}"] for i in stages]
    assert by_depth == sorted(by_depth) and len(set(by_depth)) == len(stages)
    # Every trainable parameter is in exactly one group; biases and norms are not decayed.
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert all(g["weight_decay"] == 0 for g in groups if g["name"].endswith("no_decay"))
    m.train()
    set_backbone_frozen(m, True)
    assert not any(p.requires_grad for p in m.backbone.parameters()) and all(p.requires_grad for p in m.heads.parameters())
    assert not m.backbone[1].training and m.reduce[1].training  # backbone BN held, the new layers' BN trains
    set_backbone_frozen(m, False)
    assert all(p.requires_grad for p in m.parameters())


def test_mixup_and_cutmix_mix_images_and_weights_the_labels():
    from artextract.data.mix import mix_batch

    x = torch.arange(4, dtype=torch.float64).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    assert mix_batch(x, 0.0, 0.0).perm is None
    torch.manual_seed(0)
    m = mix_batch(x, mixup=0.4, cutmix=0.0)
    torch.testing.assert_close(m.x, m.lam * x + (1 - m.lam) * x[m.perm])
    torch.manual_seed(0)
    c = mix_batch(x, mixup=0.0, cutmix=1.0)
    # Cutmix pastes a box from the partner: the share of pixels that kept their own value is lam.
    own = (c.x == x).double().mean(dim=(1, 2, 3))
    moved = c.perm != torch.arange(4)
    assert torch.allclose(own[moved], torch.full_like(own[moved], c.lam))
    torch.manual_seed(0)
    assert all(mix_batch(x, 0.4, 1.0, prob=0.0).perm is None for _ in range(5))


def test_mixed_loss_weights_both_label_sets():
    from artextract.train.classifier import ClassifierTask, Prepared

    cfg = load_config(ClassifierTrainConfig, overrides=["data.tasks=[style]", "data.mixup=0.4"])
    task = ClassifierTask(cfg, Prepared({}, {"style": ["a", "b", "c"]}, {"style": 1.0}, {"style": None}))
    model = CRNNClassifier({"style": 3}, reduce_channels=16, hidden=8).eval()
    batch = {"image": np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32),
             "y_style": np.array([0, 1, 2, -1])}
    torch.manual_seed(3)
    mixed_loss = float(task.loss(model, batch, torch.device("cpu")).detach())
    torch.manual_seed(3)
    from artextract.data.mix import mix_batch
    m = mix_batch(torch.as_tensor(batch["image"]), 0.4, 0.0)
    out = model(m.x)
    y = torch.as_tensor(batch["y_style"])
    own, _ = task.loss_fn(out, {"style": y})
    partner, _ = task.loss_fn(out, {"style": y[m.perm]})
    assert mixed_loss == pytest.approx(float((m.lam * own + (1 - m.lam) * partner).detach()), rel=1e-5)


def test_recipe_run_freezes_then_fine_tunes_with_ema_and_resumes_exactly(collection, tmp_path):
    """The pretrained recipe's loop pieces together (frozen warm-up epoch, backbone LR scale, layer
    decay, mixup/cutmix, EMA) in one process: the backbone does not move in the frozen epoch, the
    checkpoint's weights are the EMA, and stopping after epoch 1 then resuming gives the same run."""
    from artextract.train.classifier import run

    recipe = {"train.launcher": "process", "optim.freeze_backbone_epochs": 1, "optim.backbone_lr_scale": 0.1,
              "optim.layer_decay": 0.5, "train.ema_decay": 0.8, "data.mixup": 0.4, "data.cutmix": 1.0,
              "data.mix_prob": 0.7, "train.freeze_bn": "false"}
    # Stopped after epoch 1 of 2 (max_steps = one epoch's steps), so the schedule is the 2-epoch one.
    one = run(_cfg(collection, tmp_path / "one", **recipe, **{"train.max_steps": 2}))
    state = ckpt.load(ckpt.checkpoint_uri(str(tmp_path / "one"), "last"), task="classifier")
    torch.manual_seed(0)  # fit seeds with train.seed=0 before building the model: the same init
    ref = CRNNClassifier({"style": 4, "genre": 2, "artist": 8}, reduce_channels=16, hidden=8).double().state_dict()
    trained = state["train_state_dict"]
    assert one["counts"]["epochs_completed"] == 1
    for k, v in trained.items():
        if k.startswith("backbone.") and v.is_floating_point():
            torch.testing.assert_close(v, ref[k], msg=k)  # frozen: weights and BN statistics unchanged
    assert any(not torch.equal(trained[k], ref[k]) for k in trained if k.startswith("heads."))
    assert any(not torch.equal(trained[k], state["state_dict"][k]) for k in trained if k.startswith("heads."))
    # Resuming it to the end == one uninterrupted run (EMA, schedule and unfreeze included).
    resumed = run(_cfg(collection, tmp_path / "one", **recipe))
    straight = run(_cfg(collection, tmp_path / "two", **recipe))
    assert resumed["counts"]["steps"] == straight["counts"]["steps"]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-9, rtol=1e-9, msg=k)
    moved = ckpt.load(ckpt.checkpoint_uri(str(tmp_path / "two"), "last"), task="classifier")["train_state_dict"]
    assert any(not torch.equal(moved[k], ref[k]) for k in moved if k.startswith("backbone.") and
               moved[k].is_floating_point())


def test_evaluate_on_another_manifest_counts_classes_the_model_has_no_head_for(one_worker_run, collection,
                                                                              tmp_path):
    """``evaluate classifier --manifest`` on a collection with a style the model never saw: those rows
    are counted per class and left out of the metrics (neither dropped silently nor a crash), and the
    default split becomes 'all' (the new collection's rows are not in the run's split)."""
    import json

    import pyarrow.compute as pc

    from artextract import manifest
    from artextract.cli import main

    out, _ = one_worker_run
    table = tdata.load_rows(collection, (), None)
    rows = storage.read_parquet(tdata.part_files(collection, None)[0])
    unseen = pc.starts_with(rows["image_id"], rows["image_id"][0].as_py().split("/")[0])  # one whole style
    rows = rows.set_column(rows.schema.get_field_index("style"), "style",
                           pc.if_else(unseen, "Unseen_Style", rows["style"]))
    new = str(tmp_path / "other" / "manifest")
    manifest.write(rows, new, shard_rows=10_000)
    report = tmp_path / "eval-other"
    assert main(["evaluate", "classifier", "--run", str(out), "--manifest", new, "--out", str(report),
                 "tsne_max_points=20"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    n_unseen = int(pc.sum(unseen).as_py())
    c = summary["counts"]
    assert c["images"] == len(table) and c["style_unknown_class_rows"] == n_unseen > 0
    assert c["style_scored"] == len(table) - n_unseen and summary["unknown_classes"]["style"] == {"Unseen_Style": n_unseen}
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["tasks"]["style"]["n"] == c["style_scored"]
    assert metrics["label_coverage"]["genre"]["unlabelled"] == c["genre_unlabelled"] > 0
    splits = storage.read_parquet(str(out / "splits.parquet"))
    assert c["rows_seen_in_training"] == int(pc.sum(pc.is_in(splits["split"], pa.array(["train", "val"]))).as_py())
    assert "Labels not scored" in (report / "report.html").read_text() and "Unseen_Style (" in (
        report / "report.html").read_text()
