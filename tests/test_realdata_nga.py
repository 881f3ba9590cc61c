"""Face detection on the 128 real National Gallery of Art images in ../shared/data/nga/images
(paintings, drawings, prints, photographs, ~1200 px wide): the detector on hand-picked clear
portraits and faceless images, then the whole Ray preprocess pipeline on all 128 images (local)
and on a subset read from and written to S3 over real HTTP.

The id lists were picked by looking at every image next to MTCNN's boxes, and hold for the default
detector (RetinaFace + views, calibrated) too. Images where MTCNN missed an obvious face
(profiles, stylised line drawings, downcast heads such as 5, 11649, 48194, 64978, 70519) are
deliberately NOT in the must-pass lists; the labelled evaluation below measures those.
"""
from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from artextract.config import FacesConfig
from artextract.core import storage
from artextract.cli import main

pytestmark = pytest.mark.realdata

# Large, clearly visible frontal / three-quarter faces where MTCNN finds >= 1 face (prob >= 0.92).
PORTRAITS = {
    "1128": "oil sketch, head and shoulders of a grey-haired man, face fills the centre",
    "34104": "oil portrait, dark-haired man in black coat and white stock, three-quarter face",
    "42939": "oil portrait, young woman in a white Empire dress before a red curtain",
    "46106": "16th-c. style oil portrait, frontal woman in a red-and-gold gown",
    "46425": "oil portrait, white-haired man with glasses in a dark robe",
    "70506": "b/w subway photograph, a woman and a man seated side by side, both faces frontal",
    "107417": "b/w photograph, two men in work smocks seated before a tent",
    "8382": "engraving, head of an old man with a long white beard filling the sheet",
}

# No people at all: landscape, architecture, still lifes, abstraction; MTCNN finds 0 faces.
FACELESS = {
    "3204": "moonlit landscape: trees silhouetted against a green sky, a stream, no figures",
    "46524": "Monet, Rouen Cathedral facade in blue-white light, no figures",
    "43711": "still life: melons, grapes and cut watermelon under vine leaves, wood-grain border",
    "59913": "still life: basket of fruit (pear, peaches, grapes) with a parrot on a branch",
    "224926": "abstract expressionist canvas, thick red/blue/green impasto",
}
# Measured false positives of the default detector among them, each with the calibrated probability
# it must stay under: the default (RetinaFace, identity + grey-half, min_prob 0.45) reads the moon of
# 3204 as a large face at 0.50 (docs/benchmarks.md, Faces: 2 of the 19 faceless held-out images fire).
# Anything else firing, or this above its bound, fails.
KNOWN_FALSE_FACES = {"3204": 0.55}

# S3 variant: a 12-image subset of portraits, faceless images, multi-face group scenes and known
# misses (so the S3 run has a mixture of 0, 1 and many faces per image).
S3_SUBSET = sorted({
    "1128", "34104", "70506", "107417",  # portraits (one face; two in the photographs)
    "3204", "46524", "224926",           # landscape, facade, abstraction: no faces
    "183", "61398", "227280",            # multi-figure scenes / group photo
    "5", "11649",                        # faces MTCNN misses (0 found)
}, key=int)

MIN_PROB = FacesConfig().min_prob  # the calibrated probability preprocess keeps faces at
N_IMAGES = 128


def _nga_images(shared_data: Path) -> Path:
    d = shared_data / "nga" / "images"
    if not d.is_dir():
        pytest.skip(f"NGA images not available at {d}")
    return d


@pytest.fixture(scope="module")
def detector():
    from artextract.config import FacesConfig
    from artextract.stages.faces import FaceDetector

    return FaceDetector(FacesConfig())


def _detect(images_dir: Path, image_id: str, detector):
    from artextract.config import DecodeConfig
    from artextract.stages.decode import decode

    decoded = decode((images_dir / f"{image_id}.jpg").read_bytes(), DecodeConfig())
    return decoded, detector.detect([decoded.det_image])[0]


def test_faces_found_in_clear_portraits(shared_data, detector):
    images_dir = _nga_images(shared_data)
    problems = []
    for image_id, what in PORTRAITS.items():
        decoded, faces = _detect(images_dir, image_id, detector)
        h, w = decoded.det_image.shape[:2]
        good = [f for f in faces if f.prob >= MIN_PROB]
        if not good:
            problems.append(f"{image_id} ({what}): no face >= {MIN_PROB}, got {[f.prob for f in faces]}")
            continue
        best = good[0]
        x1, y1, x2, y2 = (float(v) for v in best.box)
        if not (-0.5 <= x1 < x2 <= w + 0.5 and -0.5 <= y1 < y2 <= h + 0.5):
            problems.append(f"{image_id}: box {best.box} outside the {w}x{h} image")
        if min(x2 - x1, y2 - y1) < 0.05 * min(w, h):
            problems.append(f"{image_id}: face {x2 - x1:.0f}x{y2 - y1:.0f} px is < 5% of the short side {min(w, h)}")
    assert not problems, "\n".join(problems)


def test_no_faces_in_landscapes_and_still_lifes(shared_data, detector):
    images_dir = _nga_images(shared_data)
    fired = {}
    for image_id, what in FACELESS.items():
        _, faces = _detect(images_dir, image_id, detector)
        if faces and not (len(faces) == 1 and faces[0].prob < KNOWN_FALSE_FACES.get(image_id, 0.0)):
            fired[f"{image_id} ({what})"] = [(round(f.prob, 3), [round(float(v)) for v in f.box]) for f in faces]
    assert not fired, f"faces found in faceless images: {fired}"


# --------------------------------------------------------------------------- pipeline (Ray)

def _counts(summary_uri: str, cfg=None) -> dict:
    return storage.read_json(summary_uri, cfg)["counts"]


def _faces_by_image(pre: str, cfg=None) -> dict[str, int]:
    faces = storage.read_parquet(storage.join(pre, "faces"), cfg, columns=["image_id"])
    out: dict[str, int] = {}
    for image_id in faces["image_id"].to_pylist():
        out[image_id] = out.get(image_id, 0) + 1
    return out


@pytest.fixture(scope="module")
def nga_local_run(shared_data, tmp_path_factory, ray_session):
    """ingest folder + preprocess over all 128 images, local in and out (shard_rows=16), once."""
    images_dir = _nga_images(shared_data)
    root = tmp_path_factory.mktemp("nga")
    manifest, pre = str(root / "manifest"), str(root / "pre")
    assert main(["ingest", "folder", "--images", str(images_dir), "--out", manifest]) == 0
    args = ["preprocess", "--manifest", manifest, "--out", pre, "shard_rows=16"]
    t0 = time.perf_counter()
    assert main(args) == 0
    seconds = time.perf_counter() - t0
    return {"manifest": manifest, "pre": pre, "args": args, "seconds": seconds}


@pytest.mark.slow
def test_pipeline_all_images_local(nga_local_run):
    pre = nga_local_run["pre"]
    c = _counts(storage.join(pre, "summary.json"))
    assert c["manifest_rows"] == N_IMAGES == c["processed"] + c["quarantined"]
    assert c["quarantined"] == 0, c.get("quarantine_reasons")
    assert c["faces"] > 0 and c["shards"] == N_IMAGES // 16

    images = {r["image_id"]: r for r in storage.read_parquet(
        storage.join(pre, "images"), columns=["image_id", "status", "orig_width", "orig_height", "n_faces"]
    ).to_pylist()}
    assert len(images) == N_IMAGES
    faces = storage.read_parquet(storage.join(pre, "faces")).to_pylist()
    assert len(faces) == c["faces"]
    per_image = _faces_by_image(pre)
    assert set(PORTRAITS) <= set(per_image), f"portraits without faces: {set(PORTRAITS) - set(per_image)}"
    fired = {r["image_id"]: r["prob"] for r in faces if r["image_id"] in FACELESS}
    assert all(p < KNOWN_FALSE_FACES.get(i, 0.0) and per_image[i] == 1 for i, p in fired.items()), \
        f"faces in faceless images: {fired}"
    for image_id, row in images.items():
        assert row["n_faces"] == per_image.get(image_id, 0), image_id

    out_of_bounds = []
    for f in faces:
        img = images[f["image_id"]]
        assert f["prob"] >= MIN_PROB
        crop = Image.open(io.BytesIO(f["crop_jpeg"]))
        assert crop.size == (f["crop_size"], f["crop_size"]) and crop.mode == "RGB"
        x1, y1, x2, y2 = f["box"]
        w, h = img["orig_width"], img["orig_height"]
        if not (-0.5 <= x1 < x2 <= w + 0.5 and -0.5 <= y1 < y2 <= h + 0.5):
            out_of_bounds.append((f["image_id"], f["face_idx"], [round(v, 1) for v in f["box"]], (w, h)))

    # A rerun of the same command finds every shard committed and processes nothing.
    assert main(nga_local_run["args"]) == 0
    c2 = _counts(storage.join(pre, "summary.json"))
    assert c2["shards_skipped"] == c2["shards"] == c["shards"] and c2["rows_processed_now"] == 0
    assert c2["faces"] == c["faces"] and c2["processed"] == c["processed"]

    # Boxes are in original-image pixels and must lie inside the image (checked last so that the
    # rerun above is exercised either way).
    assert not out_of_bounds, f"face boxes outside the original image: {out_of_bounds}"


@pytest.mark.slow
def test_pipeline_s3_subset_matches_local(nga_local_run, shared_data, tmp_path, s3_bucket, s3_endpoint,
                                          s3_storage, ray_session):
    from conftest import upload_dir

    images_dir = _nga_images(shared_data)
    local = tmp_path / "subset"
    local.mkdir()
    for image_id in S3_SUBSET:
        shutil.copyfile(images_dir / f"{image_id}.jpg", local / f"{image_id}.jpg")
    upload_dir(local, s3_bucket, "nga", s3_endpoint)
    base = f"s3://{s3_bucket}"
    assert main(["ingest", "folder", "--images", f"{base}/nga", "--out", f"{base}/manifest",
                 "--s3-endpoint", s3_endpoint]) == 0
    assert main(["preprocess", "--manifest", f"{base}/manifest", "--out", f"{base}/pre", "shard_rows=6",
                 f"storage.s3_endpoint={s3_endpoint}"]) == 0

    c = _counts(f"{base}/pre/summary.json", s3_storage)
    n = len(S3_SUBSET)
    assert c["manifest_rows"] == n == c["processed"] + c["quarantined"] and c["quarantined"] == 0
    assert c["faces"] > 0 and c["shards"] == -(-n // 6) == 2
    s3_faces = _faces_by_image(f"{base}/pre", s3_storage)
    assert set(PORTRAITS) & set(S3_SUBSET) <= set(s3_faces)
    # Same images, same face counts as the local run of the same files (faces are per image, so
    # the 128-image local run restricted to this subset is the local run of the subset).
    local_faces = {k: v for k, v in _faces_by_image(nga_local_run["pre"]).items() if k in set(S3_SUBSET)}
    assert s3_faces == local_faces
    images = storage.read_parquet(f"{base}/pre/images", s3_storage, columns=["image_id", "uri"]).to_pylist()
    assert sorted(r["image_id"] for r in images) == sorted(S3_SUBSET)
    assert all(r["uri"].startswith(f"s3://{s3_bucket}/nga/") for r in images)


LABELS = Path(__file__).parent / "fixtures" / "nga_faces.csv"  # faces labelled by eye, all 128 images


@pytest.mark.slow
def test_evaluate_faces_on_the_labelled_nga_images(nga_local_run, tmp_path):
    """``artextract evaluate faces`` on the hand labels (tests/fixtures/nga_faces.csv). The floors are
    a few images below the default detector on each half (docs/benchmarks.md): a detector change that loses
    faces fails here."""
    import json

    # MTCNN at its old defaults measured 0.756 (dev) and 0.558 (test) prominent-image recall; the default
    # (RetinaFace, identity + grey-half, calibrated, min_prob 0.45) 0.951 and 0.860 (docs/benchmarks.md,
    # Faces). Floors sit three images below the default: dev has 41 such images, test 43. Faceless false
    # positives: 0 of 13 (dev) and 2 of 19 (test: a dog's face, a moon); the bound allows one more.
    for split, floor, fp in (("dev", 0.88, 0.08), ("test", 0.76, 0.16)):
        out = tmp_path / split
        assert main(["evaluate", "faces", "--preprocess", nga_local_run["pre"], "--labels", str(LABELS),
                     "--split", split, "--out", str(out)]) == 0
        m = json.loads((out / "metrics.json").read_text())
        print(split, {k: m[k] for k in ("images", "recall", "precision", "ap50", "prominent_image_recall",
                                        "faceless_fp_rate")}, {k: v["recall"] for k, v in m["recall_by"].items()})
        assert m["images_missing"] == 0 and m["images"] == {"dev": 57, "test": 71}[split]
        assert m["prominent_image_recall"] >= floor and m["faceless_fp_rate"] <= fp
        assert m["precision"] >= 0.9  # what the calibrated score keeps at >= min_prob is nearly always a face
        assert (out / "errors.png").exists() and (out / "report.html").exists()
