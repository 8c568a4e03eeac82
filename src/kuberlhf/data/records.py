"""The records of a dataset source: a raw row, where it came from, or why it could not be parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BATCH_ROWS = 1024


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be parsed (e.g. invalid JSON); ``message`` says why."""

    message: str


@dataclass(frozen=True)
class Record:
    """One raw row, where it came from (``source``) and its 0-based ``index`` there."""

    source: str
    index: int
    row: dict[str, Any] | BadRecord


def _one_line(text: object) -> str:
    return " ".join(str(text).split())

