"""cluster/: every manifest parses, launcher YAMLs satisfy Ray's own schema, every job and config
they name exists; and the jobs really run when submitted to a Ray head over HTTP (the dashboard's
job API, as `ray job submit` does), with the repo uploaded as the job's working_dir (the head:
tests/rayhead.py). This module never calls `ray.init` in the pytest process.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from rayhead import CLUSTER, REPO, _head, _submit, _wait, tiny_classifier_inputs


def _cluster_yamls() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _is_launcher(doc: object) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


def test_cluster_manifests_parse_validate_and_reference_real_files():
    files = _cluster_yamls()
    names = {p.relative_to(CLUSTER).as_posix() for p in files}
    assert {"aws.yaml", "gcp.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml",
            "kuberay/cronjob-reindex.yaml", "kuberay/rayjob-reindex.yaml"} <= names
    launchers = []
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        launchers += [(path, d) for d in docs if _is_launcher(d)]
        for d in docs:
            if isinstance(d, dict) and "kind" in d:  # Kubernetes objects
                assert d.get("apiVersion") and d.get("metadata", {}).get("name"), path
    assert {p.name for p, _ in launchers} == {"aws.yaml", "gcp.yaml"}

    import ray  # the package only, for its bundled schema; no ray.init here

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema comes with ray[default]
        jsonschema = None
    if jsonschema and schema_path.is_file():
        schema = json.loads(schema_path.read_text())
        for path, doc in launchers:
            jsonschema.validate(doc, schema)
            assert doc["head_node_type"] in doc["available_node_types"], path
    for path, doc in launchers:  # `ray up` runs from the repo root; what it mounts must exist there
        for local in doc.get("file_mounts", {}).values():
            assert (REPO / local).exists(), f"{path}: file_mounts source {local} missing"
    try:  # what `ray up` runs before touching the cloud: defaults filled in, then validated
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # pragma: no cover - private API moved
        prepare_config = None
    if prepare_config:
        for path, doc in launchers:
            validate_config(prepare_config(doc))

    # Ray rejects empty env var values in a runtime_env; everything else must be a non-empty string.
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".venv", "runs", ".git", "docs"} <= set(env["excludes"])
    for k, v in env.get("env_vars", {}).items():
        assert isinstance(v, str) and v, f"runtime_env env_vars.{k} must be a non-empty string"

    # The nightly CronJob runs cluster/kuberay/run_rayjob.py (tests/test_run_rayjob.py) on the RayJob
    # manifest it names, in the artextract image; KubeRay 1.1 has no RayJob spec.backoffLimit.
    cron = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "cronjob-reindex.yaml").read_text())
            if d and d.get("kind") == "CronJob"][0]
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[1] == "/home/ray/artextract/cluster/kuberay/run_rayjob.py" and "kubectl" not in container["image"]
    manifest = command[command.index("--manifest") + 1].replace("/home/ray/artextract/", "")
    assert (REPO / manifest).is_file() and (REPO / command[1].replace("/home/ray/artextract/", "")).is_file()
    for path in files:
        for d in yaml.safe_load_all(path.read_text()):
            if isinstance(d, dict) and d.get("kind") == "RayJob":
                assert d["spec"]["entrypoint"].startswith("python jobs/"), path
                assert "backoffLimit" not in d["spec"], f"{path}: KubeRay 1.1 rejects spec.backoffLimit"
                assert isinstance(yaml.safe_load(d["spec"]["runtimeEnvYAML"]), dict), path

    # Every job script and config named anywhere under cluster/ exists in the repo.
    text = "\n".join(p.read_text() for p in files)
    jobs = set(re.findall(r"python3?\s+(jobs/[\w\-]+\.py)", text))
    configs = set(re.findall(r"(configs/[\w\-]+\.ya?ml)", text))
    assert jobs and configs
    missing = sorted(j for j in jobs | configs if not (REPO / j).is_file())
    assert not missing, f"cluster/ references files that do not exist: {missing}"


# Which jobs/ entry point runs each shipped config.
ENTRY_POINTS = {"embed": "embed_collection.py", "folder_ingest": "ingest.py folder", "nga_ingest": "ingest.py nga",
                "wikiart_ingest": "ingest.py wikiart", "index_build": "build_index.py", "preprocess": "preprocess.py",
                "classifier": "train_classifier.py", "similarity": "train_similarity.py",
                "neardup": "train_similarity.py",
                "reindex": "reindex.py"}


def _run_entry_point(script_and_args: list[str], capsys) -> tuple[int, str]:
    """``python jobs/<script> <args> --check`` in this process (argument parsing + config validation)."""
    import runpy

    script, *args = script_and_args
    module = runpy.run_path(str(REPO / script))
    rc = module["main"]([*args, "--check"])
    return rc, capsys.readouterr().err


def test_every_entry_point_checks_its_shipped_configs_and_every_rayjob_is_complete(monkeypatch, capsys):
    """Every jobs/*.py with every shipped config validates, or names exactly the settings it still
    needs; every RayJob entrypoint (what a cluster runs as shipped) validates with nothing missing."""
    monkeypatch.chdir(REPO)  # RayJobs run in the repository root (working_dir), with relative paths
    scripts = {p.name for p in (REPO / "jobs").glob("*.py")}
    covered = set()
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        if cfg.name == "demo.yaml":
            continue  # `artextract demo`, no job script
        key = next(k for k in sorted(ENTRY_POINTS, key=len, reverse=True) if k in cfg.stem)
        script, *sub = ENTRY_POINTS[key].split()
        covered.add(script)
        rc, err = _run_entry_point([f"jobs/{script}", *sub, "--config", f"configs/{cfg.name}"], capsys)
        assert rc == 0 or (rc == 2 and "missing setting" in err), f"{script} --config {cfg.name}: {err}"
        if rc == 2:
            assert err.count("\n") == 1 and "=" in err, err  # one line naming what to set
    assert covered == scripts, f"job scripts without a shipped config: {scripts - covered}"
    for path in sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml")):
        job = yaml.safe_load(path.read_text())
        argv = job["spec"]["entrypoint"].split()
        assert argv[0] == "python", path
        rc, err = _run_entry_point(argv[1:], capsys)
        assert rc == 0, f"{path.name}: {' '.join(argv)} does not validate as shipped: {err}"


def test_docs_operations_commands_validate_and_name_real_files(monkeypatch, capsys):
    """docs/operations.md as a user reads it: every repo path it names exists, and every
    `python jobs/...` command in its code blocks parses and validates (`--check`) as written, or,
    where the text shows it failing, fails naming the missing settings."""
    import shlex

    text = (REPO / "docs" / "operations.md").read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:configs|jobs|cluster)/[\w./-]+\.(?:ya?ml|py)|cluster/Dockerfile)", text))
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert paths and not missing, f"docs/operations.md names files that do not exist: {missing}"
    monkeypatch.chdir(REPO)
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if "python jobs/" in cmd:
                commands.append(cmd[cmd.index("python jobs/"):])
    assert len(commands) >= 8, commands
    for cmd in commands:
        argv = [a for a in shlex.split(cmd)[1:] if a != "--check"]
        rc, err = _run_entry_point(argv, capsys)
        expected_to_fail = "wikiart_classifier.yaml" in cmd  # the docs show it naming data.input= / out=
        assert (rc == 2 and "missing settings" in err) if expected_to_fail else rc == 0, f"{cmd}: {err}"


# ----------------------------------------------------------------------------- real head

@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head without an autoscaler; yields a JobSubmissionClient."""
    with _head() as (client, _, _):
        yield client


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory):
    from artextract.samples import write_collection

    root = tmp_path_factory.mktemp("cluster")
    expected = write_collection(root / "images")
    return root, expected


@pytest.mark.slow
def test_submitted_ingest_and_preprocess_run_on_the_head(ray_head, sample_images):
    root, expected = sample_images
    manifest, pre = root / "manifest", root / "pre"

    job = _submit(ray_head, f"jobs/ingest.py folder --images {root / 'images'} --out {manifest}")
    status, wall = _wait(ray_head, job)
    print(f"[ray head] ingest job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", ray_head.get_job_logs(job)[-4000:]
    assert sorted(manifest.glob("part-*.parquet"))
    ingest = json.loads((manifest / "summary.json").read_text())["counts"]
    assert ingest["manifest_rows"] == len(expected)

    job = _submit(ray_head, f"jobs/preprocess.py --manifest {manifest} --out {pre} shard_rows=8")
    status, wall = _wait(ray_head, job)
    logs = ray_head.get_job_logs(job)
    print(f"[ray head] preprocess job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", logs[-4000:]
    counts = json.loads((pre / "summary.json").read_text())["counts"]
    assert counts["manifest_rows"] == len(expected)
    assert counts["processed"] + counts["quarantined"] == counts["manifest_rows"]
    assert counts["processed"] > 0 and counts["quarantined"] > 0  # the sample has both kinds
    for sub in ("images", "quarantine"):
        assert sorted((pre / sub).glob("part-*.parquet")), sub
    # The driver attached to our head (RAY_ADDRESS set by the job API), not to a Ray of its own.
    assert ray_head.get_job_info(job).driver_info is not None


@pytest.mark.slow
def test_submitted_classifier_training_with_two_workers(ray_head, tmp_path):
    """jobs/train_classifier.py as a Ray job with the pretrained recipe (configs/wikiart_classifier_pretrained
    .yaml, weights from a torchvision MobileNetV2 file): Ray Train with 2 DDP workers fed by the streaming
    Ray Data loader (augmentation, mixup/cutmix, BatchNorm training), a frozen first epoch (DDP must
    tolerate the backbone's missing gradients), EMA weights in the checkpoint; then evaluate."""
    import math

    manifest, weights = tiny_classifier_inputs(tmp_path)
    run = tmp_path / "run"
    job = _submit(ray_head, f"jobs/train_classifier.py --config {REPO / 'configs' / 'wikiart_classifier_pretrained.yaml'} "
                            f"--input {manifest} --out {run} --workers 2 model.weights={weights} "
                            "data.image_size=32 model.reduce_channels=16 model.hidden=8 train.batch_size=8 "
                            "train.epochs=2 train.cpus_per_worker=0.5 data.decode_cpus=0.25 data.loader=ray_data "
                            "data.augment=true train.freeze_bn=false")
    status, wall = _wait(ray_head, job, timeout=360)
    logs = ray_head.get_job_logs(job)
    print(f"[ray head] train_classifier job {status} in {wall:.1f} s")
    assert status == "SUCCEEDED", logs[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counts"]["epochs_completed"] == 2 and (run / "checkpoints" / "best.pt").exists()
    assert "world_rank=1" in logs  # the second DDP worker really ran
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and all(math.isfinite(h["train_loss"]) for h in hist)
    assert (run / "splits.parquet").exists() and (run / "config.resolved.yaml").exists()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["meta"]["model"]["backbone"] == "mobilenet_v2" and "train_state_dict" in state  # EMA on
    from artextract.cli import main

    assert main(["evaluate", "classifier", "--run", str(run), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "report.html").exists()


@pytest.mark.slow
def test_submitted_job_with_a_bad_key_fails_and_says_why(ray_head, sample_images):
    root, _ = sample_images
    manifest = root / "manifest"
    if not manifest.is_dir():  # run alone: make a manifest without the head
        from artextract.config import IngestFolderConfig
        from artextract.ingest import folder

        folder.run(IngestFolderConfig(images=str(root / "images"), out=str(manifest)))
    job = _submit(ray_head, f"jobs/preprocess.py --manifest {manifest} --out {root / 'bad'} not_a_key=1")
    status, wall = _wait(ray_head, job)
    print(f"[ray head] bad-key job {status} in {wall:.1f} s")
    logs = ray_head.get_job_logs(job)
    assert status == "FAILED", logs[-4000:]
    assert "unknown key 'not_a_key'" in logs, logs[-4000:]
    assert ray_head.get_job_info(job).driver_exit_code == 2
    assert not (root / "bad" / "summary.json").exists()



@pytest.mark.slow
def test_gpu_job_on_a_head_without_an_autoscaler_fails_at_once(ray_head, sample_images):
    """A plain `ray start --head` (no autoscaling config: Ray's read-only monitor) can never add a GPU
    node: the shipped GPU config fails in seconds, naming its request, instead of waiting 15 min."""
    root, _ = sample_images
    job = _submit(ray_head, f"jobs/preprocess.py --config {REPO / 'configs' / 'nga_preprocess_gpu.yaml'} "
                            f"--manifest {root / 'manifest'} --out {root / 'gpu-pre'}")
    status, wall = _wait(ray_head, job, timeout=120)
    logs = ray_head.get_job_logs(job)
    print(f"[ray head] GPU job without GPUs {status} in {wall:.1f} s")
    assert status == "FAILED" and wall < 60, logs[-3000:]
    assert "each asks for {CPU: 4, GPU: 1}" in logs and "no autoscaler can add one" in logs, logs[-3000:]
