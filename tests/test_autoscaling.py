"""The cloud-GPU path without a cloud: Ray's fake multi-node autoscaler (a CPU-only head, a `gpu`
worker type {CPU: 2, GPU: 1} and a `cpu` one {CPU: 4}, both at min_workers 0, nodes started as
local processes) takes our jobs
through the Jobs API as a cloud head would. A CPU job (the laptop config) must never make it launch
a GPU node; the embed job and a one-step training with the shipped GPU configs must: they declare
a GPU per actor/worker, the autoscaler starts the `gpu` node from zero, and the actors and workers
run there. The fake node has no CUDA, so each stage says so and computes on its CPU.

Also: a GPU job on a cluster with no autoscaler fails at once, naming what it asked for."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from rayhead import REPO, _head, _submit, _wait, head_log, tiny_classifier_inputs

pytestmark = pytest.mark.slow
# A CPU type too, as every cloud config has (cpu_preprocess): a CPU job's pending tasks make the
# autoscaler add CPUs, and where CPU nodes cannot hold the demand it adds GPU nodes for their CPUs.
NODE_TYPES = {"gpu": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 200_000_000},
                      "node_config": {}, "min_workers": 0, "max_workers": 1},
              "cpu": {"resources": {"CPU": 4, "object_store_memory": 200_000_000},
                      "node_config": {}, "min_workers": 0, "max_workers": 2}}


@pytest.fixture(scope="module")
def autoscaling_head():
    with _head(extra=(), autoscaling=NODE_TYPES) as head:
        yield head


def _state(head, what: str) -> list[dict]:
    """Ray's state API (nodes, actors) through the dashboard, as `ray list` reads it."""
    _, url, headers = head
    req = urllib.request.Request(f"{url}/api/v0/{what}?detail=1&limit=1000", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]["result"]["result"]


def _gpu_nodes(head) -> list[dict]:
    return [n for n in _state(head, "nodes") if n["state"] == "ALIVE" and n["resources_total"].get("GPU", 0) > 0]


def _actors_asking_gpu(head) -> list[dict]:
    # In a placement group (Ray Train's workers) the request reads GPU_group_<bundle>_<group id>.
    def asks(a: dict) -> bool:
        wants = a.get("required_resources") or {}
        return any(v and (k == "GPU" or k.startswith("GPU_group_")) for k, v in wants.items())

    return [a for a in _state(head, "actors") if asks(a)]


@pytest.fixture(scope="module")
def preprocessed(autoscaling_head, tmp_path_factory):
    """The CPU half: ingest + preprocess with the laptop defaults. No GPU requested, none launched."""
    from artextract.samples import write_collection

    client = autoscaling_head[0]
    root = tmp_path_factory.mktemp("autoscale")
    write_collection(root / "images")
    job = _submit(client, f"jobs/ingest.py folder --images {root / 'images'} --out {root / 'manifest'}")
    assert _wait(client, job)[0] == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    job = _submit(client, f"jobs/preprocess.py --config {REPO / 'configs' / 'nga_preprocess.yaml'} "
                          f"--manifest {root / 'manifest'} --out {root / 'pre'} shard_rows=8")
    status, wall = _wait(client, job)
    print(f"[autoscaling] CPU preprocess job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    time.sleep(3)  # two autoscaler rounds (AUTOSCALER_UPDATE_INTERVAL_S=1) to react to any demand
    assert not _gpu_nodes(autoscaling_head), "a CPU-only job made the autoscaler launch a GPU node"
    assert not _actors_asking_gpu(autoscaling_head)
    return root


def test_gpu_embed_job_launches_a_gpu_node_from_zero_and_runs_there(autoscaling_head, preprocessed):
    client = autoscaling_head[0]
    assert not _gpu_nodes(autoscaling_head)
    out = preprocessed / "emb"
    # The shipped GPU config as is, but for where the data is and what fits the fake node (2 CPUs).
    job = _submit(client, f"jobs/embed_collection.py --config {REPO / 'configs' / 'embed_gpu.yaml'} "
                          f"--input {preprocessed / 'pre'} --out {out} --model untrained:resnet18 "
                          "image_size=64 batch_size=8 actors=1 resources.embed.num_cpus=1 "
                          "resources.read.num_cpus=0.5")
    # If the gpu node never comes, the autoscaler's log says why (seen once on a loaded CI machine).
    status, wall = _wait(client, job, diagnose=lambda: head_log(autoscaling_head[1], "monitor.log"))
    logs = client.get_job_logs(job)
    print(f"[autoscaling] GPU embed job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", logs[-4000:] + head_log(autoscaling_head[1], "monitor.log")
    gpu = _gpu_nodes(autoscaling_head)
    assert len(gpu) == 1, "the autoscaler did not launch the gpu node type"
    ran = [a for a in _actors_asking_gpu(autoscaling_head) if "EmbedStage" in (a.get("repr_name") or a["class_name"])
           or "MapWorker" in a["class_name"]]
    assert ran and {a["node_id"] for a in ran} == {gpu[0]["node_id"]}, ran
    assert "given GPU" in logs and "running on the CPU" in logs  # the fake node has no CUDA: said so
    counts = json.loads((out / "summary.json").read_text())["counts"]
    assert counts["vectors_out"] == counts["rows_in"] > 0


def test_gpu_training_config_asks_for_gpu_workers(autoscaling_head, preprocessed, tmp_path):
    """One step of configs/wikiart_classifier_gpu.yaml: its worker asks for a GPU and runs on the gpu
    node (gloo: the fake node has no CUDA for NCCL)."""
    client = autoscaling_head[0]
    manifest, weights = tiny_classifier_inputs(tmp_path)
    run = tmp_path / "run"
    job = _submit(client, f"jobs/train_classifier.py --config {REPO / 'configs' / 'wikiart_classifier_gpu.yaml'} "
                          f"--input {manifest} --out {run} --workers 1 model.weights={weights} "
                          "train.cpus_per_worker=1 train.backend=gloo "
                          "train.batch_size=8 train.epochs=1 train.max_steps=1 data.image_size=32 "
                          "model.reduce_channels=16 model.hidden=8")
    status, wall = _wait(client, job, timeout=360, diagnose=lambda: head_log(autoscaling_head[1], "monitor.log"))
    logs = client.get_job_logs(job)
    print(f"[autoscaling] GPU training job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", logs[-4000:] + head_log(autoscaling_head[1], "monitor.log")
    gpu = _gpu_nodes(autoscaling_head)
    assert len(gpu) == 1
    workers = [a for a in _actors_asking_gpu(autoscaling_head) if "RayTrainWorker" in a["class_name"]]
    assert workers, [(a["class_name"], a.get("required_resources")) for a in _state(autoscaling_head, "actors")]
    assert {a["node_id"] for a in workers} == {gpu[0]["node_id"]}, workers
    assert "training on the CPU" in logs
    assert json.loads((run / "summary.json").read_text())["counts"]["steps"] >= 1


def test_gpu_job_without_an_autoscaler_fails_at_once(ray_session):
    """The session's local Ray has no GPU and no autoscaler: no waiting, one clear error."""
    from artextract.config import RayConfig, Resources
    from artextract.pipelines.ray_env import ResourcesUnavailable, capacity

    ray = ray_session
    t0 = time.perf_counter()
    with pytest.raises(ResourcesUnavailable, match=r"embed actors: each asks for \{CPU: 1, GPU: 1\}.*"
                                                   r"no autoscaler"):
        with capacity(ray, RayConfig(), Resources(num_gpus=1).bundle(), 2, "embed actors"):
            pytest.fail("ran without a GPU")
    assert time.perf_counter() - t0 < 10
    with capacity(ray, RayConfig(), Resources(num_cpus=0.5).bundle(), 2, "cpu actors"):
        pass  # what the laptop has: no wait, no request
