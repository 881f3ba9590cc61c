"""The one image-grid renderer: rows of captioned thumbnails (search results, similarity query
grids, detection errors, classifier outliers), rendered in memory to PNG bytes.

Each cell is a ``thumb`` x ``thumb`` square (the image stretched to it, or contained in it), a
caption strip under it, ``margin`` pixels around both; an optional outline marks a cell (a query).
An image that is missing or does not decode becomes a grey "no image" square, never an error.
"""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont, ImageOps

# (JPEG bytes or None, caption (may hold newlines), outline colour or None)
Cell = tuple[bytes | None, str, str | None]
LINE_PX = 12
FITS = ("stretch", "contain")


def _font():
    try:  # the bundled FreeType font covers accents (Naïve); the bitmap fallback is latin-1 only
        return ImageFont.load_default(size=11)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _thumb(data: bytes | None, thumb: int, fit: str) -> Image.Image | None:
    if not data:
        return None
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (thumb, thumb))  # JPEG: decode at reduced scale, much faster
        rgb = img.convert("RGB")
        if fit == "stretch":
            return rgb.resize((thumb, thumb), Image.BILINEAR)
        return ImageOps.contain(rgb, (thumb, thumb))  # also enlarges small images: cells fill alike
    except Exception:  # any undecodable/truncated payload becomes a placeholder, not a crash
        return None


def _text(draw: ImageDraw.ImageDraw, pos: tuple[int, int], line: str, font) -> None:
    try:
        draw.text(pos, line, fill="black", font=font)
    except UnicodeEncodeError:  # the bitmap fallback font is latin-1 only
        draw.text(pos, line.encode("ascii", "replace").decode(), fill="black", font=font)


def grid_png(rows: list[list[Cell]], thumb: int = 96, margin: int = 0, caption_px: int | None = None,
             fit: str = "stretch", empty: str = "nothing to show") -> bytes:
    """PNG bytes of ``rows`` of cells. ``caption_px``: the caption strip's height (None: enough for
    the longest caption's lines); captions longer than the cell are cut with an ellipsis."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    font = _font()
    captions = [str(c[1]) for row in rows for c in row]
    n_lines = max([len(c.split("\n")) for c in captions] + [1])
    strip = caption_px if caption_px is not None else n_lines * LINE_PX + 6
    n_lines = max(1, min(n_lines, (strip - 2) // LINE_PX or 1))
    cols = max([len(r) for r in rows] + [1])
    cell_w, cell_h = thumb + 2 * margin, thumb + strip + 2 * margin
    sheet = Image.new("RGB", (cols * cell_w, max(len(rows), 1) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if not any(rows):
        draw.text((margin, margin), empty, fill="black", font=font)
    max_chars = max(4, thumb // 6)
    for r, row in enumerate(rows):
        for c, (data, caption, outline) in enumerate(row):
            x0, y0 = c * cell_w + margin, r * cell_h + margin
            img = _thumb(data, thumb, fit)
            if img is None:
                draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], fill="#bdbdbd")
                draw.text((x0 + 4, y0 + thumb // 2 - 6), "no image", fill="#424242", font=font)
            else:
                sheet.paste(img, (x0 + (thumb - img.width) // 2, y0 + (thumb - img.height) // 2))
            if outline:
                draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], outline=outline, width=2)
            for k, line in enumerate(str(caption).split("\n")[:n_lines]):
                line = line if len(line) <= max_chars else line[: max_chars - 1] + "…"
                _text(draw, (x0 + (3 if margin == 0 else 0), y0 + thumb + 1 + k * LINE_PX), line, font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def flat_grid_png(images: list[bytes | None], captions: list[str], cols: int = 6, thumb: int = 128,
                  margin: int = 4) -> bytes:
    """A flat list of images as rows of ``cols`` contained thumbnails (reports)."""
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    cols = max(1, min(cols, len(images) or 1))
    cells = [(d, c, None) for d, c in zip(images, captions)]
    return grid_png([cells[i:i + cols] for i in range(0, len(cells), cols)], thumb, margin, fit="contain")
