"""The local cache: fetched artifacts, built models and remote runs' work dirs (``KUBERLHF_CACHE``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """Where fetched artifacts, materialised demo models and remote runs' work dirs live."""
    return Path(os.environ.get("KUBERLHF_CACHE", Path.home() / ".cache" / "kuberlhf"))


def fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]
