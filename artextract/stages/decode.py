"""Decode and validate image bytes: never fatal. Every failure becomes a ``Quarantine`` with a
reason code; odd but valid images (CMYK, 16-bit, alpha, palette, grayscale, EXIF-rotated,
animated) are normalised to 8-bit RGB instead of being rejected."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from artextract.config import DecodeConfig

# Reason codes written to the quarantine table. Keep them stable: reports group by them.
REASONS = {
    "empty": "the file has zero bytes",
    "too_large_file": "the file is larger than decode.max_bytes",
    "not_an_image": "the bytes are not an image format PIL recognises",
    "decompression_bomb": "declared width*height exceeds decode.max_pixels",
    "truncated": "the image data ends early",
    "decode_error": "the image header or data is corrupt",
    "too_small": "the shorter side is below decode.min_side",
    "extreme_aspect": "long/short side ratio exceeds decode.max_aspect",
    "read_error": "the bytes could not be read from storage",
    "missing": "no object at the manifest's uri",
    "outside_root": "the uri resolves outside storage.local_root (e.g. '..' or a symlink out)",
}

# Orientations 5-8 swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


class Quarantine(Exception):
    """An input that cannot be processed; ``reason`` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Decoded:
    """A validated image: 8-bit RGB pixels at detection size plus facts about the original."""

    det_image: np.ndarray  # HxWx3 uint8, long side <= detect_max_side
    orig_width: int  # upright (after EXIF orientation), full resolution
    orig_height: int
    orig_mode: str
    orig_format: str
    n_frames: int

    @property
    def scale(self) -> float:
        """det pixels per original pixel."""
        return self.det_image.shape[1] / self.orig_width


# 16-bit and 32-bit modes: reduced to detection size *before* conversion to 8 bits, which would
# otherwise hold the full-resolution image in a wide dtype (7000x7000 16-bit: ~1 GiB as float64).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _reduce_wide(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    try:
        return img.resize(size, Image.Resampling.BILINEAR)
    except ValueError:  # a 16-bit layout PIL cannot resample directly (e.g. big-endian I;16B)
        return img.convert("I").resize(size, Image.Resampling.BILINEAR)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to 8-bit RGB; alpha is composited over white (paper/canvas)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        # 16 -> 8 bits by an integer shift: no float copy of the image.
        return Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi, lo = max(float(arr.max()), 1.0), min(float(arr.min()), 0.0)
        arr8 = np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _declared_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a readable image
        orientation = None
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)


def decode(data: bytes, cfg: DecodeConfig) -> Decoded:
    """Validate and decode ``data`` to RGB at detection size; raises Quarantine on bad input."""
    if not data:
        raise Quarantine("empty")
    if len(data) > cfg.max_bytes:
        raise Quarantine("too_large_file", f"more than {cfg.max_bytes} bytes")
    with warnings.catch_warnings():
        # PIL warns (rather than raises) between 1x and 2x its pixel limit; treat both as bombs.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise Quarantine("not_an_image", f"leading bytes {data[:12]!r}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Quarantine("decompression_bomb", str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - plugins raise OSError, SyntaxError, TypeError,
            # struct.error, ... on hostile headers; any of them means "corrupt", never a crash.
            raise Quarantine("decode_error", f"{type(exc).__name__}: {exc}") from None
        width, height = _declared_size(img)
        if width * height > cfg.max_pixels:
            raise Quarantine("decompression_bomb", f"declared {width}x{height} > {cfg.max_pixels} px")
        if min(width, height) < cfg.min_side:
            raise Quarantine("too_small", f"{width}x{height}")
        if max(width, height) / min(width, height) > cfg.max_aspect:
            raise Quarantine("extreme_aspect", f"{width}x{height}")
        fmt, mode = img.format or "?", img.mode
        try:
            # Counting frames parses every frame header (each TIFF IFD, each GIF block), past the
            # part Image.open validated; a corrupt later frame raises e.g. TypeError in PIL.
            n_frames = int(getattr(img, "n_frames", 1))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Quarantine("decompression_bomb", str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise Quarantine("decode_error", f"frame count: {type(exc).__name__}: {exc}") from None
        scale = min(1.0, cfg.detect_max_side / max(width, height))
        if fmt == "JPEG" and scale < 0.5:
            # DCT-domain downscaling: decoding a 4000 px JPEG at 1/4 scale is ~10x cheaper.
            img.draft(img.mode, (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
        det_w, det_h = max(1, round(width * scale)), max(1, round(height * scale))
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in _WIDE_MODES and img.size != (det_w, det_h):
                img = _reduce_wide(img, (det_w, det_h))
            rgb = _to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Quarantine("decompression_bomb", str(exc)) from None
        except OSError as exc:
            reason = "truncated" if "truncated" in str(exc).lower() else "decode_error"
            raise Quarantine(reason, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - e.g. TypeError from a TIFF strip offset of the
            # wrong type; SyntaxError/ValueError/EOFError/MemoryError from other plugins.
            raise Quarantine("decode_error", f"{type(exc).__name__}: {exc}") from None
    if rgb.size != (det_w, det_h):
        rgb = rgb.resize((det_w, det_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return Decoded(np.asarray(rgb, dtype=np.uint8), width, height, mode, fmt, n_frames)


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    """Encode an HxWx3 uint8 array as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def resize_long_side(arr: np.ndarray, long_side: int) -> np.ndarray:
    """Downscale an HxWx3 array so its long side is at most ``long_side`` (never upscales)."""
    h, w = arr.shape[:2]
    s = long_side / max(h, w)
    if s >= 1:
        return arr
    img = Image.fromarray(arr).resize((max(1, round(w * s)), max(1, round(h * s))),
                                      Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img)


def configure_pil(cfg: DecodeConfig) -> None:
    """Set PIL's process-wide safety limits deliberately (called once per worker process)."""
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are quarantined, not padded grey
