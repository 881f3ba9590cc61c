"""Relative paths, as a user types them: every local path of a job config is made absolute once, in
the process that builds the config, so Ray Train workers (which run in their own working directory)
and Ray tasks read and write the files the user named. The demo fixture (conftest.demo_full) runs
``artextract demo`` with its relative default ``--out runs/demo`` from a temporary working
directory; the tests here run the other Ray verbs on its outputs with relative paths."""
from __future__ import annotations

import json
import os
import typing

import pytest
from pydantic import BaseModel

from artextract import config as C
from artextract.cli import VERBS, main
from artextract.config.core import PathField

# Field names that hold a location in our schemas; a new one must be a Uri/OptUri/WeightsUri.
_PATHISH = {"out", "input", "manifest", "images", "images_out", "splits", "objects", "published_images",
            "embeddings", "index", "vector", "image", "model", "faces", "run", "labels", "preprocess",
            "reports", "collection", "work", "weights", "local_root"}


def _sections(schema: type[BaseModel], seen=None):
    seen = seen if seen is not None else set()
    if schema in seen:
        return
    seen.add(schema)
    yield schema
    for info in schema.model_fields.values():
        for arg in [info.annotation, *typing.get_args(info.annotation)]:
            for t in [arg, *typing.get_args(arg)]:
                if isinstance(t, type) and issubclass(t, BaseModel):
                    yield from _sections(t, seen)


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v.words))
def test_every_location_field_is_a_path_field(verb):
    schema = getattr(C, verb.schema)
    for section in _sections(schema):
        for name, info in section.model_fields.items():
            if name in _PATHISH and set(typing.get_args(info.annotation) or [info.annotation]) <= {str, type(None)}:
                assert any(isinstance(m, PathField) for m in info.metadata), f"{section.__name__}.{name}"


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v.words))
def test_every_flag_path_is_absolute_after_load(verb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    schema = getattr(C, verb.schema)
    path_flags = {}
    for flag in verb.flags:
        node, parts = schema, flag.key.split(".")
        for part in parts[:-1]:
            node = typing.get_args(node.model_fields[part].annotation) or node.model_fields[part].annotation
        info = node.model_fields[parts[-1]]
        if any(isinstance(m, PathField) for m in info.metadata):
            path_flags[flag.key] = f"rel/{parts[-1]}"
    cfg = C.load_config(schema, flags=path_flags)
    for key, value in path_flags.items():
        got = cfg
        for part in key.split("."):
            got = getattr(got, part)
        assert got == str(tmp_path / value), key


def test_what_is_not_a_local_path_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.load_config(C.SimilarityTrainConfig, overrides=[
        "out=s3://bucket/run", "data.input=rel/pre", "model.weights=imagenet",
        "data.extra_inputs=[{input: more/pre, what: images}]", "data.labels=~/labels"])
    assert cfg.out == "s3://bucket/run" and cfg.model.weights == "imagenet"
    assert cfg.data.input == str(tmp_path / "rel/pre")
    assert cfg.data.extra_inputs[0].input == str(tmp_path / "more/pre")  # lists of sections too
    assert cfg.data.labels == os.path.expanduser("~/labels")
    emb = C.EmbedConfig(model="untrained:resnet18", input="file:///x", out="https://h/x")
    assert (emb.model, emb.input, emb.out) == ("untrained:resnet18", "file:///x", "https://h/x")
    assert C.EmbedConfig(model="runs/m.pt").model == str(tmp_path / "runs/m.pt")
    # with storage.local_root, relative paths are taken from it (and still confined to it)
    rooted = C.PreprocessConfig(manifest="m", out="o", storage={"local_root": "data"})
    assert rooted.storage.local_root == str(tmp_path / "data") and rooted.out == str(tmp_path / "data/o")
    # assignment re-validates: a relative path assigned later is resolved too
    rooted.out = "o2"
    assert rooted.out == str(tmp_path / "data/o2")


@pytest.mark.slow
def test_demo_default_out_is_relative_and_works(demo_full):
    out, printed = demo_full
    assert out.name == "demo" and out.parent.name == "runs"
    assert "outputs     runs/demo/preprocess" in printed  # shown as the user typed it
    resolved = (out / "classifier" / "run" / "config.resolved.yaml").read_text()
    assert f"input: {out}/classifier/collection" in resolved  # absolute in what the workers got


@pytest.mark.slow
def test_ray_verbs_with_relative_paths(demo_full, ray_session, monkeypatch, capsys):
    """index build, search, both evaluations and reindex, from the demo's directory with relative
    paths only (the demo itself ran preprocess, both trainings and embed that way; test_embed runs the
    embed verb with relative paths)."""
    import shutil

    out, _ = demo_full
    base = out.parent.parent
    monkeypatch.chdir(base)
    d = "runs/demo"
    (base / "rel" / "coll").mkdir(parents=True)
    for name in ("astronaut.jpg", "landscape_1.jpg"):  # a small collection for reindex
        shutil.copy(out / "sample_collection" / name, base / "rel" / "coll" / name)
    model = f"{d}/similarity/run/model.pt"
    steps = [
        ["index", "build", "--embeddings", f"{d}/similarity/embeddings", "--out", "rel/index", "--shards", "2"],
        ["search", "--index", "rel/index", "--id", "astronaut", "-k", "3", "--faces", f"{d}/preprocess",
         "--out", "rel/q"],
        ["evaluate", "similarity", "--embeddings", f"{d}/similarity/embeddings", "--preprocess", f"{d}/preprocess",
         "--out", "rel/sim-eval", "queries=4", "grid_k=2"],
        ["evaluate", "classifier", "--run", f"{d}/classifier/run", "--out", "rel/clf-eval", "tsne_max_points=20"],
        ["reindex", "--collection", "rel/coll", "--index", "rel/reindexed", "--model", model,
         "embed.image_size=64", "build.shards=2", "preprocess.decode.detect_max_side=512"],
    ]
    for argv in steps:
        assert main(argv) == 0, (argv, capsys.readouterr().err[-2000:])
    results = json.loads((base / "rel" / "q" / "results.json").read_text())["results"]
    assert all(r["hits"][0]["image_id"] == "astronaut" for r in results)
    assert (base / "rel" / "clf-eval" / "metrics.json").exists()
    assert (base / "rel" / "reindexed" / "CURRENT").exists()
    assert not (out / "runs").exists()  # nothing landed in a nested, cwd-relative place
