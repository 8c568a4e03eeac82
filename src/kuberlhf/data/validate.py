"""Rows checked one by one: a row becomes an example of its kind, or a problem naming its source, row and field.

:class:`Validator` holds what a load has seen so far (the counts of :class:`DataStats`, the shape of the first
good example, the rows still allowed by ``max_rows``) and decides what a bad row does: stop the load
(``on_bad_row="error"``) or be skipped and counted (``"skip"``). The streaming loader runs it over records one at
a time (:meth:`Validator.examples`); the Arrow loader (:mod:`kuberlhf.data.tables`) runs :func:`check` in a batched
``Dataset.map`` and hands the validator each file's counts. Both word every problem with :meth:`Validator.problem`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kuberlhf.data.formats import RowError
from kuberlhf.data.records import BadRecord, Record
from kuberlhf.errors import DataError

MAX_SKIPPED_EXAMPLES = 10

Shape = tuple[tuple[str, str], ...]


@dataclass
class DataStats:
    """What a load read and skipped; ``to_dict()`` goes into metrics.json.

    For a streaming dataset the counts fill in as it is iterated, and start again at
    each new pass over it.
    """

    rows_read: int = 0
    rows_skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def rows_kept(self) -> int:
        """Rows that became examples."""
        return self.rows_read - self.rows_skipped

    def reset(self) -> None:
        """Zero the counts (a new pass over the source)."""
        self.rows_read = 0
        self.rows_skipped = 0
        self.skipped_examples.clear()

    def skip(self, message: str) -> None:
        """Count one skipped row, keeping the first few messages."""
        self.rows_skipped += 1
        if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            self.skipped_examples.append(message)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for metrics files."""
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "skipped_examples": list(self.skipped_examples),
        }


def shape_of(example: Mapping[str, Any]) -> Shape:
    """Which fields an example has and whether each is text or a message list."""
    return tuple([(k, "text" if isinstance(v, str) else "messages") for k, v in example.items()])


def _describe(shape: Shape) -> str:
    return ", ".join(f"{k} ({kind})" for k, kind in shape)


def check(row: Any, convert: Callable[[Any], dict], shape: Shape | None) -> dict[str, Any]:
    """The example of ``row``; :class:`RowError` when the row is malformed or its example has another shape
    than ``shape`` (the first good example's: one dataset cannot mix text and message lists)."""
    example = convert(row)
    this_shape = shape_of(example)
    if shape is not None and this_shape != shape:
        raise RowError(
            "prompt",
            f"row has fields {_describe(this_shape)} but earlier rows have {_describe(shape)}; one dataset cannot "
            "mix them",
        )
    return example


class Validator:
    """One pass over a source: counts into ``stats``, the shape of the first good example, ``max_rows``."""

    def __init__(
        self, convert: Callable[[Any], dict], stats: DataStats, on_bad_row: str, max_rows: int | None
    ) -> None:
        self.convert = convert
        self.stats = stats
        self.on_bad_row = on_bad_row
        self.max_rows = max_rows
        self.shape: Shape | None = None
        self.first_example: dict[str, Any] | None = None

    @property
    def remaining(self) -> int | None:
        """Rows ``max_rows`` still allows (None: no limit)."""
        return None if self.max_rows is None else max(0, self.max_rows - self.stats.rows_read)

    def problem(self, record: Record) -> tuple[dict[str, Any] | None, str | None]:
        """``(example, None)`` for a good record, ``(None, message)`` for a bad one; the first good example
        sets the shape every later one must have."""
        if isinstance(record.row, BadRecord):
            return None, record.row.message
        try:
            example = check(record.row, self.convert, self.shape)
        except RowError as err:
            return None, f"{record.source} row {record.index}: {err}"
        if self.shape is None:
            self.shape, self.first_example = shape_of(example), example
        return example, None

    def bad(self, message: str) -> None:
        """A bad row: raise :class:`DataError` (``on_bad_row="error"``) or count it as skipped."""
        if self.on_bad_row == "error":
            raise DataError(message)
        self.stats.skip(message)

    def examples(self, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
        """The good examples of ``records``, at most :attr:`remaining` rows read; bad rows go to :meth:`bad`."""
        if self.remaining is not None:
            records = itertools.islice(records, self.remaining)
        for record in records:
            self.stats.rows_read += 1
            example, message = self.problem(record)
            if example is not None:
                yield example
            else:
                self.bad(message or "")

    def counted(self, rows_read: int, bad: Sequence[int], message_of: Callable[[int], str]) -> None:
        """Count a block of ``rows_read`` rows checked elsewhere; ``bad`` lists the bad ones in order, and
        ``message_of(i)`` words the problem of ``bad[i]`` (asked only for the messages kept)."""
        if len(bad) and self.on_bad_row == "error":
            raise DataError(message_of(0))
        self.stats.rows_read += rows_read
        kept = min(len(bad), max(0, MAX_SKIPPED_EXAMPLES - len(self.stats.skipped_examples)))
        for i in range(kept):
            self.stats.skip(message_of(i))
        self.stats.rows_skipped += len(bad) - kept

    def finish(self, path: str) -> None:
        """Raise :class:`DataError` when no row became an example."""
        stats = self.stats
        if stats.rows_kept == 0:
            detail = f"; first problem: {stats.skipped_examples[0]}" if stats.skipped_examples else ""
            raise DataError(f"{path}: no valid rows (read {stats.rows_read}, skipped {stats.rows_skipped}){detail}")
