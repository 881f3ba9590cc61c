""""Reproduction" augmentations: what a photo/print/scan of the same painting does to an image.

Two views of one image under these transforms form a positive pair for similarity training.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _PILJPEG(torch.nn.Module):
    """JPEG re-encoding through PIL, for torchvision builds without ``v2.JPEG``."""

    def __init__(self, quality: tuple[int, int]) -> None:
        super().__init__()
        self.quality = quality

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        import io

        from PIL import Image

        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())
        buf = io.BytesIO()
        v2.functional.to_pil_image(img).save(buf, format="JPEG", quality=q)
        return v2.functional.pil_to_tensor(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _jpeg(quality: tuple[int, int]) -> torch.nn.Module:
    return v2.JPEG(quality) if hasattr(v2, "JPEG") else _PILJPEG(quality)


def reproduction_transform(size: int = 224, scale: tuple[float, float] = (0.5, 1.0),
                           rotation_deg: float = 10.0, jpeg_quality: tuple[int, int] = (30, 95),
                           normalize: bool = True) -> v2.Compose:
    """Random reproduction pipeline: PIL or uint8 (C,H,W) image -> float32 (3, size, size) tensor."""
    steps: list[Any] = [
        v2.ToImage(),
        v2.RGB(),
        v2.RandomResizedCrop(size, scale=scale, ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomRotation(rotation_deg)], p=0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.3, 0.05)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=0.3),
        # JPEG works on uint8, so it runs before the float conversion.
        v2.RandomApply([_jpeg(jpeg_quality)], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


def two_views(image: Any, transform: v2.Compose | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of one image (a positive pair), each (3, size, size)."""
    transform = transform or reproduction_transform()
    return transform(image), transform(image)
