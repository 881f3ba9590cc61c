"""A torchvision VisionTransformer read as a feature map: its patch tokens laid out on their grid.

The CNN-RNN reads the (B, C, h, w) map as row/column sequences, so ViT's patch tokens become the
sequence the RNN reads; the similarity model pools a (B, C, 1, 1) map, so there it gets the CLS token.
Position embeddings are interpolated (bicubic) to the input's grid, so any multiple of the patch size
works, not only the 224 px the weights were trained at.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class ViTFeatures(nn.Module):
    """(B, 3, H, W) -> patch-token grid (B, C, H/p, W/p) (``output="grid"``) or CLS (B, C, 1, 1)."""

    def __init__(self, vit: nn.Module, output: Literal["grid", "cls"] = "grid") -> None:
        super().__init__()
        # The same Parameter objects as the full model: its state dict loads straight into these.
        self.patch_size = vit.patch_size
        self.conv_proj, self.class_token, self.encoder = vit.conv_proj, vit.class_token, vit.encoder
        self.output = output
        self.channels = vit.hidden_dim

    def stages(self) -> list[list[nn.Parameter]]:
        """Parameters from input to output (layer-wise LR decay): embedding, each block, final norm."""
        embed = [*self.conv_proj.parameters(), self.class_token, self.encoder.pos_embedding]
        return [embed, *(list(b.parameters()) for b in self.encoder.layers), list(self.encoder.ln.parameters())]

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.encoder.pos_embedding
        cls, grid = pos[:, :1], pos[:, 1:]
        side = int(round(grid.shape[1] ** 0.5))
        if (gh, gw) == (side, side):
            return pos
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"vit input {h}x{w} is not a multiple of its patch size {self.patch_size}")
        tokens = self.conv_proj(x)
        gh, gw = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1) + self._positions(gh, gw)
        tokens = self.encoder.ln(self.encoder.layers(self.encoder.dropout(tokens)))
        if self.output == "cls":
            return tokens[:, 0, :, None, None]
        return tokens[:, 1:].transpose(1, 2).reshape(n, -1, gh, gw)
