"""The face-detector registry, test-time views and their inverses, weighted NMS and the calibrated
score (stages/face_detectors.py, stages/face_merge.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from artextract.config import FacesConfig
from artextract.stages.face_detectors import DETECTORS, Raw
from artextract.stages.face_merge import CALIBRATION, VIEWS, calibrated, weighted_nms


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def detectors():
    return {name: make(FacesConfig(device="cpu"), 2) for name, make in DETECTORS.items()}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_finds_the_astronaut_with_ordered_landmarks(detectors, astronaut, name):
    """Each registered detector loads offline from its wheel and returns box, score and 5 points."""
    raw = detectors[name].raw(astronaut)
    best = int(np.argmax(raw.scores))
    assert raw.scores[best] > 0.95 and raw.landmarks.shape[1:] == (5, 2)
    x1, y1, x2, y2 = raw.boxes[best]
    assert 150 < x1 < 200 and 40 < y1 < 90 and 240 < x2 < 290 and 150 < y2 < 200
    eye_l, eye_r, nose, mouth_l, mouth_r = raw.landmarks[best]
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]  # image-left first
    assert eye_l[1] < nose[1] < mouth_l[1]
    assert all(x1 <= p[0] <= x2 and y1 <= p[1] <= y2 for p in raw.landmarks[best])


def test_mtcnn_runs_on_current_torch():
    """facenet-pytorch is installed --no-deps against a newer torch: prove it still works."""
    import torch

    assert tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 3)


def test_retinaface_on_a_blank_image_finds_nothing(detectors):
    assert len(detectors["retinaface"].raw(np.full((300, 400, 3), 128, np.uint8)).scores) == 0


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_each_view_maps_detections_back_to_the_original(detectors, astronaut, view):
    """Detect in the view, map back: the same face at the same place (the inverse is right)."""
    det = detectors["retinaface"]
    ref = det.raw(astronaut)
    ref_box, ref_pts = ref.boxes[ref.scores.argmax()], ref.landmarks[ref.scores.argmax()]
    seen, inverse = VIEWS[view](astronaut)
    back = inverse(det.raw(seen))
    k = back.scores.argmax()
    side = ref_box[2] - ref_box[0]
    # within 10% of the face size: views change pixels (scale, contrast, rotation), not the face
    assert np.abs(back.boxes[k] - ref_box).max() < 0.1 * side
    assert np.abs(back.landmarks[k] - ref_pts).max() < 0.1 * side  # flip re-orders left/right too


@pytest.mark.parametrize("shape", [(512, 384, 3), (301, 457, 3)])  # odd sizes: the same floor of w / 2
def test_grey_half_is_grey_then_half_pixel_for_pixel(shape):
    """The default second view resizes one grey channel instead of three: the same pixels and the
    same way back as applying ``grey`` and then ``half``."""
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    grey, _ = VIEWS["grey"](img)
    want, want_back = VIEWS["half"](grey)
    got, got_back = VIEWS["grey-half"](img)
    np.testing.assert_array_equal(got, want)
    r = Raw(np.array([[10.0, 20, 60, 90]]), np.array([0.9]), np.arange(10, dtype=np.float64).reshape(1, 5, 2))
    np.testing.assert_array_equal(got_back(r).boxes, want_back(r).boxes)
    np.testing.assert_array_equal(got_back(r).landmarks, want_back(r).landmarks)


def test_soft_half_turns_hatching_into_tone():
    """Engraving-like hatching (2-px black and white lines) becomes a flat mid-grey at half size; a
    plain half-size view keeps the stripes (its filter spans two pixels, the hatching's period four)."""
    img = np.zeros((512, 384, 3), np.uint8)
    img[0::4] = img[1::4] = 255
    soft, back = VIEWS["soft-half"](img)
    plain, _ = VIEWS["half"](img)
    assert soft.shape == plain.shape == (256, 192, 3)
    centre = (slice(32, -32), slice(32, -32))
    assert soft[centre].std() < 2 and abs(float(soft[centre].mean()) - 127.5) < 3
    assert plain[centre].std() > 10 * max(soft[centre].std(), 0.1)
    r = Raw(np.array([[10.0, 20, 60, 90]]), np.array([0.9]), np.ones((1, 5, 2)))
    np.testing.assert_array_equal(back(r).boxes, [[20.0, 40, 120, 180]])


def test_flip_inverse_is_exact_on_coordinates():
    img = np.zeros((10, 20, 3), np.uint8)
    _, inverse = VIEWS["flip"](img)
    pts = np.array([[[2.0, 3], [6, 3], [4, 5], [3, 7], [5, 7]]])
    r = inverse(Raw(np.array([[1.0, 2, 7, 9]]), np.array([0.9]), pts))
    np.testing.assert_array_equal(r.boxes, [[13.0, 2, 19, 9]])
    # mirrored, then re-ordered so the image-left eye comes first again
    np.testing.assert_array_equal(r.landmarks[0], [[14, 3], [18, 3], [16, 5], [15, 7], [17, 7]])


def test_weighted_nms_averages_clusters_and_votes_per_source():
    pts = np.zeros((1, 5, 2))
    a = Raw(np.array([[0.0, 0, 10, 10], [50, 50, 60, 60]]), np.array([0.9, 0.3]), np.zeros((2, 5, 2)))
    b = Raw(np.array([[1.0, 1, 11, 11]]), np.array([0.3]), pts + 4)
    c = Raw.empty()
    merged, vote = weighted_nms([a, b, c], iou=0.5)
    assert len(merged.scores) == 2
    # the first face: 0.9 and 0.3 weighted 3:1; vote = mean over the 3 sources of their best
    np.testing.assert_allclose(merged.boxes[0], [0.25, 0.25, 10.25, 10.25])
    np.testing.assert_allclose(merged.landmarks[0], np.full((5, 2), 1.0))
    np.testing.assert_allclose(vote, [(0.9 + 0.3 + 0) / 3, 0.3 / 3])
    np.testing.assert_allclose(merged.scores, [0.9, 0.3])
    empty, v = weighted_nms([c, c], 0.5)
    assert len(empty.scores) == 0 and len(v) == 0


def test_two_detections_of_one_source_in_a_cluster_vote_once():
    a = Raw(np.array([[0.0, 0, 10, 10], [0, 0, 10, 11]]), np.array([0.8, 0.6]), np.zeros((2, 5, 2)))
    _, vote = weighted_nms([a, Raw.empty()], iou=0.5)
    np.testing.assert_allclose(vote, [0.4])  # max of the source, not the sum


def test_calibrated_score_is_a_probability_rising_in_both_cues():
    for name in CALIBRATION:
        grid = np.linspace(0, 1, 11)
        p = calibrated(CALIBRATION[name], grid, np.full(11, 0.5))
        assert ((p > 0) & (p < 1)).all() and (np.diff(p) > 0).all()
        q = calibrated(CALIBRATION[name], np.full(11, 0.5), grid)
        assert (np.diff(q) > 0).all()
    assert set(CALIBRATION) == {"mtcnn", "retinaface", "ensemble"}


def test_ensemble_and_views_through_the_face_detector(astronaut):
    from artextract.stages.faces import FaceDetector

    cfg = FacesConfig(device="cpu", detector="ensemble", views=["identity", "flip", "half"])
    det = FaceDetector(cfg, 2)
    assert len(det.detectors) == 2 and len(det.views) == 3
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    out = det.detect([astronaut, np.full((300, 400, 3), 128, np.uint8), small])
    assert [len(f) for f in out] == [1, 0, 1]
    assert out[0][0].prob >= cfg.min_prob and out[0][0].landmarks.shape == (5, 2)


def test_faces_config_rejects_unknown_detectors_and_views():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        FacesConfig(detector="haar")
    with pytest.raises(ValidationError):
        FacesConfig(views=["identity", "sideways"])
    with pytest.raises(ValidationError):
        FacesConfig(views=[])


def test_our_onet_is_facenets_onet():
    """stages/face_verify.py reads onet.pt without torch and runs O-Net in numpy: the same weights
    as torch.load, and in float64 the same face probabilities as facenet-pytorch's own ONet (same
    op sequence, so agreement to rounding); at float32, what the verifier runs, within 1e-6."""
    import torch
    from facenet_pytorch.models.mtcnn import ONet as TorchONet

    from artextract.stages.face_verify import ONet, load_state_dict, onet_weights

    ours = load_state_dict(onet_weights())
    theirs = torch.load(onet_weights(), map_location="cpu", weights_only=True)
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert ours[name].dtype == np.float32 and np.array_equal(ours[name], t.numpy()), name
    x = np.random.default_rng(0).uniform(-1, 1, (32, 48, 48, 3))  # N, H, W, RGB as the verifier crops
    with torch.no_grad():
        ref = TorchONet(pretrained=True).eval().double()(torch.from_numpy(x).permute(0, 3, 1, 2))[2][:, 1].numpy()
    np.testing.assert_allclose(ONet(ours, np.float64)(x)[:, 1], ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ONet(ours)(x)[:, 1], ref, rtol=0, atol=1e-6)


def test_default_face_detector_never_imports_torch():
    """The default detector actor (RetinaFace on onnxruntime + the numpy O-Net, run here on a box)
    works without torch: importing it is ~1.7 CPU-s of every actor's start (docs/benchmarks.md,
    Preprocess)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from artextract.config import FacesConfig\n"
            "from artextract.stages.faces import FaceDetector\n"
            "det = FaceDetector(FacesConfig(), 1)\n"
            "img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)\n"
            "det.detect([img, img[:64]])\n"
            "p = det.verify.many([img, img], [np.array([[8, 8, 60, 70.]]), np.zeros((0, 4))])\n"
            "assert [len(v) for v in p] == [1, 0] and 0 <= p[0][0] <= 1\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'facenet_pytorch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_retinaface_nms_keeps_what_torchvision_keeps():
    """OpenCV's NMSBoxes replaced torchvision.ops.nms in RetinaFace's own NMS: same greedy result."""
    import cv2
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.uniform(0, 200, (60, 2))
        boxes = np.column_stack([xy, xy + rng.uniform(10, 60, (60, 2))])
        scores = rng.permutation(np.linspace(0.2, 1.0, 60))  # distinct: no tie-order ambiguity
        ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).numpy()
        xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        ours = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, 0.4)).reshape(-1)
        np.testing.assert_array_equal(ours[np.argsort(-scores[ours], kind="stable")], ref)


def test_retinaface_input_blob_is_bgr_minus_mean(astronaut):
    from artextract.stages.face_detectors import retinaface_input

    blob = retinaface_input([astronaut, astronaut[::-1].copy()])
    ref = np.stack([(im[..., ::-1].astype(np.float32) - np.array([104.0, 117.0, 123.0], np.float32)).transpose(2, 0, 1)
                    for im in (astronaut, astronaut[::-1])])
    np.testing.assert_array_equal(blob, ref)  # integer pixels minus integer means: exact in float32


def test_config_views_are_the_registered_views():
    from typing import get_args

    literal = get_args(FacesConfig.model_fields["views"].annotation)[0]
    assert set(get_args(literal)) == set(VIEWS)
    assert set(FacesConfig().views) <= set(VIEWS)


def test_the_default_detector_needs_neither_torchvision_nor_facenet(astronaut, tmp_path):
    """A detector actor's start is mostly imports: detecting with the default (RetinaFace on
    onnxruntime + our O-Net) and cropping must not pull in torchvision (~1 s), facenet-pytorch or
    skimage/scipy (~0.35 s)."""
    import subprocess
    import sys

    Image.fromarray(astronaut).save(tmp_path / "a.png")
    code = ("import sys, numpy as np\n"
            "from PIL import Image\n"
            "from artextract.config import FacesConfig\n"
            "from artextract.stages.faces import FaceDetector, face_record\n"
            f"img = np.asarray(Image.open({str(tmp_path / 'a.png')!r}).convert('RGB'))\n"
            "cfg = FacesConfig(device='cpu')\n"
            "faces = FaceDetector(cfg, 1).detect([img])[0]\n"
            "assert len(faces) == 1, faces\n"
            "assert face_record(0, faces[0], img, 1.0, cfg)['crop_jpeg']\n"
            "print(sorted(m for m in ('torchvision', 'facenet_pytorch', 'skimage', 'scipy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_weighted_nms_takes_geometry_from_the_sharpest_sources_and_votes_from_all():
    full = Raw(np.array([[0.0, 0, 10, 10]]), np.array([0.6]), np.zeros((1, 5, 2)))
    half = Raw(np.array([[1.0, 1, 11, 11], [50, 50, 60, 60]]), np.array([0.9, 0.5]), np.full((2, 5, 2), 4.0))
    merged, vote = weighted_nms([full, half], iou=0.5, resolution=[1.0, 0.5])
    np.testing.assert_allclose(merged.boxes, [[0, 0, 10, 10], [50, 50, 60, 60]])  # not pulled by the half view
    np.testing.assert_allclose(merged.landmarks[0], 0.0)
    np.testing.assert_allclose(merged.landmarks[1], 4.0)  # a face only the half view saw keeps its geometry
    np.testing.assert_allclose(vote, [(0.6 + 0.9) / 2, 0.5 / 2])
    np.testing.assert_allclose(merged.scores, [0.9, 0.5])


def test_weighted_nms_rejects_a_resolution_per_source_mismatch():
    with pytest.raises(ValueError, match="2 resolutions for 1 sources"):
        weighted_nms([Raw(np.array([[0.0, 0, 10, 10]]), np.array([0.9]), np.zeros((1, 5, 2)))], 0.5, [1.0, 0.5])


def test_a_weak_sharp_box_does_not_override_a_confident_half_size_one():
    """A face too large for the full-size view's anchors: its weak full-size box (0.3) must not
    replace the half view's confident one (0.95) as the face's geometry."""
    full = Raw(np.array([[0.0, 0, 100, 100]]), np.array([0.3]), np.zeros((1, 5, 2)))
    half = Raw(np.array([[5.0, 5, 105, 105]]), np.array([0.95]), np.full((1, 5, 2), 4.0))
    merged, vote = weighted_nms([full, half], iou=0.5, resolution=[1.0, 0.5])
    np.testing.assert_allclose(merged.boxes, [[5, 5, 105, 105]])
    np.testing.assert_allclose(vote, [(0.3 + 0.95) / 2])


def _legacy_file(path, state, storages):
    """A legacy-format torch file of ``state`` (name -> (storage key, offset, size, stride)) whose
    storages are ``storages`` (key -> float32 array): the layout load_state_dict reads, crafted."""
    import pickle
    from collections import OrderedDict

    import torch

    from artextract.stages.face_verify import _LEGACY_MAGIC

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = (key, offset, size, stride)

        def __reduce__(self):
            key, offset, size, stride = self.args
            return torch._utils._rebuild_tensor_v2, (Ref(key), offset, size, stride, False, OrderedDict())

    class Ref:
        def __init__(self, key):
            self.key = key

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Ref):
                return ("storage", torch.FloatStorage, obj.key, "cpu", len(storages[obj.key]), None)
            return None

    with open(path, "wb") as f:
        for part in (_LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(part, f, protocol=2)
        Pickler(f, protocol=2).dump(OrderedDict((k, Tensor(*v)) for k, v in state.items()))
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write(np.int64(len(data)).tobytes() + np.asarray(data, "<f4").tobytes())


def test_onet_reader_reads_crafted_files_right_and_refuses_bad_views(tmp_path):
    """Tensors are views of storages (offset, size, stride): read as torch would, and a view past
    its storage, a negative offset or stride, or a forged storage is an error, never a read of
    memory outside the file's own bytes."""
    from artextract.stages.face_verify import load_state_dict

    path = tmp_path / "w.pt"
    data = {"s": np.arange(12, dtype=np.float32)}
    _legacy_file(path, {"a": ("s", 2, (2, 3), (3, 1)), "b": ("s", 0, (3,), (4,))}, data)
    got = load_state_dict(path)
    np.testing.assert_array_equal(got["a"], np.arange(2, 8).reshape(2, 3))
    np.testing.assert_array_equal(got["b"], [0, 4, 8])
    for bad in [("s", 0, (13,), (1,)), ("s", 10, (2, 2), (2, 1)), ("s", -1, (2,), (1,)), ("s", 0, (2,), (-1,))]:
        _legacy_file(path, {"a": bad}, data)
        with pytest.raises(ValueError, match="outside its storage|malformed"):
            load_state_dict(path)


def test_onet_reader_runs_no_code_from_the_file(tmp_path):
    """load_state_dict allows tensors, storages and OrderedDict only (like torch's weights_only):
    a weights file that names any other callable is an error, never a call; calling a storage
    type (numpy would build an array of any length from it) or a wrong header are errors too."""
    import pickle

    from artextract.stages.face_verify import _LEGACY_MAGIC, load_state_dict, onet_weights

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo owned",))

    path = tmp_path / "evil.pt"
    for at in range(4):  # the callable in the magic number, protocol, system info or state dict
        parts = [_LEGACY_MAGIC, 1001, {"little_endian": True}, {}]
        parts[at] = Evil()
        with open(path, "wb") as f:
            for part in parts:
                pickle.dump(part, f, protocol=2)
        with pytest.raises(pickle.UnpicklingError, match="unexpected"):
            load_state_dict(path)
    # GLOBAL 'torch FloatStorage', then REDUCE with ([[]] * 256,): np.float32 would make 256 floats
    with open(path, "wb") as f:
        for part in (_LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(part, f, protocol=2)
        f.write(b"\x80\x02ctorch\nFloatStorage\n]]a" + b"\x85R.")
    with pytest.raises(ValueError, match="corrupt"):
        load_state_dict(path)
    with open(path, "wb") as f:
        for part in (_LEGACY_MAGIC, 999, {"little_endian": True}, {}):
            pickle.dump(part, f, protocol=2)
    with pytest.raises(ValueError, match="not a legacy torch file"):
        load_state_dict(path)
    good = onet_weights().read_bytes()
    path.write_bytes(good[: len(good) - 1000])  # truncated inside the last storage
    with pytest.raises(ValueError, match="truncated"):
        load_state_dict(path)
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match="zip-format"):
        load_state_dict(path)
