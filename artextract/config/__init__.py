"""Typed job configs: defaults live in the pydantic schemas, a YAML file overrides them, and
``key=value`` arguments (dotted keys, YAML-typed values) override both. Unknown keys and wrong
types are rejected with a message naming the key. The resolved config is saved beside outputs.

``core`` holds the machinery, ``jobs`` the data-job schemas, ``training`` the training and
evaluation schemas; everything is importable from ``artextract.config``.
"""
from artextract.config.core import *  # noqa: F401,F403
from artextract.config.core import (ConfigError, RayConfig, StorageConfig, Strict, load_config,  # noqa: F401
                                    parse_override, save_resolved, to_yaml)
from artextract.config.jobs import *  # noqa: F401,F403
from artextract.config.training import *  # noqa: F401,F403
from artextract.config.reindex import *  # noqa: F401,F403
from artextract.config.serve import *  # noqa: F401,F403
