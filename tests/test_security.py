"""Security (issue 7 item 5): safe deserialisation (torch weights_only, yaml safe_load), a deliberate
PIL decompression-bomb limit, no credential in any log or output, local URIs confined to
``storage.local_root``, and servers bound to loopback by default.

The source scans are AST-based and check themselves on a bad snippet, so they cannot pass vacuously.
"""
from __future__ import annotations

import ast
import functools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from PIL import Image
from pydantic import BaseModel, ValidationError

from artextract import config as config_pkg
from artextract import manifest, samples
from artextract.core import storage
from fixtures import fuzz
from artextract.cli import main
from artextract.config import ConfigError, DecodeConfig, PreprocessConfig, StorageConfig, load_config, save_resolved
from artextract.stages.decode import Quarantine, configure_pil, decode

PACKAGE = Path(__file__).resolve().parents[1] / "artextract"


@functools.lru_cache(maxsize=1)
def _sources() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(PACKAGE.parent)), ast.parse(p.read_text(), str(p)))
            for p in sorted(PACKAGE.rglob("*.py"))]


def _dotted(node: ast.AST) -> str:
    """'torch.load' for ``torch.load``; '' for calls on anything but plain names and attributes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


# --- deserialisation -------------------------------------------------------------------------------

def unsafe_torch_loads(tree: ast.Module) -> list[int]:
    """Lines of ``torch.load(...)`` calls (or ``load`` imported from torch) without a literal
    ``weights_only=True``."""
    local_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module == "torch" for a in n.names if a.name == "load"}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (_dotted(node.func) == "torch.load" or _dotted(node.func) in local_names):
            kw = {k.arg: k.value for k in node.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                bad.append(node.lineno)
    return bad


def yaml_loads(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, name) of every ``yaml.*load*`` call and every use of a non-safe yaml Loader class."""
    found = []
    for node in ast.walk(tree):
        name = _dotted(node.func) if isinstance(node, ast.Call) else ""
        if name.startswith("yaml.") and "load" in name.lower():
            found.append((node.lineno, name))
        if isinstance(node, ast.Attribute) and _dotted(node) in (
                "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader"):
            found.append((node.lineno, _dotted(node)))
    return found


def test_scanners_bite_on_bad_code():
    bad = ast.parse("import torch\nfrom torch import load as L\nimport yaml\n"
                    "torch.load(f)\ntorch.load(f, weights_only=False)\nL(f)\ntorch.load(f, weights_only=True)\n"
                    "yaml.load(s, Loader=yaml.Loader)\nyaml.unsafe_load(s)\nyaml.safe_load(s)\n")
    assert unsafe_torch_loads(bad) == [4, 5, 6]
    unsafe = [n for _, n in yaml_loads(bad) if n not in ("yaml.safe_load", "yaml.safe_load_all")]
    assert sorted(unsafe) == ["yaml.Loader", "yaml.load", "yaml.unsafe_load"]


def test_every_torch_load_is_weights_only():
    offenders, seen = [], 0
    for path, tree in _sources():
        seen += sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func) == "torch.load")
        offenders += [f"{path}:{line}" for line in unsafe_torch_loads(tree)]
    assert seen >= 3, "the scan found no torch.load calls at all: is it looking in the right place?"
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


def test_every_yaml_load_is_safe_load():
    calls = [(path, line, name) for path, tree in _sources() for line, name in yaml_loads(tree)]
    assert any(name == "yaml.safe_load" for _, _, name in calls), "the scan found no yaml loads at all"
    unsafe = [f"{p}:{line} {n}" for p, line, n in calls if n not in ("yaml.safe_load", "yaml.safe_load_all")]
    assert unsafe == [], f"non-safe YAML loading: {unsafe}"


class _Payload:
    """Unpickling this calls ``open(marker, 'w')``: the marker file appearing proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    from artextract.stages.embed import CHECKPOINT_FORMAT, load_model
    from artextract.train import checkpoint

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "task": "classifier", "config": {},
                "state_dict": {"w": _Payload(marker)}}, ckpt)
    # The payload is live: an unsafe load runs it.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        load_model(str(ckpt))
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a loadable training checkpoint"):
        checkpoint.load(str(ckpt), task="classifier")
    assert not marker.exists()


def test_yaml_config_with_python_tag_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"shard_rows: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    yaml.unsafe_load(evil)  # the payload is live
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.yaml"
    path.write_text(evil)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PreprocessConfig, str(path))
    with pytest.raises(ConfigError, match="not valid YAML"):  # and via key=value overrides
        load_config(PreprocessConfig, None, [f"out=!!python/object/apply:builtins.open ['{marker}', 'w']"])
    assert not marker.exists()


# --- decompression bombs ---------------------------------------------------------------------------

@pytest.fixture()
def restore_pil_limit():
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


def test_pil_bomb_limit_is_set_from_config(restore_pil_limit):
    from artextract.stages.read import ReadDecodeStage

    configure_pil(DecodeConfig())
    assert Image.MAX_IMAGE_PIXELS == DecodeConfig().max_pixels == 150_000_000
    ReadDecodeStage(DecodeConfig(max_pixels=12_345), StorageConfig())  # what each Ray worker does
    assert Image.MAX_IMAGE_PIXELS == 12_345
    # The configured limit, not PIL's default (~179 Mpx), decides: 200x200 = 40,000 px is a bomb
    # for PIL itself now (its check runs inside Image.open, before any pixel is decoded) ...
    img = samples.save(Image.new("RGB", (200, 200), (1, 2, 3)), "PNG")
    with pytest.raises(Quarantine) as q:
        decode(img, DecodeConfig())
    # (PIL raises above 2x its limit and warns between 1x and 2x; decode treats the warning as a bomb too)
    assert q.value.reason == "decompression_bomb" and f"limit of {2 * 12_345} pixels" in q.value.detail
    configure_pil(DecodeConfig())
    assert decode(img, DecodeConfig()).orig_width == 200
    # ... and decode() checks the declared size against its own config as well.
    with pytest.raises(Quarantine) as q:
        decode(img, DecodeConfig(max_pixels=30_000))
    assert q.value.reason == "decompression_bomb" and "> 30000 px" in q.value.detail


def test_bomb_sample_is_quarantined(restore_pil_limit):
    _, make, expected = samples.CASES["decompression_bomb"]
    assert expected == "decompression_bomb"
    cfg = DecodeConfig()
    configure_pil(cfg)
    for data in (make(), samples.png_header_only(100_000, 100_000)):
        with pytest.raises(Quarantine) as q:
            decode(data, cfg)
        assert q.value.reason == "decompression_bomb"


# --- credentials -----------------------------------------------------------------------------------

def _ray_log_files() -> list[Path]:
    import ray

    node = ray._private.worker._global_node  # no public API names the session's log directory
    return [p for p in Path(node.get_logs_dir_path()).rglob("*") if p.is_file()]


def test_credentials_never_in_logs_or_outputs(tmp_path, s3_bucket, s3_endpoint, s3_storage, ray_session,
                                              caplog, capfd):
    from conftest import TEST_KEY_ID, TEST_SECRET, upload_dir

    secrets = (TEST_KEY_ID.encode(), TEST_SECRET.encode())
    local = tmp_path / "imgs"
    picked = [it for it in fuzz.generate(len(fuzz.KINDS)) if it[2] in
              ("exif_rotated", "cmyk_jpeg", "truncated_jpeg", "random_bytes", "rgba_png", "tiff")]
    fuzz.write_tree(local, picked)
    upload_dir(local, s3_bucket, "in", s3_endpoint)
    base, ep = f"s3://{s3_bucket}", ["--s3-endpoint", s3_endpoint]
    out = tmp_path / "pre"
    caplog.set_level(logging.DEBUG)
    assert main(["-v", "ingest", "folder", "--images", f"{base}/in", "--out", f"{base}/manifest",
                 "include_all_files=true"] + ep) == 0
    # An object deleted after ingest: its S3 error message must reach the quarantine table redacted.
    # (Not via boto3: botocore's own DEBUG log prints the Authorization header with the key id.)
    storage.delete_file(f"{base}/in/{picked[0][0]}", s3_storage)
    assert main(["-v", "preprocess", "--manifest", f"{base}/manifest", "--out", str(out),
                 "faces.enabled=false"] + ep) == 0
    c = json.loads((out / "summary.json").read_text())["counts"]
    assert c["manifest_rows"] == len(picked) and c["quarantine_reasons"].get("missing") == 1

    std = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "preprocess:" in logs and std.out  # the capture really saw the job's output
    for text in (logs, std.out, std.err):
        assert TEST_KEY_ID not in text and TEST_SECRET not in text
    scanned = 0
    for p in [p for p in out.rglob("*") if p.is_file()] + _ray_log_files():
        data = p.read_bytes()
        assert secrets[0] not in data and secrets[1] not in data, p
        scanned += 1
    for info in storage.list_files(base, s3_storage):
        data = storage.read_bytes(f"s3://{info.path}", s3_storage)
        assert secrets[0] not in data and secrets[1] not in data, info.path
        scanned += 1
    assert {"summary.json", "config.resolved.yaml"} <= {p.name for p in out.iterdir()} and scanned > 10


def test_secrets_in_a_config_are_redacted_or_refused(tmp_path):
    from conftest import TEST_KEY_ID, TEST_SECRET

    # StorageConfig has no credential fields by design; a credential pasted into the endpoint URL is
    # refused at validation (it would reach boto's errors, tracebacks and repr), never echoed back.
    pasted = f"http://{TEST_KEY_ID}:{TEST_SECRET}@127.0.0.1:9000"
    with pytest.raises(ValidationError) as direct:
        StorageConfig(s3_endpoint=pasted)
    assert "must not carry credentials" in str(direct.value)
    assert TEST_KEY_ID not in str(direct.value) and TEST_SECRET not in str(direct.value)
    with pytest.raises(ConfigError) as err:
        load_config(PreprocessConfig, overrides=[f"storage.s3_endpoint={pasted}"])
    assert "storage.s3_endpoint" in str(err.value) and "AWS chain" in str(err.value)
    assert TEST_KEY_ID not in str(err.value) and TEST_SECRET not in str(err.value)
    cli = subprocess.run([sys.executable, "-m", "artextract", "preprocess", "--manifest", str(tmp_path),
                          "--out", str(tmp_path / "o"), "--s3-endpoint", pasted], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode != 0 and "must not carry credentials" in cli.stderr
    assert TEST_KEY_ID not in cli.stdout + cli.stderr and TEST_SECRET not in cli.stdout + cli.stderr
    plain = PreprocessConfig(storage=StorageConfig(s3_endpoint="https://minio.local:9000"))
    assert yaml.safe_load(Path(save_resolved(plain, str(tmp_path))).read_text())["storage"]["s3_endpoint"] \
        == "https://minio.local:9000"
    # Credential keys are unknown keys: refused, and the error names the key but not the value.
    path = tmp_path / "creds.yaml"
    path.write_text(f"storage:\n  aws_secret_access_key: {TEST_SECRET}\n")
    with pytest.raises(ConfigError) as err:
        load_config(PreprocessConfig, str(path))
    assert "storage.aws_secret_access_key" in str(err.value) and TEST_SECRET not in str(err.value)


# --- local root ------------------------------------------------------------------------------------

@pytest.fixture()
def rooted(tmp_path):
    """root/ with images and a symlink to outside/secret.jpg, which lies beside root/."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    jpg = samples.save(fuzz.base_image(np.random.default_rng(0)), "JPEG")
    (outside / "secret.jpg").write_bytes(jpg)
    for name in ("a.jpg", "b.jpg"):
        (root / "images" / name).write_bytes(jpg)
    (root / "images" / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "images" / "linkdir").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_local_root_confines_paths(rooted):
    root, outside = rooted
    cfg = StorageConfig(local_root=str(root))
    assert storage.read_bytes(str(root / "images" / "a.jpg"), cfg)
    assert storage.read_bytes("images/a.jpg", cfg)  # relative to the root
    assert storage.read_bytes(f"file://{root}/images/../images/b.jpg", cfg)
    escapes = ["../outside/secret.jpg", "images/../../outside/secret.jpg", str(outside / "secret.jpg"),
               f"file://{outside}/secret.jpg", str(root / "images" / "link.jpg"), "images/linkdir/secret.jpg",
               "/etc/passwd", "../../../../../../etc/passwd", str(root) + "-sibling/x.jpg"]
    for uri in escapes:
        with pytest.raises(storage.StorageAccessError, match="outside storage.local_root"):
            storage.read_bytes(uri, cfg)
    assert issubclass(storage.StorageAccessError, ValueError)
    with pytest.raises(storage.StorageAccessError):
        storage.write_bytes(str(outside / "new.txt"), b"x", cfg)
    assert not (outside / "new.txt").exists()
    # Without a root nothing changes: the same symlink is followed, as before.
    assert storage.read_bytes(str(root / "images" / "link.jpg")) == (outside / "secret.jpg").read_bytes()
    assert "local_root" in StorageConfig.model_fields and StorageConfig().local_root is None
    assert "outside_root" in StorageConfig.model_fields["local_root"].description


def test_local_root_manifest_rows_are_quarantined(rooted, ray_session):
    root, outside = rooted
    inside = {"in_abs": str(root / "images" / "a.jpg"), "in_rel": "images/b.jpg"}
    escaping = {"dotdot": "../outside/secret.jpg", "dotdot_deep": "images/../../../../../../etc/passwd",
                "abs_out": str(outside / "secret.jpg"), "symlink": str(root / "images" / "link.jpg"),
                "symlink_dir": "images/linkdir/secret.jpg"}
    rows = {**inside, **escaping}
    table = pa.table({"image_id": list(rows), "uri": list(rows.values())})
    manifest.write(table, str(root / "manifest"), 100)
    args = ["preprocess", "--manifest", str(root / "manifest"), "--out", str(root / "pre"),
            f"storage.local_root={root}", "faces.enabled=false"]
    assert main(args) == 0
    images = {r["image_id"]: r for r in storage.read_parquet(str(root / "pre" / "images")).to_pylist()}
    assert {i for i, r in images.items() if r["status"] == "ok"} == set(inside)
    assert {i: r["reason"] for i, r in images.items() if r["status"] != "ok"} == dict.fromkeys(escaping, "outside_root")
    c = json.loads((root / "pre" / "summary.json").read_text())["counts"]
    assert c["quarantine_reasons"] == {"outside_root": len(escaping)} and c["processed"] == len(inside)


def test_local_root_job_paths_fail_in_one_line(rooted, capsys):
    root, outside = rooted
    manifest.write(pa.table({"image_id": ["a"], "uri": [str(root / "images" / "a.jpg")]}), str(outside / "m"), 10)
    assert main(["preprocess", "--manifest", str(outside / "m"), "--out", str(root / "pre"),
                 f"storage.local_root={root}"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "outside storage.local_root" in err[0] and err[0].startswith("artextract preprocess: error")


# --- servers ---------------------------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_HOST_FIELD = re.compile(r"(^|_)(host|bind|listen)(_|$)|(^|_)ip(_address)?$")
_SERVER_CALLS = {"bind", "HTTPServer", "ThreadingHTTPServer", "TCPServer", "ThreadedMotoServer", "make_server",
                 "create_server", "serve", "run", "start_http_server", "start_server", "listen"}
_HOST_KWARGS = {"host", "ip_address", "bind", "address", "listen", "server_address"}


def _config_classes() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {}

    def walk(cls: type[BaseModel]) -> None:
        if cls.__qualname__ in seen:
            return
        seen[cls.__qualname__] = cls
        for sub in cls.__subclasses__():
            walk(sub)
        for f in cls.model_fields.values():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                walk(f.annotation)

    for obj in vars(config_pkg).values():
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__.startswith("artextract"):
            walk(obj)
    return list(seen.values())


def nonloopback_binds(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, host) for string literals given as the host of a server/bind call that are not
    loopback, plus every '0.0.0.0' / '::' literal anywhere."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::"):
            bad.append((node.lineno, node.value))
        if isinstance(node, ast.Call) and _dotted(node.func).rpartition(".")[2] in _SERVER_CALLS:
            hosts = [k.value for k in node.keywords if k.arg in _HOST_KWARGS]
            if node.args and isinstance(node.args[0], ast.Tuple) and node.args[0].elts:
                hosts.append(node.args[0].elts[0])
            bad += [(h.lineno, h.value) for h in hosts if isinstance(h, ast.Constant)
                    and isinstance(h.value, str) and h.value not in LOOPBACK and h.value != "0.0.0.0"]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # def serve(host="...")
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            bad += [(d.lineno, d.value) for a, d in pairs if _HOST_FIELD.search(a.arg) and isinstance(d, ast.Constant)
                    and isinstance(d.value, str) and d.value not in LOOPBACK and d.value != "0.0.0.0"]
    return bad


def test_server_scan_bites_on_bad_code():
    bad = ast.parse("s.bind(('', 0))\nThreadingHTTPServer(('example.org', 8), H)\n"
                    "ThreadedMotoServer(ip_address='10.0.0.1')\nHOST = '0.0.0.0'\n"
                    "s.bind(('127.0.0.1', 0))\nuvicorn.run(app, host='localhost')\n"
                    "def serve(app, port=0, host='192.168.1.2'): pass\ndef ok(*, bind_host='::1'): pass\n")
    assert sorted(nonloopback_binds(bad)) == [(1, ""), (2, "example.org"), (3, "10.0.0.1"), (4, "0.0.0.0"),
                                              (7, "192.168.1.2")]


def test_servers_bind_loopback_by_default():
    classes = _config_classes()
    assert {"PreprocessConfig", "StorageConfig", "RayConfig"} <= {c.__name__ for c in classes}
    host_fields = {f"{c.__name__}.{name}": f.default for c in classes for name, f in c.model_fields.items()
                   if _HOST_FIELD.search(name)}
    wrong = {k: v for k, v in host_fields.items() if v is not None and v not in LOOPBACK}
    assert wrong == {}, f"config host/bind fields must default to loopback: {wrong}"
    offenders = [f"{path}:{line} {host!r}" for path, tree in _sources() for line, host in nonloopback_binds(tree)]
    assert offenders == [], f"non-loopback bind addresses in the package: {offenders}"
