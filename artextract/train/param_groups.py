"""AdamW parameter groups for fine-tuning: heads at the base LR, the backbone scaled down, and
layer-wise decay from the backbone's last stage to its first; plus freezing the backbone.

Models expose their feature extractor as ``model.backbone`` (both CRNNClassifier and EmbeddingNet
do); a model without one gets two groups (decay / no decay) at the base LR.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from artextract.config import OptimConfig
from artextract.models.backbones import backbone_stages


def _split_decay(params: list[nn.Parameter], lr: float, weight_decay: float, name: str) -> list[dict[str, Any]]:
    # No decay on biases and norm scales: decaying them only hurts (standard AdamW practice).
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]
    return [g for g in ({"params": decay, "weight_decay": weight_decay, "lr": lr, "name": f"{name}/decay"},
                        {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": f"{name}/no_decay"})
            if g["params"]]


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Groups for ``torch.optim.AdamW``: backbone stage i of n at ``lr * backbone_lr_scale *
    layer_decay ** ((n-1-i)/(n-1))`` (so ``layer_decay`` is the first stage's LR relative to the last),
    every other parameter (RNN, projection, heads) at ``lr``."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return _split_decay(list(model.parameters()), cfg.lr, cfg.weight_decay, "model")
    stages = backbone_stages(backbone)
    in_backbone = {id(p) for ps in stages for p in ps}
    groups = _split_decay([p for p in model.parameters() if id(p) not in in_backbone], cfg.lr,
                          cfg.weight_decay, "head")
    n = len(stages)
    for i, ps in enumerate(stages):
        depth = (n - 1 - i) / max(n - 1, 1)
        groups += _split_decay(ps, cfg.lr * cfg.backbone_lr_scale * cfg.layer_decay ** depth, cfg.weight_decay,
                               f"backbone{i}")
    return groups


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) ``model.backbone``: no gradients, and its BatchNorm statistics held in eval
    mode so the heads warm up on the pretrained features unchanged. Call after ``model.train()``."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    for p in backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        set_bn_eval(backbone)


def set_bn_eval(module: nn.Module) -> None:
    """Every BatchNorm under ``module`` in eval mode (running statistics frozen)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
