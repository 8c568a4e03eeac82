"""The one data loader every stage uses.

``load_examples(path, kind)`` reads raw rows from any supported source
(:func:`iter_rows`: local/S3 files, Hugging Face, Deep Lake, demo), converts each into
the canonical example of ``kind`` (:mod:`kuberlhf.data.formats`) and returns a
``datasets.Dataset`` (or ``IterableDataset`` when streaming) plus :class:`DataStats`.
A malformed row either stops the load with a :class:`~kuberlhf.errors.DataError` naming
the source, the 0-based row index and the field, or is skipped and counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from kuberlhf.data.formats import (
    CONVERTERS,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_SYSTEM_TEMPLATE,
    RowError,
    check_templates,
)
from kuberlhf.data.records import BadRecord
from kuberlhf.data.sources import iter_records, iter_rows
from kuberlhf.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

__all__ = ["KINDS", "DataStats", "iter_rows", "load_data", "load_examples"]

KINDS = ("sft", "preference", "prompt", "candidates")
ON_BAD_ROW = ("error", "skip")
TEMPLATE_KEYS = ("prompt_template", "system_template")
MAX_SKIPPED_EXAMPLES = 10


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


def _shape(example: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Which fields an example has and whether each is text or a message list."""
    return tuple((k, "text" if isinstance(v, str) else "messages") for k, v in example.items())


def _converter(kind: str, template_kwargs: Mapping[str, str] | None) -> Callable[[Any], dict]:
    if kind not in KINDS:
        raise ConfigError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    kwargs = dict(template_kwargs or {})
    unknown = sorted(set(kwargs) - set(TEMPLATE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown template option(s) {', '.join(unknown)}; expected {', '.join(TEMPLATE_KEYS)}"
        )
    for key, value in kwargs.items():
        if not isinstance(value, str):
            raise ConfigError(f"template option {key} must be a string, got {type(value).__name__}")
    if kind in ("preference", "candidates"):
        return CONVERTERS[kind]
    try:
        check_templates(
            kwargs.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
            kwargs.get("system_template", DEFAULT_SYSTEM_TEMPLATE),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return partial(CONVERTERS[kind], **kwargs)


def _examples(
    path: str,
    convert: Callable[[Any], dict],
    stats: DataStats,
    *,
    split: str,
    format: str,
    streaming: bool,
    on_bad_row: str,
    max_rows: int | None,
) -> Iterator[dict[str, Any]]:
    """Validated examples of ``path``; updates ``stats`` as it goes."""
    stats.reset()
    records = iter_records(path, split=split, format=format, streaming=streaming)
    if max_rows is not None:
        records = itertools.islice(records, max_rows)
    shape: tuple[tuple[str, str], ...] | None = None
    for record in records:
        stats.rows_read += 1
        if isinstance(record.row, BadRecord):
            problem = record.row.message
        else:
            try:
                example = convert(record.row)
                this_shape = _shape(example)
                if shape is not None and this_shape != shape:
                    raise RowError(
                        "prompt",
                        f"row has fields {_describe(this_shape)} but earlier rows have "
                        f"{_describe(shape)}; one dataset cannot mix them",
                    )
            except RowError as err:
                problem = f"{record.source} row {record.index}: {err}"
            else:
                shape = this_shape
                yield example
                continue
        if on_bad_row == "error":
            raise DataError(problem)
        stats.skip(problem)
    if stats.rows_kept == 0:
        detail = f"; first problem: {stats.skipped_examples[0]}" if stats.skipped_examples else ""
        raise DataError(
            f"{path}: no valid rows (read {stats.rows_read}, skipped {stats.rows_skipped}){detail}"
        )


def _describe(shape: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k} ({kind})" for k, kind in shape)


def load_examples(
    path: str,
    kind: str,
    *,
    split: str = "train",
    format: str = "auto",
    streaming: bool = False,
    on_bad_row: str = "error",
    max_rows: int | None = None,
    template_kwargs: Mapping[str, str] | None = None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, DataStats]:
    """Load ``path`` as examples of ``kind`` ("sft", "preference" or "prompt").

    Args:
        path: any source :func:`iter_rows` reads.
        kind: which converter of :mod:`kuberlhf.data.formats` validates each row.
        split: split of a Hugging Face dataset.
        format: "auto" or a format of :data:`kuberlhf.data.sources.FORMATS`.
        streaming: return an ``IterableDataset`` that reads and validates lazily (its
            first example is read up front, so a bad source fails at once).
        on_bad_row: "error" raises :class:`DataError` at the first bad row; "skip"
            drops bad rows and counts them in the stats.
        max_rows: read at most this many rows (bad ones included).
        template_kwargs: ``prompt_template`` / ``system_template`` for sft and prompt.

    Returns:
        ``(dataset, stats)``. Without streaming every row has been read and validated.

    Raises:
        DataError: unreadable source, a bad row with ``on_bad_row="error"``, or no
            valid rows at all.
        ConfigError: unknown kind, ``on_bad_row`` or template option.
    """
    import datasets

    convert = _converter(kind, template_kwargs)
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}, got {on_bad_row!r}")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise ConfigError(f"max_rows must be a positive integer, got {max_rows!r}")
    stats = DataStats()
    gen_kwargs: dict[str, Any] = {
        "path": str(path),
        "convert": convert,
        "stats": stats,
        "split": split,
        "format": format,
        "streaming": streaming,
        "on_bad_row": on_bad_row,
        "max_rows": max_rows,
    }
    if not streaming:
        return datasets.Dataset.from_list(list(_examples(**gen_kwargs))), stats

    # Fail fast on a bad source and learn the features from the first example.
    peek = _examples(**{**gen_kwargs, "stats": DataStats()})
    try:
        first = next(peek)
    finally:
        peek.close()
    features = datasets.Dataset.from_list([first]).features

    def generate() -> Iterator[dict[str, Any]]:
        yield from _examples(**gen_kwargs)

    return datasets.IterableDataset.from_generator(generate, features=features), stats


def load_data(data: Any, kind: str, seed: int) -> tuple[Any, Any | None, DataStats]:
    """A stage's ``data`` section loaded as examples of ``kind``: (train, eval or None, DataStats of train).

    Eval comes from ``data.eval``, else from a seeded ``data.eval_fraction`` split of train.
    """
    common = {"format": data.format, "on_bad_row": data.on_bad_row, "template_kwargs": data.template_kwargs}
    train, stats = load_examples(
        data.train, kind, split=data.split, streaming=data.streaming, max_rows=data.max_rows, **common
    )
    if data.eval:
        held_out, _ = load_examples(data.eval, kind, split=data.eval_split, **common)
        return train, held_out, stats
    if data.eval_fraction > 0 and not data.streaming:
        parts = train.train_test_split(test_size=data.eval_fraction, seed=seed)
        return parts["train"], parts["test"], stats
    return train, None, stats
