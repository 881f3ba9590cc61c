"""The embedded demo collection, built offline from images that scikit-image ships (the
astronaut photograph is a real face), plus a registry of deliberately odd and broken inputs
whose expected outcome ("ok" or a quarantine reason) tests and the demo check."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

Maker = Callable[[], bytes]


def _data(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` encoded as ``fmt`` (PIL format name) in memory."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


_save = save


def _painterly(arr: np.ndarray, seed: int = 0) -> Image.Image:
    """A crude 'painting' of a photo: smoothed strokes, fewer colours, canvas grain."""
    img = Image.fromarray(arr).filter(ImageFilter.ModeFilter(5)).filter(ImageFilter.SMOOTH_MORE)
    img = ImageOps.posterize(img, 5)
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 6, (img.size[1], img.size[0], 1))
    warm = np.array([1.04, 1.0, 0.9])  # varnish-yellowed palette
    out = np.clip(np.asarray(img, np.float64) * warm + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _landscape(seed: int, size=(640, 420)) -> Image.Image:
    """A synthetic landscape painting: sky gradient, layered hills, no faces."""
    rng = np.random.default_rng(seed)
    w, h = size
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (1 - y) * np.array([110, 150, 210]) + y * np.array([235, 215, 180])
    img = np.broadcast_to(sky, (h, w, 3)).copy()
    x = np.arange(w)
    for layer in range(3):
        ridge = h * (0.45 + 0.15 * layer) + 25 * np.sin(x / (60 + 30 * layer) + rng.uniform(0, 6))
        colour = np.array([60 + 30 * layer, 110 - 20 * layer, 50]) + rng.integers(-15, 15, 3)
        mask = np.arange(h)[:, None] > ridge[None, :]
        img[mask] = colour
    img += rng.normal(0, 5, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


def _group() -> Image.Image:
    """A 'double portrait': the astronaut's head twice, one mirrored, on a dark ground."""
    head = Image.fromarray(_data("astronaut")).crop((120, 10, 330, 260))
    canvas = Image.new("RGB", (560, 330), (40, 32, 28))
    canvas.paste(head, (40, 40))
    canvas.paste(ImageOps.mirror(head), (310, 40))
    return canvas


def _lfw_sheet() -> Image.Image:
    """A contact sheet of 6 real faces from the LFW subset scikit-image ships (upscaled)."""
    from skimage import data

    faces = data.lfw_subset()[:6]
    tiles = [Image.fromarray((f * 255).astype(np.uint8)).resize((120, 120), Image.Resampling.BICUBIC)
             for f in faces]
    sheet = Image.new("L", (3 * 140, 2 * 140), 200)
    for i, t in enumerate(tiles):
        sheet.paste(t, (10 + 140 * (i % 3), 10 + 140 * (i // 3)))
    return sheet.convert("RGB")


# Public makers of odd-but-valid and broken encodings, shared with tests/fixtures/fuzz.py so the
# demo collection and the fuzz corpus exercise the same byte layouts.

# The stored -> upright transform PIL applies for each EXIF orientation (ImageOps.exif_transpose).
_ORIENT_TO_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                      4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                      6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                      8: Image.Transpose.ROTATE_90}
# Its inverse: how to store an upright image so that a viewer honouring ``orientation`` shows it upright.
_UPRIGHT_TO_STORED = {**_ORIENT_TO_UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def exif_oriented_jpeg(upright: Image.Image, orientation: int, quality: int = 90) -> bytes:
    """A JPEG whose pixels are stored transformed, with EXIF Orientation=``orientation`` (2..8)
    telling viewers how to display ``upright`` again."""
    stored = upright.transpose(_UPRIGHT_TO_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=quality, exif=exif.tobytes())


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb when large)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def cmyk_jpeg(img: Image.Image, quality: int = 85) -> bytes:
    """``img`` converted to CMYK and saved as a (4-channel) JPEG, as print workflows do."""
    return _save(img.convert("CMYK"), "JPEG", quality=quality)


def gray16_png(arr8: np.ndarray) -> bytes:
    """An 8-bit grayscale array stretched to the full 16-bit range and saved as a 16-bit PNG."""
    return _save(Image.fromarray(arr8.astype(np.uint16) * 257), "PNG")


def oval_rgba_png(img: Image.Image, box: tuple[int, int, int, int]) -> bytes:
    """``img`` with an alpha channel that is opaque only inside the ellipse ``box`` (a portrait mount)."""
    img = img.convert("RGBA")
    alpha = Image.new("L", img.size, 0)
    ImageDraw.Draw(alpha).ellipse(box, fill=255)
    img.putalpha(alpha)
    return _save(img, "PNG")


def animated_gif(frames: list[Image.Image], duration: int = 100) -> bytes:
    """A looping animated GIF of ``frames`` (converted to palette mode)."""
    frames = [f.convert("P") for f in frames]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)


def _exif_rotated() -> bytes:
    """The astronaut stored sideways with EXIF Orientation=6 (display rotates it upright)."""
    return exif_oriented_jpeg(Image.fromarray(_data("astronaut")), 6)


def _png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""
    return png_header_only(width, height)


def _cmyk() -> bytes:
    return cmyk_jpeg(Image.fromarray(_data("coffee")))


def _gray16() -> bytes:
    return gray16_png(_data("camera"))


def _rgba() -> bytes:
    return oval_rgba_png(Image.fromarray(_data("astronaut")), (20, 0, 492, 512))  # an oval portrait mount


def _animated() -> bytes:
    return animated_gif([_landscape(s, (200, 150)) for s in range(3)])


def _truncated() -> bytes:
    full = _save(_painterly(_data("astronaut"), 3), "JPEG", quality=90)
    return full[: len(full) // 3]


# name -> (file name, maker, expected outcome). Names are stable: tests and reports use them.
CASES: dict[str, tuple[str, Maker, str]] = {
    "astronaut": ("astronaut.jpg", lambda: _save(Image.fromarray(_data("astronaut")), "JPEG", quality=92), "ok"),
    "astronaut_painted": ("astronaut_painted.jpg", lambda: _save(_painterly(_data("astronaut")), "JPEG", quality=90), "ok"),
    "double_portrait": ("double_portrait.jpg", lambda: _save(_group(), "JPEG", quality=90), "ok"),
    "lfw_contact_sheet": ("lfw_contact_sheet.png", lambda: _save(_lfw_sheet(), "PNG"), "ok"),
    "cameraman_gray": ("cameraman.png", lambda: _save(Image.fromarray(_data("camera")), "PNG"), "ok"),
    "exif_rotated": ("astronaut_exif_rotated.jpg", _exif_rotated, "ok"),
    "rgba_oval": ("astronaut_oval.png", _rgba, "ok"),
    "coffee_cmyk": ("coffee_cmyk.jpg", _cmyk, "ok"),
    "camera_16bit": ("camera_16bit.png", _gray16, "ok"),
    "landscape_1": ("landscape_1.jpg", lambda: _save(_landscape(1), "JPEG", quality=90), "ok"),
    "landscape_2": ("landscape_2.jpg", lambda: _save(_landscape(2), "JPEG", quality=90), "ok"),
    "rocket": ("rocket.jpg", lambda: _save(Image.fromarray(_data("rocket")), "JPEG", quality=90), "ok"),
    "chelsea_painted": ("chelsea_painted.jpg", lambda: _save(_painterly(_data("chelsea"), 1), "JPEG"), "ok"),
    "animated_gif": ("animated.gif", _animated, "ok"),
    "png_named_jpg": ("really_a_png.jpg", lambda: _save(_landscape(5, (300, 200)), "PNG"), "ok"),
    "truncated_jpeg": ("truncated.jpg", _truncated, "truncated"),
    "zero_bytes": ("empty.jpg", lambda: b"", "empty"),
    "text_as_jpg": ("notes.jpg", lambda: b"These are curator's notes, not an image.\n" * 20, "not_an_image"),
    "random_bytes": ("noise.png", lambda: np.random.default_rng(7).bytes(4096), "not_an_image"),
    "decompression_bomb": ("bomb.png", _png_bomb, "decompression_bomb"),
    "extreme_aspect": ("strip.png", lambda: _save(Image.new("RGB", (3000, 60), (200, 180, 150)), "PNG"), "extreme_aspect"),
    "too_small": ("tiny.png", lambda: _save(Image.new("RGB", (16, 16), (90, 90, 90)), "PNG"), "too_small"),
}

# Cases whose image shows at least one clear face (detection must find one).
FACE_CASES = ("astronaut", "astronaut_painted", "double_portrait", "exif_rotated", "rgba_oval")
# Cases with no face at all (detection must find none).
NO_FACE_CASES = ("landscape_1", "landscape_2", "coffee_cmyk", "animated_gif", "png_named_jpg")


def write_collection(dest: str | Path, cases: dict[str, tuple[str, Maker, str]] | None = None) -> dict[str, str]:
    """Write the sample collection into ``dest``; returns {file name: expected outcome}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    expected = {}
    for fname, make, outcome in (cases or CASES).values():
        (dest / fname).write_bytes(make())
        expected[fname] = outcome
    return expected
