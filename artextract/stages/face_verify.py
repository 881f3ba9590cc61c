"""MTCNN's O-Net as a second opinion on any face box (the ``verify`` cue of stages/face_merge.py).

The network is facenet-pytorch's ``ONet`` layer for layer, with the weights that ship in its wheel
(``facenet_pytorch/data/onet.pt``), run in numpy (float32, as it ran in torch) rather than torch: the default detector
(RetinaFace on onnxruntime) needs nothing else from torch, and importing torch is ~1.7 CPU-s of
every detector actor's start, ~4 s of a 128-image preprocess on 2 cores (docs/benchmarks.md). The
network is small (48-px crops, a few per image): ~1.3 ms a face in numpy, what it took in torch.
tests/test_face_detectors.py checks weights and probabilities against torch and facenet-pytorch.
"""
from __future__ import annotations

import importlib.util
import pickle
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

# torch's legacy (pre-zip) serialisation, which onet.pt uses: its magic number and the storage
# classes a state dict of this network can hold.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16}


def onet_weights() -> Path:
    """facenet-pytorch's O-Net state dict, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face verification needs facenet-pytorch's O-Net weights: "
                           "`make install`, or pip install --no-deps facenet-pytorch==2.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "onet.pt"


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a legacy torch state dict into numpy: only tensors, storages and OrderedDict are
    allowed (like ``torch.load(weights_only=True)``), so the file can run no code."""

    def __init__(self, f):
        super().__init__(f)
        self.storages: dict[str, list] = {}  # key -> [dtype, array once read]

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            from collections import OrderedDict
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Tensor
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"onet.pt: unexpected {module}.{name} in a state dict")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel, _view = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"onet.pt: unexpected persistent id {kind!r}")
        return self.storages.setdefault(key, [dtype, None, int(numel)])


class _Tensor:
    """A tensor whose storage bytes come after the pickle: materialised by ``array()``."""

    def __init__(self, storage, offset, size, stride, *_grad_and_hooks):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage[1]
        # as_strided trusts its arguments: a view past the storage would read foreign memory.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if data is None or self.offset < 0 or min(self.stride, default=1) < 0 or (all(self.size) and last >= len(data)):
            raise ValueError("onet.pt: a tensor outside its storage (truncated or corrupt file)")
        flat = data[self.offset:]
        return np.lib.stride_tricks.as_strided(flat, self.size, [s * data.itemsize for s in self.stride]).copy()


def _header(f) -> object:
    """One of the small pickles before the state dict, read by the same restricted unpickler."""
    return _StateDictUnpickler(f).load()


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch's legacy serialiser as numpy arrays (what ``torch.load`` reads:
    magic, protocol, system info, the pickle, the storage keys, then each storage as int64 element
    count + raw little-endian data)."""
    if zipfile.is_zipfile(path):  # torch >= 1.6's format; facenet-pytorch 2.6.0 ships the legacy one
        raise ValueError(f"{path}: a zip-format torch file; expected facenet-pytorch 2.6.0's legacy onet.pt")
    with open(path, "rb") as f:
        if _header(f) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch file")
        _header(f), _header(f)  # protocol version, system info
        unpickler = _StateDictUnpickler(f)
        state = unpickler.load()
        for key in _header(f):
            dtype, _, numel = unpickler.storages[key]
            head = f.read(8)
            count = int(np.frombuffer(head, "<i8")[0]) if len(head) == 8 else -1
            raw = f.read(max(count, 0) * np.dtype(dtype).itemsize)
            if count != numel or len(raw) != numel * np.dtype(dtype).itemsize:
                raise ValueError(f"{path}: storage {key} truncated or corrupt")
            unpickler.storages[key][1] = np.frombuffer(raw, dtype)
    return {name: t.array() for name, t in state.items()}


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Valid stride-1 k x k convolution of x (N, H, W, C) as one matrix product (im2col); ``w`` is
    torch's (O, C, k, k) weight as a (C*k*k, O) matrix."""
    n, h, wd, c = x.shape
    cols = sliding_window_view(x, (k, k), axis=(1, 2)).reshape(n * (h - k + 1) * (wd - k + 1), c * k * k)
    return (cols @ w + b).reshape(n, h - k + 1, wd - k + 1, -1)


def _prelu(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """PReLU with one slope per channel (the last axis), in place."""
    neg = np.minimum(x, 0)
    np.maximum(x, 0, out=x)
    x += neg * a
    return x


def _max_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """torch's MaxPool2d(k, s, ceil_mode=True) on (N, H, W, C): partial windows at the right and
    bottom edges count (padded with -inf)."""
    h, w = x.shape[1:3]
    out_h, out_w = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    need_h, need_w = (out_h - 1) * s + k, (out_w - 1) * s + k
    if need_h > h or need_w > w:
        padded = np.full((x.shape[0], need_h, need_w, x.shape[3]), -np.inf, x.dtype)
        padded[:, :h, :w] = x
        x = padded
    out = None
    for i in range(k):  # the max of k*k strided views: no window array
        for j in range(k):
            v = x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s]
            out = v.copy() if out is None else np.maximum(out, v, out=out)
    return out


class ONet:
    """facenet_pytorch.models.mtcnn.ONet's face/non-face head, in numpy. float32 by default, as the
    network ran in torch; the tests run it in float64 to compare with torch to rounding."""

    _POOLS = {1: (3, 2), 2: (3, 2), 3: (2, 2), 4: None}

    def __init__(self, state: dict[str, np.ndarray], dtype=np.float32):
        self.dtype = dtype
        f = lambda name: np.ascontiguousarray(state[name], dtype)  # noqa: E731
        self.convs = [(f(f"conv{i}.weight").reshape(len(state[f"conv{i}.weight"]), -1).T.copy(), f(f"conv{i}.bias"),
                       state[f"conv{i}.weight"].shape[-1], f(f"prelu{i}.weight"), self._POOLS[i]) for i in range(1, 5)]
        self.dense5 = (f("dense5.weight").T.copy(), f("dense5.bias"), f("prelu5.weight"))
        self.dense6 = (f("dense6_1.weight").T.copy(), f("dense6_1.bias"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, 48, 48, 3) normalised RGB -> (N, 2) softmax (non-face, face), float64."""
        x = x.astype(self.dtype)
        for w, b, k, a, pool in self.convs:
            x = _prelu(_conv(x, w, b, k), a)
            x = _max_pool(x, *pool) if pool else x
        x = x.transpose(0, 2, 1, 3).reshape(len(x), -1)  # torch's permute(0, 3, 2, 1): (W, H, C) order
        w, b, a = self.dense5
        x = _prelu(x @ w + b, a)
        w, b = self.dense6
        logits = (x @ w + b).astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class Verifier:
    """P(face) of a square 48-px crop around each box, by MTCNN's O-Net."""

    def __init__(self):
        from threadpoolctl import ThreadpoolController

        self.onet = ONet(load_state_dict(onet_weights()))
        # A few crops are too little work to share: BLAS threads would only spin after each call,
        # on the cores the detector's onnxruntime threads (or another actor) need (measured: 2-thread
        # RetinaFace + O-Net 86 -> 56 ms an NGA image with the O-Net's BLAS held to one thread).
        self._blas = ThreadpoolController()

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if len(boxes) == 0:
            return np.zeros(0)
        pil = Image.fromarray(image)
        crops = []
        for x1, y1, x2, y2 in boxes:
            side, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
            box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
            crops.append(np.asarray(pil.crop(box).resize((48, 48), Image.BILINEAR)))
        x = (np.stack(crops).astype(np.float32) - 127.5) * 0.0078125
        with self._blas.limit(limits=1, user_api="blas"):
            return self.onet(x)[:, 1]
