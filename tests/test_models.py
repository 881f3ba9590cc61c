"""Backbone registry, weight loading (URI / offline ImageNet) and EmbeddingNet, on tiny inputs."""
from __future__ import annotations

import time
import urllib.error

import pytest
import torch
from torch import nn

from artextract.models.backbones import BACKBONES, backbone_stages, build_backbone, register_backbone
from artextract.models.embedding import EmbeddingNet

torch.set_num_threads(1)

EXPECTED_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "efficientnet_b0": 1280,
                     "efficientnet_b3": 1536, "mobilenet_v2": 1280, "mobilenet_v3_large": 960, "convnext_tiny": 768,
                     "vit_b_16": 768}


def test_every_backbone_is_listed_here():
    assert set(BACKBONES.names()) - {"test_resnet18_layer3"} == set(EXPECTED_CHANNELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_backbone_outputs_last_feature_map(name):
    feats, channels = build_backbone(name)
    assert channels == EXPECTED_CHANNELS[name]
    feats.eval()
    with torch.no_grad():
        out = feats(torch.randn(2, 3, 64, 64))
    # Stride 32 on every CNN; ViT-B/16 lays its 16 px patch tokens out on their 4x4 grid.
    assert out.shape == (2, channels, *((4, 4) if name == "vit_b_16" else (2, 2)))
    assert len(backbone_stages(feats)) >= 6  # layer-wise LR decay has stages to decay over


def test_vit_tokens_grid_matches_torchvision_and_cls_feeds_pooling_models():
    import torchvision.models as tvm

    torch.manual_seed(0)
    ref = tvm.vit_b_16(weights=None).eval()
    path_state = ref.state_dict()
    feats, _ = build_backbone("vit_b_16")
    feats.load_state_dict({k: v for k, v in path_state.items() if not k.startswith("heads")}, strict=False)
    feats.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        grid = feats(x)
        feats.output = "cls"
        cls = feats(x)
        # torchvision's own forward up to the head: the final-norm CLS token.
        tokens = ref.encoder(torch.cat([ref.class_token, ref._process_input(x)], dim=1))
    assert grid.shape == (1, 768, 14, 14) and cls.shape == (1, 768, 1, 1)
    torch.testing.assert_close(cls[:, :, 0, 0], tokens[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-4, rtol=1e-4)
    net = EmbeddingNet("vit_b_16", dim=8, pool="avg")
    assert net.backbone.output == "cls" and net(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="pool=avg"):
        EmbeddingNet("vit_b_16", dim=8, pool="gem")


def test_registry_is_extensible_and_rejects_unknown_names():
    import torchvision.models as tvm

    name = "test_resnet18_layer3"
    if name not in BACKBONES:
        @register_backbone(name, tvm.resnet18, tvm.ResNet18_Weights)
        def _cut(model: nn.Module) -> tuple[nn.Module, int]:
            return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                                 model.layer1, model.layer2, model.layer3), 256

    feats, c = build_backbone(name)
    assert c == 256 and feats(torch.randn(1, 3, 64, 64)).shape == (1, 256, 4, 4)
    with pytest.raises(KeyError, match="unknown backbone 'vgg_nope'"):
        build_backbone("vgg_nope")


def test_weights_from_uri_load_full_torchvision_state_dict(tmp_path):
    import torchvision.models as tvm

    ref = tvm.resnet18(weights=None)
    with torch.no_grad():
        ref.layer4[1].conv2.weight.fill_(0.125)
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)  # includes fc.*: loaded before the head is cut off
    feats, _ = build_backbone("resnet18", weights=str(path))
    assert torch.equal(feats[7][1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(feats[0].weight, ref.conv1.weight)
    feats2, _ = build_backbone("resnet18", weights=f"file://{path}")
    assert torch.equal(feats2[0].weight, ref.conv1.weight)


def test_full_and_backbone_only_state_dicts_load_the_same_with_one_report_line(tmp_path, caplog):
    import logging

    import torchvision.models as tvm

    torch.manual_seed(1)
    ref = tvm.mobilenet_v2(weights=None)
    full, only = tmp_path / "full.pth", tmp_path / "backbone.pt"
    torch.save(ref.state_dict(), full)  # what torchvision downloads: features.* + classifier.*
    # A backbone-only file, as our checkpoints store it (CRNNClassifier's backbone.* keys).
    torch.save({f"backbone.{k.removeprefix('features.')}": v for k, v in ref.state_dict().items()
                if k.startswith("features.")}, only)
    with caplog.at_level(logging.INFO, logger="artextract.models.backbones"):
        a, _ = build_backbone("mobilenet_v2", weights=str(full))
        b, _ = build_backbone("mobilenet_v2", weights=str(only))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    torch.testing.assert_close(a[18][0].weight, ref.features[18][0].weight)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "full model state dict" in lines[0] and "loaded 260/260" in lines[0] and "head dropped: classifier (2)" \
        in lines[0] and "missing: none" in lines[0]
    assert "backbone state dict" in lines[1] and "head dropped: none" in lines[1]


def test_weights_from_s3_uri(s3_bucket, s3_storage, caplog):
    import io

    import torchvision.models as tvm

    from artextract.core.storage import write_bytes

    ref = tvm.resnet18(weights=None)
    buf = io.BytesIO()
    # A DDP-style checkpoint of the stem only: small for the test server, and partial loads are allowed.
    stem = {f"module.{k}": v for k, v in ref.state_dict().items() if k.split(".")[0] in ("conv1", "bn1", "layer1")}
    torch.save({"state_dict": stem}, buf)
    uri = f"s3://{s3_bucket}/weights/r18.pt"
    write_bytes(uri, buf.getvalue(), s3_storage)
    net = EmbeddingNet("resnet18", dim=8, weights=uri, storage=s3_storage)
    assert torch.equal(net.backbone[0].weight, ref.conv1.weight)
    assert "missing" in caplog.text and "layer4" in caplog.text


def test_weights_from_uri_mismatch_fails_clearly(tmp_path):
    import torchvision.models as tvm

    other = tmp_path / "effnet.pt"
    torch.save(tvm.efficientnet_b0(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="no keys matched"):
        build_backbone("resnet18", weights=str(other))
    r50 = tmp_path / "r50.pt"
    torch.save(tvm.resnet50(weights=None).state_dict(), r50)
    with pytest.raises(ValueError, match="wrong shape"):
        build_backbone("resnet18", weights=str(r50))
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pt"))


def test_imagenet_offline_fails_fast_with_offline_options(monkeypatch, tmp_path):
    import torchvision.models._api as api

    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)  # stands in for the download: the test never touches the network
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        build_backbone("resnet18", weights="imagenet")
    assert time.monotonic() - t0 < 10
    assert calls and calls[0].startswith("https://download.pytorch.org/")
    msg = str(info.value)
    assert "weights='none'" in msg and "s3://" in msg and "offline" in msg


@pytest.mark.parametrize("pool", ["avg", "gem"])
def test_embedding_net_outputs_unit_vectors(pool):
    net = EmbeddingNet(backbone="resnet18", dim=32, pool=pool)
    out = net(torch.randn(4, 3, 64, 64))
    assert out.shape == (4, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    out.sum().backward()  # the whole net is trainable end to end
    assert net.backbone[0].weight.grad is not None
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 32)  # BN head works on batch 1 in eval


def test_imagenet_spec_with_a_weights_uri_gives_pooled_backbone_features(tmp_path):
    """``imagenet:<backbone>=<URI>``: the seeds' naive method offline — the backbone's pooled features,
    no (random) projection head, deterministic (no seed/dim in its model_version)."""
    import torchvision.models as tvm

    from artextract.stages.embed import load_model, model_version_of

    torch.manual_seed(2)
    ref = tvm.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    spec = f"imagenet:resnet18={path}"
    model, version = load_model(spec, dim=32, seed=5)
    assert version == model_version_of(spec, 32, 5) == f"{spec}@pooled"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = torch.nn.functional.normalize(torch.flatten(ref.avgpool(
            nn.Sequential(*list(ref.children())[:-2])(x)), 1), dim=1)
        got = model(x)
    assert got.shape == (2, 512) and model.dim == 512
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
