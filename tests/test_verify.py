"""Geometric verification (stages/verify.py): copies verify, look-alikes do not, re-ranking is local
to the shortlist; the near-duplicate protocol reports verified metrics."""
from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from artextract.stages.verify import GeometricVerifier


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _crops() -> dict[str, Image.Image]:
    """Three different 160 px pictures (a face, a cat, coffee): the originals."""
    return {"face": Image.fromarray(skimage.data.astronaut()).crop((140, 20, 320, 200)).resize((160, 160)),
            "cat": Image.fromarray(skimage.data.chelsea()).crop((80, 20, 300, 240)).resize((160, 160)),
            "coffee": Image.fromarray(skimage.data.coffee()).crop((150, 50, 450, 350)).resize((160, 160))}


def _reproduce(im: Image.Image) -> Image.Image:
    """A hard reproduction: 75% crop off-centre, 8 degree rotation, mirror, greyscale, rescale to 112."""
    w, h = im.size
    out = im.crop((int(0.2 * w), int(0.1 * h), int(0.95 * w), int(0.85 * h))).rotate(8, resample=Image.BILINEAR)
    return ImageOps.grayscale(ImageOps.mirror(out)).resize((112, 112))


@pytest.fixture(scope="module")
def images():
    crops = _crops()
    return ({k: _jpeg(v) for k, v in crops.items()}, {k: _jpeg(_reproduce(v), 40) for k, v in crops.items()})


def test_a_reproduction_verifies_and_other_pictures_do_not(images):
    originals, copies = images
    v = GeometricVerifier()
    for name, copy in copies.items():
        q = v.query_features(copy)
        counts = {o: v.best_inliers(q, v.features(data)) for o, data in originals.items()}
        assert counts[name] >= v.min_inliers, (name, counts)
        assert all(c < v.min_inliers for o, c in counts.items() if o != name), (name, counts)
    # the copies are mirrored: the mirrored query's features carry the match (several times the
    # plain view's count, which is chance level), and the verifier takes the better view
    for name, copy in copies.items():
        ref = v.features(originals[name])
        plain, mirrored = v.inliers(v.features(copy), ref), v.inliers(v.features(copy, mirrored=True), ref)
        assert mirrored >= 4 * plain, (name, plain, mirrored)
        assert v.best_inliers(v.query_features(copy), ref) == mirrored
    assert GeometricVerifier(mirror=False).best_inliers(
        GeometricVerifier(mirror=False).query_features(copies["cat"]), v.features(originals["cat"])) < v.min_inliers


def test_flat_image_has_no_features_and_never_verifies():
    v = GeometricVerifier()
    flat = _jpeg(Image.new("RGB", (64, 64), (120, 90, 60)))
    assert len(v.features(flat)) == 0
    assert v.inliers(v.features(flat), v.features(flat)) == 0


def test_rerank_moves_verified_originals_up_within_the_shortlist(images):
    originals, copies = images
    names = list(originals)
    refs = [originals[n] for n in names]
    queries = [copies["face"], copies["cat"]]
    # embedding scores that put each copy's own original last (rank 3 of 3)
    scores = np.array([[0.1, 0.9, 0.8],    # face copy: own original (0) last
                       [0.7, 0.2, 0.9]])   # cat copy: own original (1) last
    v = GeometricVerifier()
    new, inl = v.rerank(scores, queries, refs, top_k=3)
    assert new[0].argmax() == 0 and new[1].argmax() == 1
    assert inl[0, 0] >= v.min_inliers and inl[1, 1] >= v.min_inliers
    # unverified candidates keep their score and order
    assert new[0, 1] == scores[0, 1] and new[0, 2] == scores[0, 2]
    # a shortlist of 2 never looks at the third candidate: the face copy's original stays where it was
    new2, inl2 = v.rerank(scores, queries, refs, top_k=2)
    assert inl2[0, 0] == -1 and new2[0, 0] == scores[0, 0] and new2[0].argmax() == 1


def test_near_duplicate_protocol_reports_verified_metrics(images):
    from artextract.config import NearDuplicateConfig
    from artextract.eval.neardup import near_duplicate

    originals, _ = images
    cfg = NearDuplicateConfig(enabled=True, model="untrained:resnet18", images=3, copies=2, image_size=64,
                              copy_size=160, verify_top_k=3)
    out = near_duplicate(list(originals.values()), cfg, seed=0)
    assert (out["image_size"], out["copy_size"], out["copies"]) == (64, 160, 6)
    assert {"verified_recall@1", "verified_recall@5", "verified_mrr", "own_inliers_median",
            "other_inliers_max", "verify_s"} <= set(out)
    # every copy verifies against its own original (and only it), so ranks can only improve
    assert out["verified_mrr"] >= out["mrr"] - 1e-9
    assert out["verified_recall@1"] >= out["recall@1"]
