"""The records of a dataset source: a raw row, where it came from, or why it could not be parsed."""

from __future__ import annotations

from collections.abc import Iterator
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


def rows_of(table: Any) -> list[dict[str, Any]]:
    """The rows of an Arrow table or record batch as dicts: ``to_pylist()``'s, column by column (pyarrow builds
    ``to_pylist()``'s dicts one key at a time in Python)."""
    names = table.column_names
    if not names:
        return [{} for _ in range(table.num_rows)]
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def columns_to_rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Rows of a column-major batch (dict of equally long lists), as ``datasets`` and Deep Lake give them."""
    columns = list(batch)
    for values in zip(*(batch[c] for c in columns), strict=True):
        yield dict(zip(columns, values, strict=True))
