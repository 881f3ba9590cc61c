"""Where a stage's model runs inside its actor. Ray decides which node and GPU an actor gets (from
the resources the job declares); the stage only looks at what torch sees in its own process."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def resolve_device(device: str, what: str = "stage") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error.

    An actor Ray gave a GPU (``CUDA_VISIBLE_DEVICES`` set) whose torch sees none (a node without a
    working driver, a CUDA build the driver is too old for, a fake test node) says so and runs on
    the CPU: slower, but never silently.
    """
    import torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError(f"{what}: device=cuda but torch sees no CUDA device "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    if device != "auto":
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not cuda and visible not in ("", "-1"):
        log.warning("%s: given GPU %s but torch %s (CUDA %s) sees none: running on the CPU", what, visible,
                    torch.__version__, torch.version.cuda)
    return "cuda" if cuda else "cpu"
