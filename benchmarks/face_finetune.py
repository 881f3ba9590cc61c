"""``python -m benchmarks.face_finetune [--out docs/benchmarks.md]`` (``make bench-faces-finetune``)

An experiment, not a product path: can RetinaFace learn the faces it never proposes (woodcuts,
etchings, plaster busts, stylised heads; docs/benchmarks.md, Faces) from art-media renderings of
the faces it does find? The shipped RetinaFace (the *teacher*, converted from its ONNX graph to
torch with onnx2torch) labels WikiArt paintings with the default detector (faces at calibrated
probability >= 0.7, 0.15-0.7 ignored, faceless landscapes/still lifes/abstracts as negatives; the
images are 224 px squashed square as stored in ../shared/data, read at 448 x 448, so their faces
are stretched by the paintings' aspect); a copy (the *student*) is fine-tuned on those images
rendered as pencil sketches, pen lines, woodcut thresholds, hatching or sepia (some left clean):
the labels' faces with hard negatives 7:1, and as box and landmark targets the teacher's own
outputs on the clean image at the same anchors (a scratch run with the encoded label boxes as
targets did no better).

Reported on the labelled NGA halves (tests/fixtures/nga_faces.csv), default views and merging,
calibration refitted on dev for each network: recall/FP at ``faces.min_prob``, and the proposal
*ceiling* -- prominent-face images where the network has a candidate at IoU >= 0.5 at any score
above the candidate floor (``faces.candidate_prob``, raw 0.2) --
with the held-out images only the student reaches. Needs ../shared/data and onnx2torch (the make
target installs it into the venv: benchmark input, never a dependency). ~15 min on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from benchmarks.faces import IMAGES, LABELS, calibrated_scores, candidate_cues, decoded, fit_calibration, metrics_at
from benchmarks.harness import REPO, git_commit, machine, write_doc
from artextract.config import FacesConfig
from artextract.eval.faces import read_labels
from artextract.stages.face_detectors import RetinaFaceDetector, box_iou, retinaface_anchors, retinaface_input
from artextract.stages.face_merge import CALIBRATION, calibrated
from artextract.stages.faces import FaceDetector

SECTION = "Faces: art-media fine-tuning (experiment)"
WIKIART = REPO.parent / "shared" / "data" / "wikiart"
FACELESS_GENRES = ("landscape", "still_life", "abstract_painting", "cityscape")
SIDE = 384  # training crop


def teacher_net():
    """The shipped RetinaFace ONNX graph as a torch module (its shared weights are Identity nodes
    over initializers, which onnx2torch cannot read: they become initializers of their own)."""
    import warnings

    import onnx
    from onnx import numpy_helper
    from onnx2torch import convert
    from retinaface.weights import WEIGHTS

    model = onnx.load_from_string(WEIGHTS)
    init = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in init:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init[node.input[0]]), node.output[0]))
            model.graph.node.remove(node)
    # onnx2torch's Slice indexes with a list (a torch deprecation notice on every call): not for users
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    return convert(model).eval()


class TorchSession:
    """Stands in for the onnxruntime session of RetinaFaceDetector."""

    def __init__(self, net):
        self.net = net.eval()

    def run(self, _outputs, feed):
        import torch

        with torch.no_grad():
            return [o.numpy() for o in self.net(torch.from_numpy(feed["input"]))]


def pseudo_labels(wikiart: Path, det: FaceDetector, rng: np.random.Generator) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """(image, face boxes, ignored boxes) at 448 px: images with faces, half as many faceless ones."""
    coef = CALIBRATION[det.cfg.detector]
    with_faces, faceless = [], []
    with open(wikiart / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for n, row in enumerate(rows, start=1):
        if n % 500 == 0 or n == len(rows):
            print(f"bench-faces-finetune: labelling WikiArt {n}/{len(rows)}", file=sys.stderr, flush=True)
        path = wikiart / "images" / row["path"]
        img = np.asarray(Image.open(path).convert("RGB").resize((448, 448), Image.BICUBIC))
        merged, vote, verify = det.candidates([img])[0]
        prob = calibrated(coef, vote, verify)
        faces, unsure = merged.boxes[prob >= 0.7], merged.boxes[(prob >= 0.15) & (prob < 0.7)]
        if len(faces):
            with_faces.append((path, faces, unsure))
        elif row["genre"] in FACELESS_GENRES:
            faceless.append((path, faces, unsure))
    rng.shuffle(faceless)
    return with_faces + faceless[: len(with_faces) // 2]


def art(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One art-media rendering of an RGB image (or the image itself, 30%)."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    r = rng.random()
    if r < 0.3:
        out = img
    elif r < 0.45:  # pencil sketch: colour dodge of the blurred negative
        out = cv2.divide(g, 255 - cv2.GaussianBlur(255 - g, (0, 0), rng.uniform(3, 10)), scale=256)
    elif r < 0.6:  # pen or etched lines
        out = cv2.adaptiveThreshold(cv2.GaussianBlur(g, (0, 0), rng.uniform(0.5, 1.5)), 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                    cv2.THRESH_BINARY, int(rng.choice([7, 9, 11, 15])), int(rng.integers(2, 8)))
    elif r < 0.72:  # woodcut: two tones
        out = cv2.threshold(cv2.GaussianBlur(g, (0, 0), rng.uniform(0.8, 2)), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    elif r < 0.86:  # hatching: tone as line density
        yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]]
        angle = rng.uniform(0, np.pi)
        wave = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / rng.uniform(3, 6)) + 1) / 2
        out = ((cv2.GaussianBlur(g, (0, 0), 1) / 255.0) > wave).astype(np.uint8) * 255
    else:  # faded sepia
        f = rng.uniform(0.4, 1.0)
        tint = np.array([rng.uniform(0.8, 1.1), rng.uniform(0.7, 1.0), rng.uniform(0.5, 0.9)])
        out = np.clip((g[..., None] * f + (1 - f) * 128) * tint, 0, 255).astype(np.uint8)
    out = cv2.cvtColor(out, cv2.COLOR_GRAY2RGB) if out.ndim == 2 else out
    return cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5)) if rng.random() < 0.3 else out


def sample(item, rng: np.random.Generator):
    """A random scaled SIDE x SIDE crop (maybe mirrored): clean, rendered, face and ignored boxes."""
    path, faces, unsure = item
    s = rng.uniform(0.5, 1.3)
    img = cv2.resize(np.asarray(Image.open(path).convert("RGB").resize((448, 448), Image.BICUBIC)), None, fx=s, fy=s,
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    canvas = np.full((max(SIDE, img.shape[0]), max(SIDE, img.shape[1]), 3), 127, np.uint8)
    canvas[:img.shape[0], :img.shape[1]] = img
    x0, y0 = rng.integers(0, canvas.shape[1] - SIDE + 1), rng.integers(0, canvas.shape[0] - SIDE + 1)
    crop = canvas[y0:y0 + SIDE, x0:x0 + SIDE].copy()
    faces, unsure = faces * s - [x0, y0, x0, y0], unsure * s - [x0, y0, x0, y0]
    area = lambda b: np.clip(b[:, 2:] - b[:, :2], 0, None).prod(1)  # noqa: E731
    seen = area(np.clip(faces, 0, SIDE)) / np.maximum(area(faces), 1)
    faces, unsure = faces[seen >= 0.6], np.concatenate([unsure, faces[(seen > 0) & (seen < 0.6)]])  # cut faces: ignored
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
        faces, unsure = (np.column_stack([SIDE - b[:, 2], b[:, 1], SIDE - b[:, 0], b[:, 3]]) for b in (faces, unsure))
    return crop, art(crop, rng), faces.reshape(-1, 4), unsure.reshape(-1, 4)


def anchor_labels(anchors: np.ndarray, faces: np.ndarray, unsure: np.ndarray) -> np.ndarray:
    """Per anchor 1 (face: IoU >= 0.35, or a face's best anchor), 0 (background) or -1 (ignored)."""
    xyxy = np.column_stack([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2])
    lab = np.zeros(len(anchors), np.int64)
    if len(faces):
        iou = box_iou(xyxy, faces)
        lab[(iou.max(1) >= 0.2)] = -1
        lab[iou.max(1) >= 0.35] = 1
        lab[iou.argmax(0)] = 1
    if len(unsure):
        lab[(box_iou(xyxy, unsure).max(1) >= 0.3) & (lab == 0)] = -1
    return lab


def fine_tune(teacher, items, epochs: int, lr: float, rng: np.random.Generator, batch: int = 8):
    """The student: a copy of ``teacher`` trained on rendered crops. Loss per batch, over its positive
    anchors: face log-likelihood + 7 hard negatives each (at least 16 per image), + 2 x smooth-L1 to
    the teacher's box outputs and + smooth-L1 to its landmark outputs on the clean crop."""
    import torch
    import torch.nn.functional as F

    student = copy.deepcopy(teacher).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    anchors = retinaface_anchors(SIDE, SIDE)
    steps = epochs * (len(items) // batch)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    blob = lambda ims: torch.from_numpy(retinaface_input(ims))  # noqa: E731 (the detector's own input transform)
    t0, step = time.time(), 0
    for _ in range(epochs):
        order = rng.permutation(len(items))
        for b in range(len(items) // batch):
            got = [sample(items[j], rng) for j in order[b * batch:(b + 1) * batch]]
            lab = torch.from_numpy(np.stack([anchor_labels(anchors, g[2], g[3]) for g in got]))
            with torch.no_grad():
                t_loc, _, t_lm = teacher(blob([g[0] for g in got]))
            s_loc, s_conf, s_lm = student(blob([g[1] for g in got]))
            logp = torch.log(s_conf.clamp_min(1e-7))
            pos = lab == 1
            n = max(int(pos.sum()), 1)
            hardness = torch.where(lab == 0, -logp[..., 0].detach(), torch.full_like(logp[..., 0], -1.0))
            rank = hardness.argsort(1, descending=True).argsort(1)
            neg = (rank < torch.clamp(pos.sum(1) * 7, min=16)[:, None]) & (lab == 0)
            loss = ((-logp[..., 1][pos]).sum() + (-logp[..., 0][neg]).sum()
                    + 2 * F.smooth_l1_loss(s_loc[pos], t_loc[pos], reduction="sum")
                    + F.smooth_l1_loss(s_lm[pos], t_lm[pos], reduction="sum")) / n
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"bench-faces-finetune: step {step}/{steps} loss {loss.item():.2f} ({time.time() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
    return student.eval()


def measure(name: str, net, images, dev, test, threads: int) -> dict[str, Any]:
    """Default views and merging with ``net`` as RetinaFace; calibration refitted on dev."""
    print(f"bench-faces-finetune: measuring the {name} on {len(dev) + len(test)} NGA images", file=sys.stderr, flush=True)
    det = FaceDetector(FacesConfig(device="cpu"), threads)
    if not isinstance(det.detectors[0], RetinaFaceDetector):
        raise RuntimeError(f"bench-faces-finetune: the default detector is {det.cfg.detector}, not RetinaFace")
    det.detectors[0].session = TorchSession(net)
    boxes, cues = {}, {}
    for im in dev + test:
        img, scale = images[im.image_id]
        b, cues[im.image_id] = candidate_cues(det, img)
        boxes[im.image_id] = b / scale
    coef = fit_calibration(dev, boxes, cues)
    scores = {k: calibrated_scores(v, coef) for k, v in cues.items()}
    reach = {}
    for half, labels in (("dev", dev), ("test", test)):
        reach[half] = sorted(im.image_id for im in labels if "prominent" in im.sizes and len(boxes[im.image_id]) and
                             box_iou(boxes[im.image_id], im.boxes[[s == "prominent" for s in im.sizes]]).max() >= 0.5)
    thr = FacesConfig().min_prob
    return {"fit": coef, "dev": metrics_at(dev, boxes, scores, thr), "test": metrics_at(test, boxes, scores, thr), "reach": reach}


def section(rows: list[tuple[str, dict[str, Any]]], n_items: int, n_faces: int, args, meta: dict[str, str]) -> str:
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    (_, teacher), (_, student) = rows
    lines = [f"## {SECTION}", "", f"Command: `{meta['command']}`  ", f"Date: {meta['date']} · {meta['machine']}  ",
             f"Code: commit {meta['commit']}  ",
             f"Training: {n_items} WikiArt images (224 px squashed square as stored, read at 448 × 448; {n_faces} faces labelled by the default detector), "
             f"{args.epochs} epochs, lr {args.lr}, seed {args.seed}; evaluation: the labelled NGA halves, default views, "
             f"calibration refitted on dev per network, `faces.min_prob` {FacesConfig().min_prob}. *reach*: images with a "
             "prominent face where the network has a candidate at IoU ≥ 0.5 at any score above the candidate floor "
             "(`faces.candidate_prob`, raw 0.2): the ceiling of any threshold.", "",
             "| network | dev: prominent-image recall | dev: faceless FP | test: prominent-image recall | test: faceless FP "
             "| test: box recall | dev reach | test reach | refit (a, b, c) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {f(r['dev']['prominent_image_recall'])} | {f(r['dev']['faceless_fp_rate'])} | "
                     f"{f(r['test']['prominent_image_recall'])} | {f(r['test']['faceless_fp_rate'])} | {f(r['test']['recall'])} | "
                     f"{len(r['reach']['dev'])}/{r['dev']['images_with_prominent_face']} | "
                     f"{len(r['reach']['test'])}/{r['test']['images_with_prominent_face']} | {r['fit']} |")
    only_s = sorted(set(student["reach"]["test"]) - set(teacher["reach"]["test"]))
    only_t = sorted(set(teacher["reach"]["test"]) - set(student["reach"]["test"]))
    better = ((student["dev"]["prominent_image_recall"] or 0) > (teacher["dev"]["prominent_image_recall"] or 0)
              and (student["dev"]["faceless_fp_rate"] or 0) <= (teacher["dev"]["faceless_fp_rate"] or 0))
    lines += ["", f"- Held-out prominent-face images only the student reaches: {', '.join(only_s) or 'none'}; "
              f"only the teacher: {', '.join(only_t) or 'none'}.",
              f"- Dev verdict (higher prominent-image recall at no more faceless FP): the student is "
              f"**{'better: worth shipping' if better else 'not better: not shipped'}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.face_finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if not IMAGES.is_dir() or not WIKIART.is_dir():
        print("bench-faces-finetune: needs ../shared/data (nga/images, wikiart)", file=sys.stderr)
        return 1
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    items = pseudo_labels(WIKIART, FaceDetector(FacesConfig(device="cpu"), threads), rng)
    n_faces = sum(len(i[1]) for i in items)
    print(f"bench-faces-finetune: {len(items)} training images, {n_faces} faces", file=sys.stderr, flush=True)
    dev, test = read_labels(str(LABELS), "dev"), read_labels(str(LABELS), "test")
    images = decoded(dev + test, IMAGES)
    teacher = teacher_net()
    student = fine_tune(teacher, items, args.epochs, args.lr, rng)
    rows = [("teacher (shipped RetinaFace)", measure("teacher", teacher, images, dev, test, threads)),
            ("student (art-media fine-tuned)", measure("student", student, images, dev, test, threads))]
    m = machine()
    meta = {"command": "python -m benchmarks.face_finetune " + " ".join(argv), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{m.get('cores', '?')} cores, {m.get('cpu', '?')}"}
    body = section(rows, len(items), n_faces, args, meta)
    write_doc(Path(args.out), [(SECTION, body)])
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
