"""Config: defaults <- YAML <- flags <- key=value; unknown keys / wrong types name the key."""
from __future__ import annotations

import os

import pytest
import yaml
from pydantic import BaseModel

from artextract.cli import main
from artextract.config import ConfigError, PreprocessConfig, load_config, save_resolved


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shard_rows: 10\nfaces:\n  min_prob: 0.5\n  crop_size: 96\n")
    cfg = load_config(PreprocessConfig, str(path), ["faces.min_prob=0.8", "decode.detect_max_side=640"],
                      flags={"out": "123"})
    assert cfg.shard_rows == 10 and cfg.faces.crop_size == 96
    assert cfg.faces.min_prob == 0.8 and cfg.decode.detect_max_side == 640
    assert cfg.out == os.path.join(os.getcwd(), "123")  # flags keep their string type; paths become absolute
    assert cfg.decode.min_side == 32  # schema default untouched


@pytest.mark.parametrize("override, key", [
    ("faces.min_prb=0.8", "faces.min_prb"),
    ("nonsense=1", "nonsense"),
    ("faces.min_prob=high", "faces.min_prob"),
    ("shard_rows=0", "shard_rows"),
    ("faces.device=tpu", "faces.device"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(PreprocessConfig, None, [override])
    assert f"'{key}'" in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("faces:\n  min_probability: 0.5\n")
    msg = str(pytest.raises(ConfigError, load_config, PreprocessConfig, str(path)).value)
    assert "c.yaml" in msg and "'faces.min_probability'" in msg


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(PreprocessConfig, None, ["no_equals_sign"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(PreprocessConfig, str(tmp_path / "absent.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PreprocessConfig, str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="faces.min_prob.*section|not a section"):
        load_config(PreprocessConfig, None, ["faces=3", "faces.min_prob=0.1"])


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("out: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PreprocessConfig, str(path))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PreprocessConfig, None, ["faces.min_prob=0.7"], flags={"out": str(tmp_path)})
    uri = save_resolved(cfg, str(tmp_path))
    again = load_config(PreprocessConfig, uri)
    assert again == cfg
    assert yaml.safe_load(open(uri))["faces"]["min_prob"] == 0.7


# Every YAML under configs/ and the schema it must satisfy (later jobs add theirs here).
SHIPPED = {
    "demo.yaml": "DemoConfig",
    "embed.yaml": "EmbedConfig",
    "folder_ingest.yaml": "IngestFolderConfig",
    "nga_ingest.yaml": "IngestNgaConfig",
    "index_build.yaml": "IndexBuildConfig",
    "nga_preprocess.yaml": "PreprocessConfig",
    "wikiart_ingest.yaml": "IngestWikiartConfig",
    "wikiart_preprocess.yaml": "PreprocessConfig",
    "wikiart_classifier.yaml": "ClassifierTrainConfig",
    "wikiart_classifier_pretrained.yaml": "ClassifierTrainConfig",
    "nga_similarity_pretrained.yaml": "SimilarityTrainConfig",
    "nga_similarity.yaml": "SimilarityTrainConfig",
    "nga_neardup.yaml": "SimilarityTrainConfig",
    "nga_reindex.yaml": "ReindexConfig",
    # Cloud runs: the same jobs with GPUs declared per actor/worker (test_autoscaling submits them).
    "nga_preprocess_gpu.yaml": "PreprocessConfig",
    "embed_gpu.yaml": "EmbedConfig",
    "wikiart_classifier_gpu.yaml": "ClassifierTrainConfig",
    "nga_similarity_gpu.yaml": "SimilarityTrainConfig",
    "nga_reindex_gpu.yaml": "ReindexConfig",
}


def test_shipped_configs_validate():
    from pathlib import Path

    from artextract import config as C

    files = {f.name for f in (Path(__file__).parents[1] / "configs").glob("*.yaml")}
    assert files == set(SHIPPED), "configs/ and SHIPPED disagree"
    for name, schema in SHIPPED.items():
        load_config(getattr(C, schema), str(Path(__file__).parents[1] / "configs" / name))


def test_laptop_defaults_ask_for_no_gpu_and_gpu_configs_do():
    """CPU-only is the default on a laptop; the *_gpu.yaml configs declare a GPU for every actor or
    worker that computes (so an autoscaling cluster launches GPU nodes for them)."""
    from pathlib import Path

    from artextract import config as C

    root = Path(__file__).parents[1] / "configs"

    def asked(model) -> list[str]:  # every Resources with a GPU, every use_gpu that is on
        found = []
        for name, value in model:
            if (isinstance(value, C.Resources) and value.num_gpus > 0) or (name == "use_gpu" and value):
                found.append(name)
            elif isinstance(value, BaseModel):
                found += asked(value)
        return found

    for name, schema in SHIPPED.items():
        gpu = asked(load_config(getattr(C, schema), str(root / name)))
        if name.endswith("_gpu.yaml"):
            assert gpu, f"{name} declares no GPU"
        else:
            assert not gpu, f"{name} asks for a GPU ({gpu}): laptop configs are CPU-only"
    assert C.Resources(num_cpus=0.5, num_gpus=1, memory_gb=2).options() == {"num_cpus": 0.5, "num_gpus": 1,
                                                                          "memory": 2 * 2**30}
    assert C.Resources(num_cpus=0.5).bundle() == {"CPU": 0.5}


def test_cli_check_names_every_missing_setting_and_runs_nothing(tmp_path, capsys):
    shipped = os.path.join(os.path.dirname(__file__), "..", "configs", "wikiart_classifier.yaml")
    assert main(["train", "classifier", "--config", shipped]) == 2
    assert "missing settings: data.input= (--input), out= (--out)" in capsys.readouterr().err
    assert main(["embed", "--out", str(tmp_path / "e"), "--check"]) == 2
    assert "missing setting: input= (--input)" in capsys.readouterr().err
    assert main(["embed", "--input", str(tmp_path), "--out", str(tmp_path / "e"), "--check"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["input"] == str(tmp_path) and printed["resources"]["embed"]["num_gpus"] == 0
    assert not (tmp_path / "e").exists()  # --check ran nothing


def test_cli_rejects_bad_override(tmp_path, capsys):
    rc = main(["preprocess", "--manifest", str(tmp_path), "--out", str(tmp_path / "o"), "faces.min_prb=1"])
    assert rc == 2
    assert "faces.min_prb" in capsys.readouterr().err
