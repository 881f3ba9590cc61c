"""PNG figures for the report, rendered in memory: confusion heatmap, t-SNE scatter, image grid.

Matplotlib is used through ``matplotlib.figure.Figure`` (Agg canvas) only, never pyplot, so nothing
touches global GUI state and it is safe in workers and threads.
"""
from __future__ import annotations

import io
import os
from typing import IO, Union

import numpy as np

from artextract.core import storage
from artextract.eval.grids import flat_grid_png

PathOrBuffer = Union[str, "os.PathLike[str]", IO[bytes], None]
UNKNOWN_GREY = "#9e9e9e"


def _emit(data: bytes, path_or_buffer: PathOrBuffer) -> bytes:
    """Also write ``data`` to a path/URI (atomically, via storage) or a binary buffer; return it."""
    if path_or_buffer is None:
        return data
    if isinstance(path_or_buffer, (str, os.PathLike)):
        storage.write_bytes(os.fspath(path_or_buffer), data)
    else:
        path_or_buffer.write(data)
    return data


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches an Agg canvas; no pyplot/backend switching
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _text(s: str, width: int = 28) -> str:
    # '$' would start matplotlib mathtext; long artist names would swallow the axes.
    s = str(s).replace("$", r"\$")
    # Cut the middle, not the end: long names often differ only at the end ("... artist 12").
    return s if len(s) <= width else s[: width // 2] + "…" + s[-(width - width // 2 - 1):]


def confusion_png(cm: np.ndarray, classes: list[str], path_or_buffer: PathOrBuffer = None,
                  title: str = "") -> bytes:
    """Row-normalised confusion heatmap of cm (C, C) counts (rows = true) as PNG bytes."""
    cm = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"cm must be ({n}, {n}), got {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    # Row-normalised so rare classes are as visible as frequent ones (each row = recall spread).
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = float(np.clip(3.0 + 0.4 * n, 5.0, 22.0))
    fontsize = float(np.clip(220.0 / max(n, 1), 5.0, 10.0))
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    labels = [_text(c) for c in classes]
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_text(title, 80))
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize * 0.9,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _emit(_png(fig), path_or_buffer)


def _placeholder(message: str, title: str) -> bytes:
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.set_title(_text(title, 80))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    return _png(fig)


def stratified_subsample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices (<= max_points) keeping each label's share, at least one per label."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray] = []
    for g in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == g))
        picked.append(rows[: max(1, int(max_points * len(rows) / n))])
    idx = np.concatenate(picked)
    if len(idx) > max_points:  # many tiny classes each claimed their one row
        idx = rng.choice(idx, max_points, replace=False)
    elif len(idx) < max_points:  # rounding down left room: fill uniformly from the rest
        rest = np.setdiff1d(np.arange(n), idx)
        idx = np.concatenate([idx, rng.choice(rest, max_points - len(idx), replace=False)])
    return np.sort(idx)


def _colours(k: int) -> list:
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [colormaps["tab20"](i) for i in range(k)]
    return [colormaps["turbo"](x) for x in np.linspace(0.02, 0.98, k)]


def tsne_png(embeddings: np.ndarray, labels: np.ndarray, classes: list[str],
             path_or_buffer: PathOrBuffer = None, title: str = "", max_points: int = 2000,
             seed: int = 0) -> bytes:
    """2-D t-SNE of embeddings (N, D) coloured by labels (N,) int (-1 = unknown, grey) as PNG bytes."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"embeddings must be (N, D) with N={len(labels)}, got {x.shape}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        x, labels = x[finite], labels[finite]
        title = f"{title} ({int((~finite).sum())} non-finite embeddings left out)".strip()
    idx = stratified_subsample(labels, max_points, seed)
    x, labels = x[idx], labels[idx]
    n = len(x)
    if n < 5:
        return _emit(_placeholder(f"too few points for t-SNE (n={n})", title), path_or_buffer)
    if np.ptp(x, axis=0).max() <= 1e-9 * max(1.0, float(np.abs(x).max())):
        # Identical points (a collapsed model): sklearn's PCA init divides by their zero spread and
        # Barnes-Hut then crashes the process on the NaNs (a segfault, not an exception).
        return _emit(_placeholder(f"all {n} embeddings are identical: nothing to map", title),
                     path_or_buffer)
    if x.shape[1] < 2:  # PCA init needs at least 2 input dimensions
        x = np.hstack([x, np.zeros((n, 2 - x.shape[1]), dtype=np.float32)])
    # sklearn requires perplexity < n; (n-1)/3 is the usual cap for small samples.
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    # For small samples OpenMP threads cost more than they save, and on shared/oversubscribed
    # machines their spin-waiting made Barnes-Hut ~30x slower (35 s for 40 points); run it serially.
    with threadpool_limits(limits=1 if n <= 1000 else None):
        xy = tsne.fit_transform(x)

    present = [int(c) for c in np.unique(labels) if c >= 0]
    colours = _colours(len(present))
    fig = _figure(9 if len(present) <= 20 else 11, 7)
    ax = fig.add_subplot(1, 1, 1)
    size = float(np.clip(3000.0 / n, 4.0, 40.0))
    unknown = labels < 0
    if unknown.any():
        ax.scatter(xy[unknown, 0], xy[unknown, 1], s=size, c=UNKNOWN_GREY, alpha=0.5,
                   linewidths=0, label=f"unknown ({int(unknown.sum())})")
    for colour, c in zip(colours, present):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=colour, alpha=0.8, linewidths=0,
                   label=f"{_text(classes[c])} ({int(m.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_text(f"{title} (n={n}, perplexity={perplexity:.1f})", 100))
    ncol = 1 if len(present) <= 25 else 2
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7 if len(present) > 15 else 9,
              ncol=ncol, markerscale=max(1.0, 20.0 / size), frameon=False)
    return _emit(_png(fig), path_or_buffer)


def image_grid_png(images: list[bytes | None], captions: list[str], path_or_buffer: PathOrBuffer = None,
                   cols: int = 6, thumb: int = 128) -> bytes:
    """Grid of thumbnails (thumb x thumb px cells) with a caption strip under each, as PNG bytes
    (eval/grids.py renders it)."""
    return _emit(flat_grid_png(images, captions, cols, thumb), path_or_buffer)
