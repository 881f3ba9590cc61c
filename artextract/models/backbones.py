"""CNN backbones from torchvision, cut to their last feature map (B, C, H, W).

Weights are ``"none"`` (random init, the offline default), ``"imagenet"`` (torchvision's weights
enum; needs network or a warm torch hub cache) or a URI (local path or s3://…) of a state dict
of the *whole* torchvision model, so checkpoints saved from a stock torchvision model load as-is.
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

from artextract.models.registry import Registry

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


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(name: str, constructor: Callable[..., nn.Module], weights_enum: Any) -> Callable[[Cut], Cut]:
    """Decorator: register ``cut`` as backbone ``name`` built by a torchvision ``constructor``."""

    def deco(cut: Cut) -> Cut:
        BACKBONES.add(name, BackboneSpec(constructor, weights_enum, cut))
        return cut

    return deco


def _resnet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    feats = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                          model.layer1, model.layer2, model.layer3, model.layer4)
    return feats, model.fc.in_features


register_backbone("resnet18", tvm.resnet18, tvm.ResNet18_Weights)(_resnet_cut)
register_backbone("resnet34", tvm.resnet34, tvm.ResNet34_Weights)(_resnet_cut)
register_backbone("resnet50", tvm.resnet50, tvm.ResNet50_Weights)(_resnet_cut)


@register_backbone("efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights)
def _efficientnet_cut(model: nn.Module) -> tuple[nn.Module, int]:
    # classifier = Dropout, Linear(C, 1000): C is the channel count of model.features' output.
    return model.features, model.classifier[-1].in_features


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
    from artextract.storage import read_bytes

    state = torch.load(io.BytesIO(read_bytes(uri, storage)), map_location="cpu", weights_only=True)
    # Accept training checkpoints that wrap the weights, and DDP's "module." prefix.
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{uri}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _summary(keys: list[str]) -> str:
    # Group by top-level module so a partial load reads "layer4 (30)" rather than 30 key names.
    groups: dict[str, int] = {}
    for k in keys:
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in groups.items()) or "none"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` non-strictly into ``model``; log missing/unexpected keys, fail if none matched."""
    own = model.state_dict()
    shape_bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_bad:
        raise ValueError(f"{source}: {len(shape_bad)} tensors have the wrong shape for this backbone, "
                         f"e.g. {shape_bad[:3]} (is it a state dict of a different architecture?)")
    # Count matches ourselves: BatchNorm quietly fills a missing num_batches_tracked, so
    # missing_keys alone would report those as loaded.
    matched = len(own.keys() & state.keys())
    if matched == 0:
        raise ValueError(f"{source}: no keys matched the model (e.g. got {list(state)[:3]}, "
                         f"expected {list(own)[:3]}); is it a torchvision state dict of this backbone?")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        log.warning("%s: loaded %d/%d tensors; missing: %s; unexpected: %s", source, matched, len(own),
                    _summary(result.missing_keys), _summary(result.unexpected_keys))


def build_backbone(name: str, weights: str = "none", storage: StorageConfig | None = None) -> tuple[nn.Module, int]:
    """Backbone ``name`` as (module mapping (B,3,H,W) -> last feature map (B,C,h,w), C); ``storage`` for s3 URIs."""
    spec = BACKBONES[name]
    model = spec.constructor(weights=None)
    if weights == "imagenet":
        load_weights(model, _imagenet_state_dict(name, spec), f"imagenet:{name}")
    elif weights != "none":
        load_weights(model, _uri_state_dict(weights, storage), weights)
    # Cut after loading so full-model state dicts (with the classifier head) load unchanged.
    return spec.cut(model)
