"""Where a pipeline step finds a stage config: the image's ``configs/`` or the mounted ConfigMap."""

from __future__ import annotations

import os
from pathlib import Path

from kuberlhf.errors import ConfigError

CONFIG_DIR = "/etc/kuberlhf"  # the kuberlhf-config ConfigMap, mounted by the pipelines


def resolve_config(ref: str) -> str:
    """A stage config reference: an existing path as given, else the same name in the mounted ConfigMap."""
    if not ref or Path(ref).is_file():
        return ref
    mounted = Path(os.environ.get("KUBERLHF_CONFIG_DIR", CONFIG_DIR))
    for candidate in (mounted / ref, mounted / Path(ref).name):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"config {ref!r}: no such file (looked here and in {mounted})")
