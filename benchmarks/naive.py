"""The baseline the preprocess benchmark compares against: a per-image loop as the seed projects'
notebooks wrote it. Open each file with PIL at full resolution, run one ``MTCNN(keep_all=True)``
(created once, default settings, torch's default threads), crop every box with PIL, resize it
to 160x160 and save it as a JPEG. Single process, no batching, no Ray.

Faithfully naive but not sabotaged: files that PIL cannot open are counted and skipped (a
notebook would crash on them; the bench collections contain some on purpose).

``python -m benchmarks.naive --images DIR --out DIR`` prints one JSON line of counts and
writes it to ``DIR/naive_summary.json`` (boxes and probabilities go to ``DIR/naive_faces.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
CROP_SIZE = 160
# MTCNN's own probability the pipeline kept before its detector registry (now faces.min_prob is a
# calibrated probability of the default detector); the loop keeps every box MTCNN returns. Both
# counts are reported so the pipeline's faces can be compared with MTCNN's confident ones.
MTCNN_OLD_MIN_PROB = 0.92


def list_images(images: Path) -> list[Path]:
    """Image files under ``images`` (recursive, hidden entries skipped), sorted."""
    out = []
    for path in sorted(images.rglob("*")):
        rel = path.relative_to(images).parts
        if path.is_file() and not any(p.startswith(".") for p in rel) and path.suffix.lower() in EXTENSIONS:
            out.append(path)
    return out


def run(images: Path, out: Path) -> dict:
    """Run the loop over every image under ``images``; crops go to ``out/crops``."""
    t0 = time.perf_counter()
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    mtcnn = MTCNN(keep_all=True)  # defaults: min_face_size=20, thresholds (0.6, 0.7, 0.7), cpu
    t_model = time.perf_counter()
    crops = out / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    counts = dict(images=0, processed=0, failed=0, faces=0, faces_p92=0, images_with_faces=0)
    detections = {}  # relpath -> [[x1, y1, x2, y2, prob], ...]: the bench matches these to the pipeline's
    for path in list_images(images):
        counts["images"] += 1
        try:
            img = Image.open(path).convert("RGB")
            boxes, probs = mtcnn.detect(img)
        except Exception as exc:  # noqa: BLE001 - a notebook would stop here; we count and go on
            counts["failed"] += 1
            print(f"skip {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        counts["processed"] += 1
        rel = path.relative_to(images).as_posix()
        detections[rel] = []
        if boxes is None:
            continue
        counts["images_with_faces"] += 1
        for i, (box, prob) in enumerate(zip(boxes, probs)):
            detections[rel].append([float(v) for v in box] + [float(prob)])
            face = img.crop(tuple(int(round(v)) for v in box)).resize((CROP_SIZE, CROP_SIZE))
            face.save(crops / f"{path.stem}_{i}.jpg", quality=92)
            counts["faces"] += 1
            counts["faces_p92"] += int(prob >= MTCNN_OLD_MIN_PROB)
    t_end = time.perf_counter()
    summary = {"job": "naive", "counts": counts, "torch_threads": torch.get_num_threads(),
               "timings_s": {"startup": round(t_model - t0, 3), "loop": round(t_end - t_model, 3)},
               "images_per_s": round(counts["images"] / (t_end - t_model), 2) if t_end > t_model else None,
               "pipeline_s": round(t_end - t_model, 3)}
    (out / "naive_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "naive_faces.json").write_text(json.dumps(detections))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="local folder of images")
    parser.add_argument("--out", required=True, help="output folder for the crops and naive_summary.json")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.images):
        print(f"naive: no such folder: {args.images}", file=sys.stderr)
        return 1
    print(json.dumps(run(Path(args.images), Path(args.out))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
