"""A generated, labelled "painting" collection for the offline demo and tests of the classifier.

Four synthetic styles with visual signatures a CNN-RNN can learn (dots, shards, colour bands,
outlined waves), two genres (portrait: a head-and-shoulders silhouette; landscape: a horizon) and
two artists per style (each with its own palette shift). Like WikiArt, labels are partial: some
rows have no genre or no artist. Deterministic for a given seed.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from artextract import manifest

from artextract.core import storage
from artextract.config import StorageConfig
from artextract.core.registry import Registry

Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator, int, tuple[int, int, int]], None]
STYLES: Registry[Painter] = Registry("synthetic style")


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 40) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


@STYLES.register("Pointillism")
def _dots(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, base: tuple[int, int, int]) -> None:
    for _ in range(size * 3):
        x, y, r = rng.integers(0, size), rng.integers(0, size), rng.integers(1, 3)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, base, 90))


@STYLES.register("Cubism")
def _shards(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, base: tuple[int, int, int]) -> None:
    for _ in range(14):
        pts = [tuple(rng.integers(0, size, 2).tolist()) for _ in range(3)]
        d.polygon(pts, fill=_jitter(rng, base, 50), outline=(40, 30, 20))


@STYLES.register("Color_Field")
def _bands(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, base: tuple[int, int, int]) -> None:
    cuts = sorted(rng.integers(size // 5, size - size // 5, 2).tolist())
    for lo, hi in zip([0, *cuts], [*cuts, size]):
        d.rectangle([0, lo, size, hi], fill=_jitter(rng, base, 70))


@STYLES.register("Ukiyo_e")
def _waves(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, base: tuple[int, int, int]) -> None:
    for k in range(6):
        y0 = int(size * (0.2 + 0.12 * k)) + int(rng.integers(-4, 5))
        d.arc([-size // 4, y0 - size // 6, size + size // 4, y0 + size // 6], 180, 360,
              fill=(20, 30, 60), width=2)


GENRES = {
    "portrait": lambda d, s, c: (d.ellipse([s * .35, s * .18, s * .65, s * .52], fill=c, outline=(30, 20, 10)),
                                 d.rectangle([s * .25, s * .55, s * .75, s], fill=c)),
    "landscape": lambda d, s, c: d.rectangle([0, s * .62, s, s], fill=c),
}
BASES = {"Pointillism": (120, 170, 220), "Cubism": (150, 120, 80), "Color_Field": (200, 60, 60),
         "Ukiyo_e": (235, 220, 190)}
ARTIST_SHIFT = (0, 45)  # two artists per style: the second paints warmer


def render(style: str, genre: str, artist_idx: int, seed: int, size: int = 96) -> bytes:
    """One JPEG painting of ``style``/``genre`` by artist ``artist_idx`` (0/1)."""
    rng = np.random.default_rng(seed)
    base = tuple(min(255, c + (ARTIST_SHIFT[artist_idx] if i == 0 else 0)) for i, c in enumerate(BASES[style]))
    img = Image.new("RGB", (size, size), _jitter(rng, base, 25))  # type: ignore[arg-type]
    d = ImageDraw.Draw(img)
    GENRES[genre](d, size, _jitter(rng, (90, 70, 60), 30))
    STYLES[style](d, rng, size, base)  # type: ignore[arg-type]
    if style == "Color_Field":
        img = img.filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def write_labelled_collection(out: str, per_style: int = 24, size: int = 96, seed: int = 0,
                              cfg: StorageConfig | None = None) -> str:
    """Write images under ``out/images/`` and a labelled manifest under ``out/manifest/``; returns the
    manifest URI. Every 5th row has no genre and every 3rd no artist (unknown, as in WikiArt)."""
    rows = []
    for s_idx, style in enumerate(STYLES.names()):
        for i in range(per_style):
            genre, artist_idx = ("portrait", "landscape")[i % 2], (i // 2) % 2
            data = render(style, genre, artist_idx, seed * 100_003 + s_idx * 1_000 + i, size)
            image_id = f"{style}/{style.lower()}_{i:03d}"
            uri = storage.join(out, "images", f"{image_id}.jpg")
            storage.write_bytes(uri, data, cfg)
            rows.append({"image_id": image_id, "uri": uri, "size": len(data), "width": size, "height": size,
                         "source": "synthetic", "style": style,
                         "genre": None if i % 5 == 4 else genre,
                         "artist": None if i % 3 == 2 else f"{style.lower()}_artist_{artist_idx}"})
    man = storage.join(out, "manifest")
    manifest.write(pa.Table.from_pylist(rows), man, shard_rows=10_000, cfg=cfg)
    return man
