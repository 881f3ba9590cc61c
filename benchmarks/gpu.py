"""``python -m benchmarks.gpu [--device auto] [--dry-run] [--out docs/benchmarks.md] [--json FILE]``

The Ray-free stages on one accelerator, so they can be measured on a GPU machine that has torch
and torchvision but no Ray or FAISS (the device image): MTCNN face detection batched at 1024 px,
the ResNet50 embedding (bf16 autocast + channels_last on CUDA, optionally torch.compile), exact
kNN with torch (and faiss-gpu when installed), and one DDP training step of the CNN-RNN. Every
throughput is reported with decoding excluded (tensors already in memory) and, where decoding is
part of the real job, included: JPEG decode on CPU threads (PIL, as the stages do) and, on CUDA,
nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``.

``--dry-run`` runs every measurement at toy sizes on the CPU (a smoke test of the script, used by
the test suite); its numbers mean nothing. Goals on one H100 (issue 7): embedding >= 2,000 img/s,
face detection >= 300 img/s.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

SECTION = "GPU stages"
SIZES = {  # (real run, dry run); the dry run's are as small as still runs every code path (1 embed batch)
    "detect_images": (256, 4), "detect_side": (1024, 256), "detect_batch": (32, 2),
    "embed_images": (4096, 8), "embed_side": (160, 32), "embed_batch": (256, 8),
    "knn_n": (1_000_000, 5_000), "knn_dim": (256, 32), "knn_queries": (1024, 16),
    "ddp_batch": (64, 2), "ddp_side": (224, 64),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs (synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample_jpegs(n: int, long_side: int) -> list[bytes]:
    """n JPEGs of portraits from the sample collection, resized to ``long_side``."""
    from PIL import Image

    from artextract import samples

    base = []
    for name in samples.FACE_CASES:
        with Image.open(io.BytesIO(samples.CASES[name][1]())) as im:
            im = im.convert("RGB")
            scale = long_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            base.append(buf.getvalue())
    return [base[i % len(base)] for i in range(n)]


def bench_detect(device: torch.device, n: int, side: int, batch: int) -> dict[str, Any]:
    """MTCNN (facenet-pytorch) through FaceDetector: img/s with and without JPEG decoding."""
    from artextract.config import DecodeConfig, FacesConfig
    from artextract.stages.decode import decode
    from artextract.stages.faces import FaceDetector

    jpegs = sample_jpegs(n, side)
    # MTCNN alone, one view: the GPU detector (RetinaFace runs on onnxruntime's CPU provider).
    det = FaceDetector(FacesConfig(device=device.type, batch_size=batch, detector="mtcnn", views=["identity"]))
    dcfg = DecodeConfig(detect_max_side=side)
    arrays = [decode(j, dcfg).det_image for j in jpegs]
    # One size bucket per call, as preprocess batches by shape (square pad keeps one bucket).
    canvas = np.zeros((side, side, 3), np.uint8)
    padded = []
    for a in arrays:
        c = canvas.copy()
        c[: a.shape[0], : a.shape[1]] = a
        padded.append(c)
    excl = timed(lambda: det.detect(padded), device, repeats=2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        def with_decode() -> None:
            det.detect(list(pool.map(lambda j: decode(j, dcfg).det_image, jpegs)))
        incl = timed(with_decode, device, repeats=2)
    faces = sum(len(f) for f in det.detect(padded[:batch]))
    return {"stage": "MTCNN face detection", "images": n, "size": f"{side} px long side", "batch": batch,
            "img_s_excl_decode": n / excl, "img_s_incl_decode": n / incl, "decode": "PIL on 8 CPU threads",
            "faces_in_first_batch": faces}


def bench_embed(device: torch.device, n: int, side: int, batch: int, compile_model: bool) -> dict[str, Any]:
    """ResNet50 EmbeddingNet forward: img/s on resident tensors, with PIL decode, with nvJPEG."""
    from artextract.stages.embed import IMAGENET_MEAN, IMAGENET_STD, decode_square, load_model

    model, version = load_model("untrained:resnet50", 256, 0)
    model = model.to(device).eval()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 3, side, side, device=device)
    if cuda:
        x = x.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return fwd(t)

    steps = max(1, n // batch)
    excl = timed(lambda: [run(x) for _ in range(steps)], device, repeats=2)
    jpegs = sample_jpegs(batch, side)
    with ThreadPoolExecutor(max_workers=8) as pool:
        def pil() -> None:
            for _ in range(steps):
                arr = np.stack(list(pool.map(lambda j: decode_square(j, side), jpegs)))
                run(torch.from_numpy(arr).permute(0, 3, 1, 2).to(device, non_blocking=True))
        incl = timed(pil, device, repeats=1)
    out = {"stage": "embedding ResNet50 -> 256-d" + (" (torch.compile)" if compile_model else ""),
           "images": steps * batch, "size": f"{side}x{side}", "batch": batch,
           "precision": "bf16 autocast, channels_last" if cuda else "fp32",
           "img_s_excl_decode": steps * batch / excl, "img_s_incl_decode": steps * batch / incl,
           "decode": "PIL on 8 CPU threads", "model_version": version}
    if cuda:
        import torchvision.io as tio
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        raw = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]

        def nvjpeg() -> None:
            for _ in range(steps):
                imgs = tio.decode_jpeg(raw, device=device)
                t = torch.stack([F.interpolate(i[None].float(), size=(side, side), mode="bilinear")[0] for i in imgs])
                run(((t / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last))
        out["img_s_incl_nvjpeg"] = steps * batch / timed(nvjpeg, device, repeats=1)
    return out


def bench_knn(device: torch.device, n: int, dim: int, q: int, k: int = 10) -> dict[str, Any]:
    """Exact top-k: torch matmul+topk with the database resident on the device, and through
    ``torch_exact_search`` (which uploads the numpy database per call); faiss-gpu when present."""
    from artextract.index.exact import torch_exact_search

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, q, replace=False)]
    xd, qd = torch.from_numpy(xb).to(device), torch.from_numpy(xq).to(device)
    resident = timed(lambda: torch.topk(qd @ xd.T, k, dim=1), device)
    upload = timed(lambda: torch_exact_search(xb, xq, k, device=device.type), device, repeats=2)
    out = {"stage": f"exact kNN {n:,} x {dim}, top-{k}", "queries": q, "qps_resident": q / resident,
           "qps_torch_exact_search": q / upload}
    try:
        import faiss

        if hasattr(faiss, "StandardGpuResources") and device.type == "cuda":
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(dim))
            index.add(xb)
            out["qps_faiss_gpu"] = q / timed(lambda: index.search(xq, k), device)
        cpu = faiss.IndexFlatIP(dim)
        cpu.add(xb)
        out["qps_faiss_cpu"] = q / timed(lambda: cpu.search(xq, k), torch.device("cpu"), repeats=1)
    except ImportError:
        out["faiss"] = "not installed"
    return out


def bench_ddp_step(device: torch.device, batch: int, side: int) -> dict[str, Any]:
    """One DDP training step of the CNN-RNN classifier (world size 1: the per-GPU cost, NCCL/gloo)."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from artextract.models.crnn import CRNNClassifier

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = CRNNClassifier({"style": 27, "genre": 10, "artist": 23}).to(device)
        ddp = DDP(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, side, side, device=device)
        y = {t: torch.randint(0, c, (batch,), device=device) for t, c in (("style", 27), ("genre", 10), ("artist", 23))}

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = ddp(x)
                loss = sum(torch.nn.functional.cross_entropy(out[t].float(), y[t]) for t in y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sec = timed(step, device, repeats=3)
    finally:
        dist.destroy_process_group()
    return {"stage": f"DDP train step CNN-RNN resnet18 ({backend})", "batch": batch, "size": f"{side}x{side}",
            "img_s": batch / sec, "step_ms": sec * 1000}


def section(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown section (numbers only; no verdict is hard-coded)."""
    lines = [f"## {SECTION}", "", f"Command: `python -m benchmarks.gpu {meta['argv']}` on {meta['device_name']} "
             f"({meta['date']}; torch {meta['torch']}, torchvision {meta['torchvision']}).", ""]
    if meta["dry_run"]:
        lines += ["**Dry run** at toy sizes on the CPU: checks the script runs end to end; the numbers are "
                  "not benchmarks. On a CUDA machine: `python -m benchmarks.gpu`.", ""]
    lines += ["| stage | setting | img/s or QPS | detail |", "|---|---|---:|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['stage']} | - | - | skipped: {r['error']} |")
            continue
        for key, val in r.items():
            if key.startswith(("img_s", "qps")):
                detail = {k: v for k, v in r.items() if k not in ("stage",) and not k.startswith(("img_s", "qps"))}
                lines.append(f"| {r['stage']} | {key} | {val:,.1f} | {json.dumps(detail, default=str)} |")
    lines += ["", "Goals on one H100: embedding >= 2,000 img/s, face detection >= 300 img/s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None, sink: dict[str, Any] | None = None) -> int:
    """CLI; ``sink`` (when given) receives the results dict, for ``benchmarks.suite``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (smoke test)")
    p.add_argument("--compile", action="store_true", help="also measure the embedding with torch.compile")
    p.add_argument("--out", help="markdown file to write the section into (e.g. docs/benchmarks.md)")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args(argv)
    dev = "cpu" if args.dry_run else ("cuda" if args.device == "auto" and torch.cuda.is_available() else
                                       ("cpu" if args.device == "auto" else args.device))
    device = torch.device(dev)
    size = {k: v[1 if args.dry_run else 0] for k, v in SIZES.items()}
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("MTCNN face detection", lambda: bench_detect(device, size["detect_images"], size["detect_side"],
                                                      size["detect_batch"])),
        ("embedding ResNet50", lambda: bench_embed(device, size["embed_images"], size["embed_side"],
                                                   size["embed_batch"], False)),
        ("exact kNN", lambda: bench_knn(device, size["knn_n"], size["knn_dim"], size["knn_queries"])),
        ("DDP train step", lambda: bench_ddp_step(device, size["ddp_batch"], size["ddp_side"])),
    ]
    if args.compile:
        runs.insert(2, ("embedding ResNet50 (torch.compile)", lambda: bench_embed(
            device, size["embed_images"], size["embed_side"], size["embed_batch"], True)))
    results = []
    for name, fn in runs:
        print(f"[bench-gpu] {name} on {dev} ...", flush=True)
        try:
            results.append(fn())
        except ImportError as exc:  # e.g. facenet-pytorch absent on a bare GPU image
            results.append({"stage": name, "error": f"{type(exc).__name__}: {exc}"})
        print(f"[bench-gpu] {json.dumps(results[-1], default=str)}", flush=True)
    import torchvision

    meta = {"argv": " ".join(argv), "dry_run": args.dry_run, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device_name": torch.cuda.get_device_name(device) if dev == "cuda" else "CPU"}
    if sink is not None:
        sink.update(meta=meta, results=results)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    if args.out:
        from benchmarks.harness import write_doc

        write_doc(Path(args.out), [(SECTION, section(results, meta))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
