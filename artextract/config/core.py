"""Config machinery: Ray and resource sections, YAML + ``key=value`` loading, and saving the
resolved config beside outputs (the strict base model and the storage section: core.schema)."""
from __future__ import annotations

import copy
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from artextract.core import storage
from artextract.core.schema import (SECRET_ERROR, OptUri, PathField, StorageConfig, Strict, Uri,  # noqa: F401
                                    WeightsUri, absolutize_paths)

class RayConfig(Strict):
    """How the job attaches to Ray: address=None starts (or reuses) a local Ray."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    resource_wait_s: float = Field(900.0, gt=0, description="a job whose actors or workers need resources no "
                                   "node has (GPUs on a cold autoscaling cluster) asks the autoscaler for them "
                                   "and waits this long for a node that fits, then fails naming what is missing")


class Resources(Strict):
    """What one Ray actor, task or training worker asks the scheduler for. Declared per job (the
    laptop defaults are CPU-only; configs/*_gpu.yaml ask for GPUs), never read from the cluster at
    start: on an autoscaling cluster the request is what makes the autoscaler launch the node type
    that fits, so a GPU job on a cold cluster gets a GPU node instead of running on the head's CPUs."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor/worker (fractions share a GPU); > 0 "
                            "places it on a GPU node, where the stage runs on CUDA")
    memory_gb: float | None = Field(None, gt=0, description="RAM reserved per actor/worker (Ray's logical "
                                    "'memory' resource: scheduling only, not a limit). On an autoscaling "
                                    "cluster the node types must declare 'memory' (KubeRay derives it from the "
                                    "pod's limit), else the autoscaler finds no node type that fits")

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``map_batches`` / ``ray.remote``: num_cpus, num_gpus, memory."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 2**30)
        return opts

    def bundle(self) -> dict[str, float]:
        """The same request as a resource bundle (``CPU``/``GPU``/``memory``)."""
        opts = self.options()
        out = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], "memory": opts.get("memory", 0)}
        return {k: float(v) for k, v in out.items() if v}


C = TypeVar("C", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not fit its schema; the message names the key."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (['a','b','c'], YAML-typed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form key=value (dotted keys allowed)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from exc
    return key.split("."), value


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif err["type"] == SECRET_ERROR:  # the value may be a secret: never repeat it
            lines.append(f"key '{key}': {err['msg']}")
        else:
            lines.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def load_config(schema: type[C], path: str | None = None, overrides: list[str] | None = None,
                base: dict | None = None, flags: dict[str, Any] | None = None) -> C:
    """Build a ``schema`` config: defaults <- ``base`` <- YAML at ``path`` <- ``flags`` (dotted
    keys, values taken as given) <- ``overrides`` (``key=value`` strings, YAML-typed values)."""
    data: dict = copy.deepcopy(base) if base else {}
    if path:
        try:
            loaded = yaml.safe_load(storage.read_bytes(path)) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    for key, value in (flags or {}).items():
        _set_path(data, key.split("."), value)
    for item in overrides or []:
        keys, value = parse_override(item)
        _set_path(data, keys, value)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid {schema.__name__}{where}: {_format_errors(exc)}") from None


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (credentials are never part of a config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_resolved(cfg: BaseModel, out_uri: str, name: str = "config.resolved.yaml") -> str:
    """Write the resolved config beside a job's outputs; returns its URI."""
    uri = storage.join(out_uri, name)
    storage.write_text(uri, to_yaml(cfg), getattr(cfg, "storage", None))
    return uri
