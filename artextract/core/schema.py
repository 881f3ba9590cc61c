"""The base of every config schema and the storage section: pure pydantic, no I/O, so both the
config loader (artextract.config) and the storage layer it reads YAML through (core.storage) build
on it without importing each other."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Iterator
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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
