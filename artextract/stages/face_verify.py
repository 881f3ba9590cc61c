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
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

# torch's legacy (pre-zip) serialisation, which onet.pt uses: its magic number, protocol version and
# the storage classes a state dict of this network can hold.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2"}


def onet_weights() -> Path:
    """facenet-pytorch's O-Net state dict, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face verification needs facenet-pytorch's O-Net weights: "
                           "`make install`, or pip install --no-deps facenet-pytorch==2.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "onet.pt"


class _StorageType:
    """What the pickle names as ``torch.FloatStorage`` etc.: a tag, not callable."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)


class _Storage:
    """One storage the pickle refers to; its bytes follow the pickle and are read by the loader."""

    __slots__ = ("dtype", "numel", "data")

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


class _Tensor:
    """``torch._utils._rebuild_tensor_v2``'s arguments, materialised by ``array()`` once the
    storages are read. Slots and a refusing ``__setstate__``: the pickle cannot rewrite them."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride, *_grad_and_hooks):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise pickle.UnpicklingError("onet.pt: unexpected state on a tensor")

    def array(self) -> np.ndarray:
        st, off, size, stride = self.storage, self.offset, self.size, self.stride
        ints = lambda v: isinstance(v, tuple) and all(type(n) is int and n >= 0 for n in v)  # noqa: E731
        if not (isinstance(st, _Storage) and st.data is not None and type(off) is int and off >= 0
                and ints(size) and ints(stride) and len(size) == len(stride)):
            raise ValueError("onet.pt: a malformed tensor")
        # as_strided trusts its arguments: a view past its storage would read foreign memory.
        if all(size) and off + sum((n - 1) * s for n, s in zip(size, stride)) >= st.data.size:
            raise ValueError("onet.pt: a tensor outside its storage (truncated or corrupt file)")
        flat = st.data[off:]
        return np.lib.stride_tricks.as_strided(flat, size, [s * flat.itemsize for s in stride]).copy()


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a legacy torch state dict: only OrderedDict, tensors and float storages can be
    named (like ``torch.load(weights_only=True)``), so the file can run no code."""

    def __init__(self, f):
        super().__init__(f)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Tensor
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise pickle.UnpicklingError(f"onet.pt: unexpected {module}.{name} in a state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"onet.pt: unexpected persistent id {pid!r:.80}")
        _, kind, key, _location, numel, view = pid
        if not isinstance(kind, _StorageType) or type(numel) is not int or numel < 0 or view is not None:
            raise pickle.UnpicklingError("onet.pt: unexpected storage (a view, or of another type)")
        st = self.storages.setdefault(key, _Storage(kind.dtype, numel))
        if (st.dtype, st.numel) != (kind.dtype, numel):
            raise pickle.UnpicklingError(f"onet.pt: storage {key} declared twice, differently")
        return st


def _header(f) -> object:
    """One of the small pickles around the state dict, read by the same restricted unpickler."""
    return _StateDictUnpickler(f).load()


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch's legacy serialiser as numpy arrays (what ``torch.load`` reads:
    magic, protocol, system info, the pickle, the storage keys, then each storage as int64 element
    count + raw little-endian data)."""
    if zipfile.is_zipfile(path):  # torch >= 1.6's format; facenet-pytorch 2.6.0 ships the legacy one
        raise ValueError(f"{path}: a zip-format torch file; expected facenet-pytorch 2.6.0's legacy onet.pt")
    try:
        return _load(path)
    except (TypeError, AttributeError, IndexError, KeyError, EOFError) as exc:  # a malformed pickle
        raise ValueError(f"{path}: corrupt ({type(exc).__name__}: {exc})") from None


def _load(path: Path) -> dict[str, np.ndarray]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if _header(f) != _LEGACY_MAGIC or _header(f) != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: not a legacy torch file")
        info = _header(f)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise ValueError(f"{path}: not a little-endian legacy torch file")
        unpickler = _StateDictUnpickler(f)
        state = unpickler.load()
        keys = _header(f)
        if not isinstance(state, dict) or not isinstance(keys, list) or set(keys) != set(unpickler.storages):
            raise ValueError(f"{path}: not a state dict with its storages")
        for key in keys:
            st = unpickler.storages[key]
            head = f.read(8)
            count = int(np.frombuffer(head, "<i8")[0]) if len(head) == 8 else -1
            nbytes = st.numel * st.dtype.itemsize
            if count != st.numel or nbytes > size - f.tell():  # checked before reading: no huge allocation
                raise ValueError(f"{path}: storage {key} truncated or corrupt")
            st.data = np.frombuffer(f.read(nbytes), st.dtype)
    if not all(isinstance(k, str) and isinstance(t, _Tensor) for k, t in state.items()):
        raise ValueError(f"{path}: a state dict entry that is not a tensor")
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
        f = lambda name: np.asarray(state[name], dtype)  # noqa: E731
        # Weights as (inputs, outputs) matrices; a conv's inputs in torch's (C, k, k) order, as _conv's columns.
        matrix = lambda name: np.ascontiguousarray(f(name).reshape(len(state[name]), -1).T)  # noqa: E731
        self.convs = [(matrix(f"conv{i}.weight"), f(f"conv{i}.bias"), state[f"conv{i}.weight"].shape[-1],
                       f(f"prelu{i}.weight"), self._POOLS[i]) for i in range(1, 5)]
        self.dense5 = (matrix("dense5.weight"), f("dense5.bias"), f("prelu5.weight"))
        self.dense6 = (matrix("dense6_1.weight"), f("dense6_1.bias"))

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
        # RetinaFace + O-Net 86 -> 54 ms an NGA image with the O-Net's BLAS held to one thread).
        self._blas = ThreadpoolController()

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.many([image], [boxes])[0]

    def many(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """P(face) per box of each image: one network call for all their crops (a GPU detector's
        batch of 16 images is one O-Net call, not 16)."""
        crops = [_crops(img, b) for img, b in zip(images, boxes)]
        counts = [len(c) for c in crops]
        if not sum(counts):
            return [np.zeros(0) for _ in images]
        x = (np.concatenate(crops).astype(np.float32) - 127.5) * 0.0078125
        with self._blas.limit(limits=1, user_api="blas"):
            p = self.onet(x)[:, 1]
        return np.split(p, np.cumsum(counts)[:-1])


def _crops(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n, 48, 48, 3) square crops around ``boxes`` (x1 y1 x2 y2), as MTCNN feeds its O-Net."""
    if len(boxes) == 0:
        return np.zeros((0, 48, 48, 3), np.uint8)
    pil = Image.fromarray(image)
    out = []
    for x1, y1, x2, y2 in boxes:
        side, cx, cy = max(x2 - x1, y2 - y1), (x1 + x2) / 2, (y1 + y2) / 2
        box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        out.append(np.asarray(pil.crop(box).resize((48, 48), Image.BILINEAR)))
    return np.stack(out)
