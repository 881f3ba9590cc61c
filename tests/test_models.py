"""Backbone registry, weight loading (URI / offline ImageNet) and EmbeddingNet, on tiny inputs."""
from __future__ import annotations

import time
import urllib.error

import pytest
import torch
from torch import nn

from artextract.models.backbones import BACKBONES, build_backbone, register_backbone
from artextract.models.embedding import EmbeddingNet

torch.set_num_threads(1)

EXPECTED_CHANNELS = {"resnet18": 512, "resnet50": 2048, "efficientnet_b0": 1280}


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_backbone_outputs_last_feature_map(name):
    feats, channels = build_backbone(name)
    assert channels == EXPECTED_CHANNELS[name]
    feats.eval()
    with torch.no_grad():
        out = feats(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, channels, 2, 2)  # stride 32 on every registered backbone


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


def test_weights_from_s3_uri(s3_bucket, s3_storage, caplog):
    import io

    import torchvision.models as tvm

    from artextract.storage import write_bytes

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
