"""Process-group facts read from the launcher's environment (torchrun, accelerate, deepspeed)."""

from __future__ import annotations

import os


def world_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_world_main() -> bool:
    """True on the one process that writes shared outputs (rank 0, or a single process)."""
    return world_rank() == 0
