"""The one data loader every stage uses.

``load_examples(path, kind)`` reads raw rows from any supported source
(:func:`iter_rows`: local/S3 files, Hugging Face, Deep Lake, demo), converts each into
the canonical example of ``kind`` (:mod:`kuberlhf.data.formats`) and returns a
``datasets.Dataset`` (or ``IterableDataset`` when streaming) plus :class:`DataStats`.
A malformed row either stops the load with a :class:`~kuberlhf.errors.DataError` naming
the source, the 0-based row index and the field, or is skipped and counted.

Without streaming the rows are loaded on Arrow (:mod:`kuberlhf.data.tables`: memory-mapped, cached under
``$KUBERLHF_CACHE/datasets``, checked in a batched ``Dataset.map``); streaming reads them one at a time
(:func:`iter_records`). Both check each row with :mod:`kuberlhf.data.validate`: the same examples, counts
and messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from kuberlhf.data.formats import (
    CONVERTERS,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_SYSTEM_TEMPLATE,
    check_templates,
)
from kuberlhf.data.sources import iter_records, iter_rows
from kuberlhf.data.validate import MAX_SKIPPED_EXAMPLES, DataStats, Validator
from kuberlhf.errors import ConfigError

if TYPE_CHECKING:
    import datasets

__all__ = ["KINDS", "MAX_SKIPPED_EXAMPLES", "DataStats", "iter_rows", "load_data", "load_examples"]

KINDS = ("sft", "preference", "prompt", "candidates")
ON_BAD_ROW = ("error", "skip")
TEMPLATE_KEYS = ("prompt_template", "system_template")


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
    on_bad_row: str,
    max_rows: int | None,
    **source: Any,
) -> Iterator[dict[str, Any]]:
    """Validated examples of ``path``, read one row at a time; updates ``stats`` as it goes."""
    stats.reset()
    validator = Validator(convert, stats, on_bad_row, max_rows)
    yield from validator.examples(iter_records(path, **source))
    validator.finish(path)


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
    num_proc: int | None = None,
    name: str | None = None,
    data_dir: str | None = None,
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
        num_proc: processes that check the rows of a non-streaming load (``Dataset.map``); None or 1 = this one.
        name: subset (configuration) of a Hugging Face Hub dataset.
        data_dir: ``data_dir`` of a Hugging Face Hub dataset.

    Returns:
        ``(dataset, stats)``. Without streaming every row has been read and validated, and the
        dataset is memory-mapped from Arrow files in the cache (:func:`kuberlhf.data.tables.data_cache`).

    Raises:
        DataError: unreadable source, a bad row with ``on_bad_row="error"``, or no
            valid rows at all.
        ConfigError: unknown kind, ``on_bad_row``, template option, ``max_rows`` or ``num_proc``.
    """
    import datasets

    convert = _converter(kind, template_kwargs)
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)}, got {on_bad_row!r}")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise ConfigError(f"max_rows must be a positive integer, got {max_rows!r}")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ConfigError(f"num_proc must be a positive integer, got {num_proc!r}")
    stats = DataStats()
    source = {"split": split, "format": format, "name": name, "data_dir": data_dir}
    if not streaming:
        from kuberlhf.data.tables import load_table

        validator = Validator(convert, stats, on_bad_row, max_rows)
        key = json.dumps([kind, dict(template_kwargs or {})], sort_keys=True)
        return load_table(str(path), validator, kind=kind, key=key, num_proc=num_proc, **source), stats

    gen_kwargs: dict[str, Any] = {
        "path": str(path),
        "convert": convert,
        "stats": stats,
        "streaming": True,
        "on_bad_row": on_bad_row,
        "max_rows": max_rows,
        **source,
    }
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
    ``data.name`` and ``data.data_dir`` (a Hugging Face subset) apply to both.
    """
    common = {"format": data.format, "on_bad_row": data.on_bad_row, "template_kwargs": data.template_kwargs,
              "num_proc": data.num_proc, "name": data.name, "data_dir": data.data_dir}
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
