"""Shared fixtures: one local Ray per session, a real HTTP S3 endpoint (moto's server on
127.0.0.1), test images made on the fly, and the optional real data in ../shared/data."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Fake credentials for the moto server only; a test scans outputs to prove they never leak.
TEST_KEY_ID = "AKIATESTARTEXTRACT01"
TEST_SECRET = "artextract-test-secret-Zq9vX2Lr"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server over real HTTP on 127.0.0.1 (fixtures/s3.py, shared with the benchmarks); AWS
    env vars point the standard chain at it."""
    from fixtures.s3 import LocalS3

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED")}
    with LocalS3(TEST_KEY_ID, TEST_SECRET) as s3:
        os.environ.update(s3.env)
        yield s3.endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh empty bucket on the moto server; yields its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture()
def s3_storage(s3_endpoint):
    """A StorageConfig pointing at the moto server."""
    from artextract.config import StorageConfig

    return StorageConfig(s3_endpoint=s3_endpoint, s3_region="us-east-1", s3_max_attempts=2)


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole test session (2 CPUs, like CI).

    Started after the S3 test server so its workers inherit the AWS environment, as workers on a
    cluster node inherit that node's credential chain (without it, the SDK sends unsigned requests).
    """
    import ray

    from artextract.config import RayConfig
    from artextract.pipelines.ray_env import init_ray

    init_ray(RayConfig(num_cpus=2))  # the jobs' own local-Ray start (no RAY_ADDRESS in tests)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_full(tmp_path_factory) -> tuple[Path, str]:
    """``artextract demo`` run ONCE for the session, every stage on (tiny training budgets), as the
    README gives it: a new process with its own local Ray, the default relative ``--out runs/demo``,
    from a fresh working directory. Returns (output dir, everything it printed: stdout + stderr).
    test_demo checks the run and its console, test_paths the relative paths; the preprocess and
    embed tests read its ``preprocess/`` output instead of preprocessing the collection again."""
    import subprocess
    import sys

    cwd = tmp_path_factory.mktemp("demo-cwd")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ARTEXTRACT_"))}
    proc = subprocess.run([sys.executable, "-m", "artextract", "demo", "classifier_epochs=2", "similarity_epochs=1"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-4000:]
    return cwd / "runs" / "demo", printed


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


def faces_and_embeddings(uris: dict[str, str], root: Path, model: str, image_size: int, dim: int,
                         whole: Callable[[str], bool] = lambda image_id: True,
                         image_columns: tuple[str, ...] = ("image_id", "whole_jpeg")):
    """What preprocess + embed make of ``uris`` (image_id -> file), by their Ray-free stages in this
    process: ``root/pre`` (faces/, images/ with ``image_columns``) and ``root/emb`` (one vector per
    face, plus the whole painting of the images ``whole`` accepts, and the embed run record).
    Returns the FaceStage rows (image_id, n_faces, whole_jpeg, ...)."""
    from artextract.core import storage
    from artextract.config import DecodeConfig, EmbedConfig, FacesConfig, StorageConfig, save_resolved
    from artextract.stages.embed import EmbedStage
    from artextract.stages.faces import FaceStage
    from artextract.stages.read import ReadDecodeStage
    from artextract.stages.write import explode_faces

    batch = ReadDecodeStage(DecodeConfig(), StorageConfig())(
        {"image_id": np.array(list(uris), object), "uri": np.array(list(uris.values()), object)})
    rows = FaceStage(FacesConfig(device="cpu"))(batch)
    faces = explode_faces(rows["image_id"], rows["faces"], 160)
    pre, emb = root / "pre", root / "emb"
    storage.write_parquet(str(pre / "faces" / "part-00000.parquet"), faces)
    storage.write_parquet(str(pre / "images" / "part-00000.parquet"), rows.select(list(image_columns)))
    items = list(zip(*(faces[c].to_pylist() for c in ("image_id", "face_idx", "crop_jpeg"))))
    items += [(i, -1, j) for i, j in zip(rows["image_id"].to_pylist(), rows["whole_jpeg"].to_pylist()) if whole(i)]
    stage = EmbedStage(model, image_size=image_size, dim=dim, seed=0, device="cpu")
    storage.write_parquet(str(emb / "part-00000.parquet"), stage(
        {"image_id": [i for i, _, _ in items], "face_idx": [f for _, f, _ in items], "jpeg": [j for *_, j in items]}))
    save_resolved(EmbedConfig(input=str(pre), out=str(emb), model=model, image_size=image_size, dim=dim), str(emb))
    return rows


def upload_dir(local: Path, bucket: str, prefix: str, endpoint: str) -> None:
    """Copy a local directory tree to s3://bucket/prefix over HTTP (boto3)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
