"""Config machinery: the strict base model, storage/Ray sections, YAML + ``key=value`` loading,
and saving the resolved config beside outputs."""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

SECRET_ERROR = "credentials_in_value"  # a validation error whose input must not be echoed

# "s3://…", "file://…", "https://…" and model specs such as "untrained:resnet18" are not local paths.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class PathField:
    """Marks a config field holding a local path or a URI. Relative local paths are made absolute
    when the job config is built (see :meth:`Strict._absolute_paths`); ``keywords`` are values
    that are not paths at all (``weights=none``)."""

    keywords: tuple[str, ...] = ()

    def absolute(self, value: str, root: str) -> str:
        if not value or value in self.keywords or _SCHEME.match(value) or os.path.isabs(value):
            return value
        if value.startswith("~"):
            return os.path.expanduser(value)
        return os.path.normpath(os.path.join(root, value))


Uri = Annotated[str, PathField()]
OptUri = Annotated[str | None, PathField()]
WeightsUri = Annotated[str, PathField(keywords=("none", "imagenet"))]


def _models_in(value: Any) -> Iterator[BaseModel]:
    if isinstance(value, BaseModel):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _models_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _models_in(v)


def absolutize_paths(model: BaseModel, root: str | None) -> None:
    """Rewrite, in place, every relative local path in ``model`` (nested sections and lists
    included) as an absolute path under ``root``. Idempotent."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        spec = next((m for m in info.metadata if isinstance(m, PathField)), None)
        if spec is not None and isinstance(value, str):
            new = spec.absolute(value, root or "/")
            if new != value and root is None:
                raise ValueError(f"{name}: relative path {value!r} but this process has no working directory")
            if new != value:
                model.__dict__[name] = new  # bypass validate_assignment: this runs inside validation
        else:
            for child in _models_in(value):
                absolutize_paths(child, root)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        # A Ray worker whose working directory (an unpacked job package) was removed under it: the
        # configs built there (module defaults) hold no relative path; any other one is refused.
        return None


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="after")
    def _absolute_paths(self):
        """A job config (one with a ``storage`` section) resolves its relative local paths once, here,
        in the process that builds it: Ray Train workers and submitted jobs run in other working
        directories, so a relative path handed to them would name another file. Relative paths are
        taken from ``storage.local_root`` when set, else from the current directory."""
        storage = self.__dict__.get("storage")
        if isinstance(storage, StorageConfig):
            absolutize_paths(self, storage.local_root or _cwd())
        return self


class StorageConfig(Strict):
    """Object-storage settings. Credentials are NOT configured here: they come from the AWS chain."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO/Ceph)")
    s3_region: str | None = None
    s3_anonymous: bool = False
    s3_max_attempts: int = Field(6, ge=1, description="botocore-style standard retries for S3 requests")
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    http_retries: int = Field(4, ge=0, description="retries with backoff for http(s) reads/downloads")
    http_backoff_s: float = Field(0.5, ge=0)
    http_timeout_s: float = Field(30.0, gt=0, description="per socket read (connect has connect_timeout_s)")
    http_deadline_s: float = Field(300.0, gt=0, description="whole transfer of one http(s) GET, body included: a "
                                   "server dripping bytes cannot hold a reader longer")
    http_retry_after_max_s: float = Field(30.0, ge=0, description="cap on a server's Retry-After wait")
    http_max_redirects: int = Field(3, ge=0, description="redirects followed, each to the same host and never "
                                    "https -> http; 0 refuses redirects")
    http_max_bytes: int = Field(1 << 30, ge=1, description="largest http(s) body read; larger fails the read")
    http_allow_private: bool = Field(False, description="allow http(s) reads from loopback, private and link-local "
                                     "addresses (a local mirror, a test server); off, a URL or redirect to one "
                                     "(e.g. a cloud metadata endpoint) is refused")
    local_root: OptUri = Field(None, description=(
        "confine local file access to this directory: when set, every local path a job reads or "
        "writes (manifest rows, inputs, outputs) must resolve inside it after '..' and symlinks are "
        "resolved, and relative paths are taken relative to it. A manifest row pointing outside is "
        "quarantined as outside_root; any other such path fails the job with a one-line error. "
        "None (default) = local paths are trusted as given. Does not affect s3:// or http(s)://"))

    @field_validator("local_root")
    @classmethod
    def _absolute_root(cls, root: str | None) -> str | None:
        return PathField().absolute(root, os.getcwd()) if root else root

    @field_validator("s3_endpoint")
    @classmethod
    def _no_userinfo(cls, endpoint: str | None) -> str | None:
        # Credentials belong to the AWS chain. One pasted as http://KEY:SECRET@host would reach boto's
        # error messages, tracebacks and repr(cfg), so it is refused, and the error never echoes it.
        if endpoint and "@" in urlsplit(endpoint).netloc:
            raise PydanticCustomError(SECRET_ERROR, "an endpoint must not carry credentials (user:password@host); "
                                      "they come from the AWS chain (environment, ~/.aws, instance role)")
        return endpoint


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
        from artextract import storage

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
    from artextract import storage

    uri = storage.join(out_uri, name)
    storage.write_text(uri, to_yaml(cfg), getattr(cfg, "storage", None))
    return uri
