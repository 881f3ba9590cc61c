"""Ray-free stages on tiny batches: decode/validate, the default face detector, alignment, writer."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from artextract import samples

from artextract.core import storage
from artextract.config import DecodeConfig, FacesConfig, StorageConfig
from artextract.stages.align import aligned_crop, template
from artextract.stages.decode import REASONS, Quarantine, decode


@pytest.fixture(scope="module")
def detector():
    from artextract.stages.faces import FaceDetector

    return FaceDetector(FacesConfig(device="cpu"), torch_threads=2)


@pytest.mark.parametrize("name", sorted(samples.CASES))
def test_decode_outcomes(name):
    _, make, expected = samples.CASES[name]
    try:
        d = decode(make(), DecodeConfig())
    except Quarantine as q:
        assert q.reason == expected and q.reason in REASONS
        return
    assert expected == "ok"
    assert d.det_image.dtype == np.uint8 and d.det_image.ndim == 3 and d.det_image.shape[2] == 3
    assert max(d.det_image.shape[:2]) <= DecodeConfig().detect_max_side


def test_decode_normalises_modes_and_orientation():
    cfg = DecodeConfig()
    rot = decode(samples.CASES["exif_rotated"][1](), cfg)
    assert (rot.orig_width, rot.orig_height) == (512, 512) and rot.orig_format == "JPEG"
    g16 = decode(samples.CASES["camera_16bit"][1](), cfg)
    assert g16.orig_mode == "I;16" and 60 < g16.det_image.mean() < 200  # scaled, not clipped to white
    rgba = decode(samples.CASES["rgba_oval"][1](), cfg)
    assert (rgba.det_image[0, 0] > 250).all()  # transparent corner composited onto white
    gif = decode(samples.CASES["animated_gif"][1](), cfg)
    assert gif.n_frames == 3


def test_decode_downscales_large_images_with_limits():
    big = Image.new("RGB", (4000, 3000), (120, 80, 40))
    buf = io.BytesIO()
    big.save(buf, "JPEG")
    d = decode(buf.getvalue(), DecodeConfig(detect_max_side=1000))
    assert d.det_image.shape == (750, 1000, 3) and (d.orig_width, d.orig_height) == (4000, 3000)
    assert d.scale == pytest.approx(0.25)
    with pytest.raises(Quarantine, match="decompression_bomb"):
        decode(buf.getvalue(), DecodeConfig(max_pixels=4000 * 2999))
    with pytest.raises(Quarantine, match="too_large_file"):
        decode(buf.getvalue(), DecodeConfig(max_bytes=100))


def test_read_stage_quarantines_oversized_files_after_reading_max_bytes_plus_one(tmp_path, monkeypatch):
    from artextract.config import StorageConfig
    from artextract.stages.read import ReadDecodeStage

    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    big.write_bytes(b"\xff\xd8" + b"0" * 5_000_000)
    Image.new("RGB", (400, 300), (200, 10, 10)).save(small, "JPEG")
    seen = []
    real = storage.read_bytes

    def spy(uri, cfg=None, limit=None):
        out = real(uri, cfg, limit=limit)
        seen.append((uri, limit, len(out)))
        return out

    monkeypatch.setattr(storage, "read_bytes", spy)
    stage = ReadDecodeStage(DecodeConfig(max_bytes=4096), StorageConfig())
    out = stage({"image_id": np.array(["big", "small"]), "uri": np.array([str(big), str(small)])})
    assert out["status"].tolist() == ["quarantined", "ok"]
    assert out["reason"][0] == "too_large_file" and out["detail"][0] == "more than 4096 bytes"
    assert sorted(seen) == sorted([(str(big), 4096, 4097), (str(small), 4096, small.stat().st_size)])


def test_default_detector_finds_the_astronaut(detector):
    from skimage import data

    img = data.astronaut()
    faces = detector.detect([img])[0]
    # calibrated: a clear photographic face found by every view and confirmed by O-Net
    assert len(faces) == 1 and faces[0].prob > 0.9
    x1, y1, x2, y2 = faces[0].box
    assert 150 < x1 < 200 and 40 < y1 < 90 and 240 < x2 < 290 and 150 < y2 < 200
    left_eye, right_eye = faces[0].landmarks[0], faces[0].landmarks[1]
    assert left_eye[0] < right_eye[0]  # image-left eye first


def test_detect_batches_mixed_sizes(detector):
    from skimage import data

    a = data.astronaut()
    small = np.asarray(Image.fromarray(a).resize((256, 256)))
    blank = np.full((300, 400, 3), 128, np.uint8)
    out = detector.detect([a, blank, small, a])
    assert [len(f) for f in out] == [1, 0, 1, 1]
    np.testing.assert_allclose(out[0][0].box, out[3][0].box, atol=1e-3)  # batched == single


def test_aligned_crop_puts_landmarks_on_template(detector):
    from skimage import data
    from skimage.transform import SimilarityTransform

    img = np.asarray(Image.fromarray(data.astronaut()).rotate(20, resample=Image.Resampling.BILINEAR))
    face = detector.detect([img])[0][0]
    crop = aligned_crop(img, face.landmarks, face.box, 160, 0.35)
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8
    tform = SimilarityTransform.from_estimate(face.landmarks.astype(float), template(160, 0.35))
    mapped = tform(face.landmarks.astype(float))
    assert np.abs(mapped[:2] - template(160, 0.35)[:2]).max() < 6  # eyes land on the template
    # Degenerate landmarks fall back to a box crop instead of failing.
    fallback = aligned_crop(img, np.full((5, 2), np.nan), face.box, 64, 0.2)
    assert fallback.shape == (64, 64, 3)


def test_face_stage_output_schema(detector):
    from artextract.stages.faces import FaceStage
    from artextract.stages.read import ReadDecodeStage

    files = {n: samples.CASES[n][1]() for n in ("double_portrait", "landscape_1", "zero_bytes")}
    stage = ReadDecodeStage(DecodeConfig(), StorageConfig())
    stage._read = lambda uri: files[uri]  # feed bytes directly: this test is about the stages
    batch = stage({"image_id": np.array(list(files), object), "uri": np.array(list(files), object)})
    assert list(batch["status"]) == ["ok", "ok", "quarantined"]
    faces_stage = FaceStage.__new__(FaceStage)
    faces_stage.cfg, faces_stage.detector = FacesConfig(), detector
    table = faces_stage(batch)
    assert "det_image" not in table.column_names
    assert table["n_faces"].to_pylist() == [2, 0, 0]
    face = table["faces"][0][0].as_py()
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 10
    assert abs(face["yaw"]) < 45 and abs(face["roll"]) < 30  # near-frontal painted heads
    assert Image.open(io.BytesIO(face["crop_jpeg"])).size == (160, 160)


def test_shard_writer_commits_complete_shards_once(tmp_path):
    from artextract.stages.write import ShardWriter

    manifest = pa.table({"image_id": ["a", "b", "c"], "uri": ["ua", "ub", "uc"], "title": ["A", "B", "C"],
                         "shard": pa.array([0, 0, 1], pa.int64())})
    face = {"face_idx": 0, "box": [1.0, 2.0, 3.0, 4.0], "landmarks": [0.0] * 10, "prob": 0.99,
            "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "crop_jpeg": b"j"}

    def rows(ids, shards, faces):
        from artextract.stages.faces import FACE_TYPE

        n = len(ids)
        return pa.table({"image_id": ids, "uri": [f"u{i}" for i in ids], "shard": pa.array(shards, pa.int64()),
                         "status": ["ok"] * n, "reason": [""] * n, "detail": [""] * n, "bytes": [10] * n,
                         "orig_width": [100] * n, "orig_height": [80] * n, "orig_mode": ["RGB"] * n,
                         "orig_format": ["JPEG"] * n, "n_frames": [1] * n, "det_scale": [1.0] * n,
                         "n_faces": [len(f) for f in faces], "whole_jpeg": [b"w"] * n,
                         "whole_width": [100] * n, "whole_height": [80] * n,
                         "faces": pa.array(faces, pa.list_(FACE_TYPE))})

    w = ShardWriter(str(tmp_path), StorageConfig(), manifest, 160)
    assert w(rows(["b"], [0], [[face]])).num_rows == 0  # shard 0 incomplete: nothing written
    assert not (tmp_path / "images").exists()
    stats = w(rows(["c", "a", "b"], [1, 0, 0], [[], [face, face], [face]])).to_pylist()  # b arrives twice
    assert [s["shard"] for s in stats] == [0, 1]
    assert stats[0] == {"shard": 0, "rows": 2, "ok": 2, "quarantined": 0, "faces": 3}
    images = storage.read_parquet(str(tmp_path / "images"))
    assert images["image_id"].to_pylist() == ["a", "b", "c"]  # manifest order, no duplicates
    assert images["title"].to_pylist() == ["A", "B", "C"]  # manifest metadata joined
    faces = storage.read_parquet(str(tmp_path / "faces"))
    assert faces["image_id"].to_pylist() == ["a", "a", "b"] and faces["crop_size"].to_pylist() == [160] * 3


def test_16bit_images_are_reduced_before_conversion(tmp_path):
    """A large 16-bit PNG is resampled to detection size first and shifted to 8 bits: no
    full-resolution float copy (numpy allocations are what tracemalloc sees)."""
    import tracemalloc

    side = 4000
    ramp = (np.linspace(0, 65535, side, dtype=np.float64)[None, :] * np.ones((side, 1))).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    cfg = DecodeConfig(detect_max_side=800)
    tracemalloc.start()
    try:
        d = decode(buf.getvalue(), cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.det_image.shape == (800, 800, 3) and d.orig_mode == "I;16"
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"  # a float64 copy alone is 122 MiB
    row = d.det_image[400, :, 0].astype(int)
    assert row[0] < 3 and row[-1] > 252 and (np.diff(row) >= 0).all()  # the ramp survives, in order


def test_crops_match_a_float64_reference_warp():
    """The OpenCV warp puts every pixel where skimage's float64 warp does (same pixel-centre
    convention, same edge mode): a half-pixel slip would shift the whole crop."""
    from skimage import data
    from skimage.transform import SimilarityTransform, warp

    from artextract.stages.align import box_crop

    img = data.astronaut()
    landmarks = np.array([[190, 110], [250, 105], [222, 140], [195, 170], [245, 168]], np.float64)
    tform = SimilarityTransform.from_estimate(landmarks, template(160, 0.35))
    box = np.array([150.0, 60.0, 290.0, 220.0])
    half = 160 * 1.2 / 2
    box_t = SimilarityTransform(scale=2 * half / 64, translation=(220 - half, 140 - half))
    for ours, tf, size in ((aligned_crop(img, landmarks, box, 160, 0.35), tform.inverse, 160),
                           (box_crop(img, box, 64, 0.2), box_t, 64)):
        ref = warp(img.astype(np.float64), tf, output_shape=(size, size), order=1, mode="edge", preserve_range=True)
        diff = np.abs(ours.astype(np.float64) - ref)
        # OpenCV interpolates at 1/32-px resolution in fixed point: at most 255/32 ~ 8 levels on a
        # black/white edge, plus rounding; on average far below one level.
        assert diff.max() <= 9 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_similarity_is_skimages_least_squares_similarity():
    from skimage.transform import SimilarityTransform

    from artextract.stages.align import similarity

    rng = np.random.default_rng(0)
    dst = template(160, 0.35)
    for _ in range(50):
        src = rng.uniform(0, 1000, (5, 2))
        ref = SimilarityTransform.from_estimate(src, dst).params
        np.testing.assert_allclose(similarity(src, dst), ref, rtol=1e-9, atol=1e-9)
    # a mirrored face is still mapped by a rotation (det > 0), as skimage does
    src = dst * [-1, 1] + rng.normal(0, 0.5, dst.shape)
    ours = similarity(src, dst)
    np.testing.assert_allclose(ours, SimilarityTransform.from_estimate(src, dst).params, rtol=1e-9, atol=1e-9)
    assert np.linalg.det(ours[:2, :2]) > 0
    assert similarity(np.ones((5, 2)), dst) is None  # degenerate: box crop instead
