"""The art-media fine-tuning experiment's data side (benchmarks/face_finetune.py): renderings keep
the image's geometry, crops keep their faces' boxes on the faces, anchors are labelled as the
detector decodes them."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from benchmarks.face_finetune import SIDE, anchor_labels, art, sample
from artextract.stages.face_detectors import box_iou, retinaface_anchors


def test_every_rendering_is_an_rgb_image_of_the_same_size():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    outs = [art(img, rng) for _ in range(200)]  # every branch, with and without the blur
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert sum(np.array_equal(o, img) for o in outs) < 100  # mostly rendered, not passed through


def test_anchor_labels_mark_a_face_its_best_anchor_and_ignore_the_unsure():
    anchors = retinaface_anchors(SIDE, SIDE)
    xyxy = np.column_stack([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2])
    face, unsure = np.array([[100.0, 100, 163, 170]]), np.array([[250.0, 250, 282, 282]])
    lab = anchor_labels(anchors, face, unsure)
    iou = box_iou(xyxy, face)[:, 0]
    assert lab[iou.argmax()] == 1 and (lab[iou >= 0.35] == 1).all()
    assert (lab[(iou > 0.2) & (iou < 0.35)] == -1).all()  # near misses neither face nor background
    assert (lab[box_iou(xyxy, unsure)[:, 0] >= 0.3] == -1).all()
    assert (lab[(iou == 0) & (box_iou(xyxy, unsure)[:, 0] == 0)] == 0).all()
    assert (anchor_labels(anchors, np.zeros((0, 4)), np.zeros((0, 4))) == 0).all()


def test_a_training_crop_keeps_its_face_box_on_the_face(tmp_path):
    """Two white squares ('faces') on grey, one in the middle, one at the right edge: after scaling,
    cropping and mirroring, each kept box frames the white pixels of the clean crop (within the
    resampling blur), and a face the crop cuts is ignored, never kept as a face."""
    img = np.full((448, 448, 3), 60, np.uint8)
    img[200:260, 150:210] = 255
    img[40:100, 400:448] = 255
    path = tmp_path / "p.png"
    Image.fromarray(img).save(path)
    boxes = np.array([[150.0, 200, 210, 260], [400, 40, 448, 100]])
    rng = np.random.default_rng(1)
    kept, cut = 0, 0
    for _ in range(60):
        clean, rendered, faces, unsure = sample((path, boxes, np.zeros((0, 4))), rng)
        assert clean.shape == rendered.shape == (SIDE, SIDE, 3)
        white = clean[..., 0] > 160
        for x1, y1, x2, y2 in faces:
            kept += 1
            x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
            assert white[y1 + 2:y2 - 2, x1 + 2:x2 - 2].all()  # the box is on a white square ...
            _, lab = cv2.connectedComponents(white.astype(np.uint8))
            ys, xs = np.nonzero(lab == lab[(y1 + y2) // 2, (x1 + x2) // 2])
            # ... and no pixel of that square lies more than 3 px outside it
            assert xs.min() >= x1 - 3 and xs.max() <= x2 + 3 and ys.min() >= y1 - 3 and ys.max() <= y2 + 3
        cut += len(unsure)
        assert len(faces) + len(unsure) <= 2
    assert kept > 20 and cut > 0  # both paths taken: kept faces and cut (ignored) ones


def test_the_teacher_is_the_shipped_onnx_graph():
    """onnx2torch is benchmark input (`make bench-faces-finetune` installs it): when present, the
    converted network must give the ONNX graph's outputs."""
    pytest.importorskip("onnx2torch")
    import onnxruntime as ort
    import torch
    from retinaface.weights import WEIGHTS

    from benchmarks.face_finetune import teacher_net

    x = np.random.default_rng(0).normal(0, 50, (1, 3, 96, 128)).astype(np.float32)
    want = ort.InferenceSession(WEIGHTS, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.no_grad():
        got = teacher_net()(torch.from_numpy(x))
    for w, g in zip(want, got):
        # float32 convolutions in two libraries: agree to 1e-3 of the outputs' scale (measured 2e-5)
        assert np.abs(w - g.numpy()).max() <= 1e-3 * max(1.0, np.abs(w).max())
