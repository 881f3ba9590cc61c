"""A deterministic corpus of broken and odd image files for fuzzing the decode/preprocess path.

``generate(n, seed)`` returns ``(filename, bytes, kind)`` triples cycling through ``KINDS``: broken
inputs (truncated at random cut points, random bytes, bit flips, lying headers, zero bytes) and odd
but valid ones (CMYK, 16-bit, alpha, palette transparency, EXIF orientations 2..8, animations, TIFF,
BMP). ``EXPECTED`` says which outcomes each kind may have, so a test can check not only that
nothing crashes but that every input lands in the right class. Images are small (48..128 px) so
200 of them run through face detection in seconds. PIL and numpy only; no Ray.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from artextract.samples import (animated_gif, cmyk_jpeg, exif_oriented_jpeg, gray16_png, oval_rgba_png,
                                png_header_only, save)

Item = tuple[str, bytes, str]  # (file name, file bytes, kind)
Rng = np.random.Generator

OK = "ok"
# Quarantine reasons a file that is not (or no longer) a well-formed image may legitimately get:
# which one depends on where the damage is, not on a bug.
_BROKEN = frozenset({"truncated", "decode_error", "not_an_image"})

# kind -> the outcomes allowed for it ("ok" or a quarantine reason); None = any outcome is fine, as
# long as it is one (a bit flip can hit pixel data harmlessly or break a header).
EXPECTED: dict[str, frozenset[str] | None] = {
    "truncated_jpeg": _BROKEN,
    "truncated_png": _BROKEN,
    "truncated_webp": _BROKEN,
    "random_bytes": _BROKEN,
    "png_named_jpg": frozenset({OK}),
    "jpeg_named_png": frozenset({OK}),
    "text_named_jpg": frozenset({"not_an_image"}),
    "huge_dimensions": frozenset({"decompression_bomb"}),
    "zero_size": frozenset({"empty"}),
    "cmyk_jpeg": frozenset({OK}),
    "gray16_png": frozenset({OK}),
    "rgba_png": frozenset({OK}),
    "la_png": frozenset({OK}),
    "p_transparency_png": frozenset({OK}),
    "exif_rotated": frozenset({OK}),
    "animated_gif": frozenset({OK}),
    "animated_png": frozenset({OK}),
    "one_pixel": frozenset({"too_small"}),
    "sliver": frozenset({"too_small"}),  # 1 x 5000: the short side fails before the aspect does
    "extreme_aspect": frozenset({"extreme_aspect"}),
    "bit_flipped": None,
    "trailing_garbage": frozenset({OK}),
    "tiff": frozenset({OK}),
    "bmp": frozenset({OK}),
    "gif_zero_frames": frozenset({"not_an_image", "decode_error"}),
    # Page 1 is fine, page 2's IFD lost its ImageWidth: PIL raised TypeError counting the pages.
    "tiff_broken_second_page": _BROKEN,
}
KINDS: tuple[str, ...] = tuple(EXPECTED)

# Colour of the upright image's top-left quadrant: EXIF-rotated inputs must decode with it there.
MARKER_RGB = (230, 20, 20)


def base_image(rng: Rng, width: int | None = None, height: int | None = None) -> Image.Image:
    """A small RGB picture (gradient + noise) whose top-left quadrant is solid ``MARKER_RGB``, so
    orientation mistakes are visible in the decoded pixels."""
    w = width or int(rng.integers(48, 129))
    h = height or int(rng.integers(48, 129))
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 200 // max(w, 1), y * 200 // max(h, 1), np.full_like(x, 180)], -1).astype(np.float64)
    arr += rng.normal(0, 8, arr.shape)
    arr[: h // 2, : w // 2] = MARKER_RGB
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(rng: Rng) -> bytes:
    return save(base_image(rng), "JPEG", quality=int(rng.integers(60, 96)))


def _png(rng: Rng) -> bytes:
    return save(base_image(rng), "PNG")


def _webp(rng: Rng) -> bytes:
    return save(base_image(rng), "WEBP", quality=80)


def _cut(data: bytes, rng: Rng) -> bytes:
    """``data`` cut at a random point between 5% and 90% of its length (never whole, never empty)."""
    return data[: max(1, int(len(data) * rng.uniform(0.05, 0.9)))]


def _huge_dimensions(rng: Rng, i: int) -> bytes:
    """A small file whose header claims an enormous canvas: PNG 100k x 100k, a JPEG whose SOF says
    65000 x 65000, or a GIF whose logical screen is 65535 x 65535."""
    which = i % 3
    if which == 0:
        return png_header_only(100_000, 100_000)
    if which == 1:
        data = bytearray(_jpeg(rng))
        sof = data.find(b"\xff\xc0")  # baseline SOF0: marker, length(2), precision(1), height(2), width(2)
        data[sof + 5: sof + 9] = struct.pack(">HH", 65000, 65000)
        return bytes(data)
    data = bytearray(save(base_image(rng).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def _exif_rotated(rng: Rng, i: int) -> bytes:
    return exif_oriented_jpeg(base_image(rng), 2 + i % 7)


def _alpha_png(rng: Rng, mode: str) -> bytes:
    img = base_image(rng)
    if mode == "RGBA":
        w, h = img.size
        return oval_rgba_png(img, (w // 8, 0, w - w // 8, h))
    if mode == "LA":
        la = img.convert("LA")
        alpha = Image.fromarray((rng.random((img.size[1], img.size[0])) * 255).astype(np.uint8))
        la.putalpha(alpha)
        return save(la, "PNG")
    p = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return save(p, "PNG", transparency=int(np.asarray(p)[-1, -1]))


def _frames(rng: Rng) -> list[Image.Image]:
    size = (int(rng.integers(48, 129)), int(rng.integers(48, 129)))
    return [base_image(rng, *size) for _ in range(int(rng.integers(2, 5)))]


def _bit_flipped(rng: Rng, i: int) -> bytes:
    """A valid JPEG/PNG/WebP/TIFF with 1-8 flipped bits; every other one only in its first 64 bytes,
    where the header parsers branch (flips in entropy-coded data mostly just change pixels)."""
    makers = (_jpeg, _png, _webp, lambda r: save(base_image(r), "TIFF"))
    data = bytearray(makers[i % 4](rng))
    span = 64 if i % 2 else len(data)
    for _ in range(int(rng.integers(1, 9))):
        pos = int(rng.integers(0, span))
        data[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


def _gif_zero_frames(rng: Rng) -> bytes:
    """A GIF header and logical screen descriptor followed directly by the trailer: no image."""
    return b"GIF89a" + struct.pack("<HHBBB", 64, 64, 0, 0, 0) + b";"


def _tiff_broken_second_page(rng: Rng) -> bytes:
    """A two-page little-endian TIFF whose second IFD's ImageWidth tag (256) is renamed to an unknown
    tag: opening works, counting the frames (``n_frames``) fails inside PIL with a TypeError."""
    size = (int(rng.integers(48, 129)), int(rng.integers(48, 129)))
    data = bytearray(save(base_image(rng, *size), "TIFF", save_all=True, append_images=[base_image(rng, *size)]))
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for j in range(struct.unpack_from("<H", data, second)[0]):
        entry = second + 2 + 12 * j
        if struct.unpack_from("<H", data, entry)[0] == 256:
            struct.pack_into("<H", data, entry, 65000)
    return bytes(data)


# kind -> (file extension, maker(rng, index of this kind's occurrence)).
_MAKERS: dict[str, tuple[str, Callable[[Rng, int], bytes]]] = {
    "truncated_jpeg": (".jpg", lambda r, i: _cut(_jpeg(r), r)),
    "truncated_png": (".png", lambda r, i: _cut(_png(r), r)),
    "truncated_webp": (".webp", lambda r, i: _cut(_webp(r), r)),
    "random_bytes": (".jpg", lambda r, i: r.bytes(int(r.integers(1, 8192)))),
    "png_named_jpg": (".jpg", lambda r, i: _png(r)),
    "jpeg_named_png": (".png", lambda r, i: _jpeg(r)),
    "text_named_jpg": (".jpg", lambda r, i: b"Provenance notes: acquired 1921, relined 1954.\n" * (1 + i)),
    "huge_dimensions": (".png", _huge_dimensions),
    "zero_size": (".jpg", lambda r, i: b""),
    "cmyk_jpeg": (".jpg", lambda r, i: cmyk_jpeg(base_image(r))),
    "gray16_png": (".png", lambda r, i: gray16_png(np.asarray(base_image(r).convert("L")))),
    "rgba_png": (".png", lambda r, i: _alpha_png(r, "RGBA")),
    "la_png": (".png", lambda r, i: _alpha_png(r, "LA")),
    "p_transparency_png": (".png", lambda r, i: _alpha_png(r, "P")),
    "exif_rotated": (".jpg", _exif_rotated),
    "animated_gif": (".gif", lambda r, i: animated_gif(_frames(r))),
    "animated_png": (".png", lambda r, i: (lambda f: save(f[0], "PNG", save_all=True, append_images=f[1:],
                                                           duration=80, loop=0))(_frames(r))),
    "one_pixel": (".png", lambda r, i: save(Image.new("RGB", (1, 1), (9, 9, 9)), ("PNG", "JPEG")[i % 2])),
    "sliver": (".png", lambda r, i: save(base_image(r, *((1, 5000) if i % 2 else (5000, 1))), "PNG")),
    "extreme_aspect": (".png", lambda r, i: save(base_image(r, *((40, 600) if i % 2 else (600, 40))), "PNG")),
    "bit_flipped": (".img", _bit_flipped),
    "trailing_garbage": (".jpg", lambda r, i: (_jpeg, _png)[i % 2](r) + r.bytes(int(r.integers(16, 2048)))),
    "tiff": (".tif", lambda r, i: save(base_image(r), "TIFF",
                                       compression=(None, "tiff_lzw", "tiff_deflate")[i % 3])),
    "bmp": (".bmp", lambda r, i: save(base_image(r), "BMP")),
    "gif_zero_frames": (".gif", lambda r, i: _gif_zero_frames(r)),
    "tiff_broken_second_page": (".tif", lambda r, i: _tiff_broken_second_page(r)),
}
assert set(_MAKERS) == set(EXPECTED)


def generate(n: int = 200, seed: int = 0) -> list[Item]:
    """``n`` fuzz inputs cycling through ``KINDS`` (every kind appears once n >= len(KINDS)).

    Item ``i`` is made from its own generator seeded by (seed, i), so the corpus is identical run to
    run and item ``i`` does not change when ``n`` does. File names are ``NNN_kind.ext``: unique, and
    the kind can be read back from the name after a round trip through a folder and a manifest.
    """
    items: list[Item] = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        ext, make = _MAKERS[kind]
        data = make(np.random.default_rng([seed, i]), i // len(KINDS))
        items.append((f"{i:03d}_{kind}{ext}", data, kind))
    return items


def kind_of(filename: str) -> str:
    """The kind encoded in a file name written by ``generate`` ('017_cmyk_jpeg.jpg' -> 'cmyk_jpeg')."""
    stem = Path(filename).name.split(".", 1)[0]
    return stem.split("_", 1)[1]


def write_tree(dest: str | Path, items: list[Item]) -> dict[str, str]:
    """Write ``items`` as files directly under ``dest``; returns {file name: kind}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname, data, kind in items:
        (dest / fname).write_bytes(data)
        out[fname] = kind
    return out
