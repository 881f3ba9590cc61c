"""Backbones from torchvision, cut to their last feature map (B, C, H, W).

Weights are ``"none"`` (random init, the offline default), ``"imagenet"`` (torchvision's weights
enum; needs network or a warm torch hub cache) or a URI (local path or s3://…) of a state dict:
either of the *whole* torchvision model (what torchvision downloads; the classifier head is dropped)
or of the backbone alone (e.g. ``backbone.*`` of one of our checkpoints). One log line says what
loaded, what was dropped and what is missing.
"""
from __future__ import annotations

import io
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from torchvision import models as tvm

from artextract.core.storage import read_bytes
from artextract.core.registry import Registry
from artextract.models.vit import ViTFeatures

if TYPE_CHECKING:
    from artextract.config import StorageConfig

log = logging.getLogger(__name__)

# A cut turns a full torchvision model into (feature extractor, channels of its last map).
Cut = Callable[[nn.Module], tuple[nn.Module, int]]

# Bounded so "imagenet" offline fails in seconds instead of hanging on a dead socket.
DOWNLOAD_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: torchvision constructor, its weights enum and the head cut."""

    constructor: Callable[..., nn.Module]
    weights_enum: Any
    cut: Cut
    size: int = 224  # input side its ImageNet weights were trained at (the pretrained recipes use it)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(name: str, constructor: Callable[..., nn.Module], weights_enum: Any,
                      size: int = 224) -> Callable[[Cut], Cut]:
    """Decorator: register ``cut`` as backbone ``name`` built by a torchvision ``constructor``."""

    def deco(cut: Cut) -> Cut:
        BACKBONES.add(name, BackboneSpec(constructor, weights_enum, cut, size))
        return cut

    return deco


def _resnet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    feats = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                          model.layer1, model.layer2, model.layer3, model.layer4)
    return feats, model.fc.in_features


register_backbone("resnet18", tvm.resnet18, tvm.ResNet18_Weights)(_resnet_cut)
register_backbone("resnet34", tvm.resnet34, tvm.ResNet34_Weights)(_resnet_cut)
register_backbone("resnet50", tvm.resnet50, tvm.ResNet50_Weights)(_resnet_cut)


def _features_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # EfficientNet, MobileNetV2, ConvNeXt: classifier ends in Linear(C, 1000), C = model.features' channels.
    return model.features, model.classifier[-1].in_features


def _mobilenet_v3_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # classifier = Linear(C, 1280), Hardswish, Dropout, Linear(1280, 1000): C is its first in_features.
    return model.features, model.classifier[0].in_features


def _vit_cut(model: nn.Module) -> tuple[nn.Module, int]:
    feats = ViTFeatures(model)
    return feats, feats.channels


for _name, _ctor, _enum, _size, _cut in (
        ("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights, 224, _features_cut),
        ("efficientnet_b3", tvm.efficientnet_b3, tvm.EfficientNet_B3_Weights, 300, _features_cut),
        ("mobilenet_v2", tvm.mobilenet_v2, tvm.MobileNet_V2_Weights, 224, _features_cut),
        ("mobilenet_v3_large", tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights, 224, _mobilenet_v3_cut),
        ("convnext_tiny", tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights, 224, _features_cut),
        ("vit_b_16", tvm.vit_b_16, tvm.ViT_B_16_Weights, 224, _vit_cut)):
    register_backbone(_name, _ctor, _enum, _size)(_cut)


def backbone_stages(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters grouped input -> output, for layer-wise learning-rate decay: its own
    ``stages()`` where it has one (ViT), else one group per child module that has parameters."""
    if hasattr(backbone, "stages"):
        return backbone.stages()
    return [ps for ps in (list(c.parameters()) for c in backbone.children()) if ps]


def _imagenet_state_dict(name: str, spec: BackboneSpec) -> dict[str, torch.Tensor]:
    weights = spec.weights_enum.DEFAULT
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, socket timeout, hash mismatch…: all mean "not available here"
        raise RuntimeError(
            f"could not fetch ImageNet weights for backbone {name!r} from {weights.url} ({e!r}). "
            "This machine may be offline: use weights='none' (random init) or weights=<local path "
            "or s3:// URI of a torchvision state dict>, or pre-populate the torch hub cache ($TORCH_HOME)."
        ) from e
    finally:
        socket.setdefaulttimeout(old)


def _uri_state_dict(uri: str, storage: StorageConfig | None) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(read_bytes(uri, storage)), map_location="cpu", weights_only=True)
    # Accept training checkpoints that wrap the weights, and DDP's "module." prefix.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{uri}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _summary(keys: list[str] | set[str]) -> str:
    # Group by top-level module so a partial load reads "layer4 (30)" rather than 30 key names.
    groups: dict[str, int] = {}
    for k in sorted(keys):
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in groups.items()) or "none"


def _counted(keys: set[str]) -> set[str]:
    # BatchNorm fills a missing num_batches_tracked itself; reporting those as missing is noise.
    return {k for k in keys if not k.endswith("num_batches_tracked")}


def load_weights(model: nn.Module, feats: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into backbone ``feats`` cut from ``model``: ``state`` is a state dict of the whole
    torchvision model (its head is dropped) or of the backbone alone (``backbone.`` prefix allowed).
    Logs one line (what loaded, dropped, missing); fails if nothing matched or a shape is wrong."""
    full, own = model.state_dict(keep_vars=True), feats.state_dict(keep_vars=True)
    ids = {id(t) for t in own.values()}
    in_backbone = {k for k, t in full.items() if id(t) in ids}  # full-model names of the backbone's tensors
    as_backbone = {k.removeprefix("backbone."): v for k, v in state.items()}
    if len(state.keys() & full.keys()) >= len(as_backbone.keys() & own.keys()):
        target, kind, wanted, got = model, "full model", in_backbone, state
        head = _counted(state.keys() & (full.keys() - in_backbone))
    else:
        target, kind, wanted, got, head = feats, "backbone", set(own), as_backbone, set()
    ref = target.state_dict()
    shape_bad = [k for k, v in got.items() if k in ref and ref[k].shape != v.shape]
    if shape_bad:
        raise ValueError(f"{source}: {len(shape_bad)} tensors have the wrong shape for this backbone, "
                         f"e.g. {shape_bad[:3]} (is it a state dict of a different architecture?)")
    loaded = _counted(wanted & got.keys())
    if not loaded:
        raise ValueError(f"{source}: no keys matched the model (e.g. got {list(state)[:3]}, "
                         f"expected {list(full)[:3]}); is it a torchvision state dict of this backbone?")
    target.load_state_dict(got, strict=False)
    missing, unexpected = _counted(wanted - got.keys()), _counted(got.keys() - ref.keys())
    (log.warning if missing or unexpected else log.info)(
        "weights %s (%s state dict): loaded %d/%d backbone tensors; head dropped: %s; missing: %s; "
        "unexpected: %s", source, kind, len(loaded), len(_counted(wanted)), _summary(head),
        _summary(missing), _summary(unexpected))


def build_backbone(name: str, weights: str = "none", storage: StorageConfig | None = None,
                   pooled: bool = False) -> tuple[nn.Module, int]:
    """Backbone ``name`` as (module mapping (B,3,H,W) -> last feature map (B,C,h,w), C); ``storage`` for
    s3 URIs. ``pooled``: a model that pools the map anyway gets ViT's CLS token as a (B,C,1,1) map."""
    spec = BACKBONES[name]
    model = spec.constructor(weights=None)
    feats, channels = spec.cut(model)
    if weights == "imagenet":
        load_weights(model, feats, _imagenet_state_dict(name, spec), f"imagenet:{name}")
    elif weights != "none":
        load_weights(model, feats, _uri_state_dict(weights, storage), weights)
    if pooled and isinstance(feats, ViTFeatures):
        feats.output = "cls"
    return feats, channels
