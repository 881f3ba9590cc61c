"""Training checkpoints on any storage URI, loadable with ``torch.load(weights_only=True)``.

Format ``artextract.train/1``: ``{"format", "task", "meta", "state_dict", "optimizer", "scheduler",
"scaler", "progress", "history"}``; ``meta`` holds what is needed to rebuild the model (model config,
class vocabularies) as plain dicts/lists/strings, so evaluation and embedding need only this file.
"""
from __future__ import annotations

import io
from typing import Any

import torch

from artextract.core import storage
from artextract.config import StorageConfig

FORMAT = "artextract.train/1"


def checkpoint_uri(out: str, which: str) -> str:
    """URI of the ``which`` ('last' | 'best') checkpoint of run ``out``."""
    return storage.join(out, "checkpoints", f"{which}.pt")


def save(uri: str, payload: dict[str, Any], cfg: StorageConfig | None = None) -> None:
    """Serialise ``payload`` (tensors moved to CPU) and write it atomically to ``uri``."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    storage.write_bytes(uri, buf.getvalue(), cfg)


def load(uri: str, cfg: StorageConfig | None = None, task: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``task`` checks it was written by that task."""
    data = storage.read_bytes(uri, cfg)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{uri}: not a loadable training checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{uri}: expected checkpoint format {FORMAT!r}, got {got!r}")
    if task and ckpt.get("task") != task:
        raise ValueError(f"{uri}: a {ckpt.get('task')!r} checkpoint, not {task!r}")
    return ckpt


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict on CPU, without a DDP ``module.`` wrapper prefix."""
    inner = getattr(module, "module", module)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
