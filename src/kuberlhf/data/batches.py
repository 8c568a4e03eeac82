"""What the Arrow loader's batched map runs (:mod:`kuberlhf.data.tables`), and the records it reads again.

Each map function takes a batch of rows (lines of text, the json builder's rows, or Arrow rows of a parquet file
or Hugging Face dataset), checks every row with :func:`kuberlhf.data.validate.check` and returns an Arrow table:
the example's columns (null for a row that is not good) and :data:`ROW_COLUMN`, whether each row was good, bad or
blank. The record iterators give the same rows one at a time (to find the first good example, and to word a bad
row's message) as the line and file readers of :mod:`kuberlhf.data.sources` give them.

OpenOrca SFT rows (the common case at scale) are first decided a column at a time (:func:`openorca_fast`): the
rows whose fields are plainly good become examples without a row dict; every other row takes the row checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kuberlhf.data.files import LineReader, LineSpans
from kuberlhf.data.formats import RowError, render_prompt, sft_example
from kuberlhf.data.records import BATCH_ROWS, BadRecord, Record, columns_to_rows, rows_of
from kuberlhf.data.sources import json_line_row
from kuberlhf.data.validate import Shape, check

if TYPE_CHECKING:
    import datasets

GOOD, BAD, BLANK = 0, 1, 2
ROW_COLUMN = "__kuberlhf_row"  # GOOD, BAD or BLANK for each input row of the map
BLANK_CHARS = " \t\n\r\x0b\x0c"  # what bytes.strip() removes: a line of only these is blank (and no row)


def line_row(text: str, source: str, position: int, index: int) -> dict[str, Any] | BadRecord:
    """The row of the line at 0-based ``position`` (line 1 may start with a byte-order mark)."""
    if position == 0 and text.startswith("\ufeff"):
        text = text[1:]
    return json_line_row(text, source, position + 1, index)


def line_records(raw: datasets.Dataset, source: str) -> Iterator[Record]:
    position = index = 0
    for batch in raw.iter(batch_size=BATCH_ROWS):
        for text in batch["text"]:
            if text.strip(BLANK_CHARS):
                yield Record(source, index, line_row(text, source, position, index))
                index += 1
            position += 1


def lines_holding(raw: datasets.Dataset, rows: int) -> int:
    """How many lines of ``raw`` hold its first ``rows`` rows (blank lines hold none)."""
    position = count = 0
    for batch in raw.iter(batch_size=BATCH_ROWS):
        for text in batch["text"]:
            position += 1
            count += bool(text.strip(BLANK_CHARS))
            if count == rows:
                return position
    return position


def table_records(view: datasets.Dataset, source: str, arrow_rows: bool) -> Iterator[Record]:
    index = 0
    for batch in view.iter(batch_size=BATCH_ROWS):
        for row in rows_of(batch) if arrow_rows else columns_to_rows(batch):
            yield Record(source, index, row)
            index += 1


def table_row(view: datasets.Dataset, position: int, arrow_rows: bool) -> dict[str, Any]:
    batch = view[position : position + 1]
    return rows_of(batch)[0] if arrow_rows else next(columns_to_rows(batch))


def _example(row: dict[str, Any] | BadRecord, convert: Callable, shape: Shape | None) -> dict[str, Any] | None:
    """The example of a good row, None for a bad one."""
    if isinstance(row, BadRecord):
        return None
    try:
        return check(row, convert, shape)
    except RowError:
        return None


def _add(out: dict[str, list], kinds: list[int], example: dict[str, Any] | None, kind: int | None = None) -> None:
    """One input row of a map: its example's columns (nulls when there is none) and its kind."""
    kinds.append(kind if kind is not None else BAD if example is None else GOOD)
    for column in out:
        out[column].append(None if example is None else example[column])


def line_batch(texts: list[str], positions: list[int], *, source: str, convert: Callable, shape: Shape | None,
                columns: list[str], schema: Any) -> Any:
    """The map over lines: each line's example (None for a bad or blank one) and its kind."""
    out: dict[str, list] = {column: [] for column in columns}
    kinds = []
    for position, text in zip(positions, texts, strict=True):
        if not text.strip(BLANK_CHARS):
            _add(out, kinds, None, BLANK)
        else:
            _add(out, kinds, _example(line_row(text, source, position, -1), convert, shape))
    out[ROW_COLUMN] = kinds
    return as_table(out, schema)


def object_batch(table: Any, positions: list[int], *, source: str, path: str, spans: LineSpans | None,
                  convert: Callable, shape: Shape | None, columns: list[str], schema: Any) -> Any:
    """The map over the json builder's rows; a row with a null is read from its line."""
    out: dict[str, list] = {column: [] for column in columns}
    kinds: list[int] = []
    fast = openorca_fast(_arrow_columns(table), table.num_rows, convert, shape)
    if (whole := _all_decided(fast, schema)) is not None:
        return whole
    rows: list[dict[str, Any]] | None = None
    lines = LineReader(path, spans)
    try:
        for i, position in enumerate(positions):
            if fast is not None and fast[0][i] is not None:
                _add(out, kinds, {"prompt": fast[0][i], "completion": fast[1][i]})
                continue
            rows = rows if rows is not None else rows_of(table)
            row = rows[i]
            if None in row.values():  # an absent key or a null: only the line says which
                row = lines.row(position, source)
            _add(out, kinds, _example(row, convert, shape))
    finally:
        lines.close()
    out[ROW_COLUMN] = kinds
    return as_table(out, schema)


def object_records(view: datasets.Dataset, source: str, lines: LineReader) -> Iterator[Record]:
    index = 0
    for batch in view.iter(batch_size=BATCH_ROWS):
        for row in rows_of(batch):
            yield Record(source, index, lines.row(index, source) if None in row.values() else row)
            index += 1


def unlike_json(features: Any, kind: str) -> str | None:
    """Why the json builder's rows with these features may not be the line reader's, or None."""
    import datasets

    def plain(feature: Any) -> bool:
        if isinstance(feature, datasets.Value):
            return feature.dtype in ("string", "large_string", "int64", "float64", "bool", "null")
        if isinstance(feature, datasets.List | datasets.LargeList):
            return plain(feature.feature)
        return isinstance(feature, dict) and all(plain(f) for f in feature.values())

    for name, feature in features.items():
        if not plain(feature):
            return f"field {name!r} became {feature}"
    ident = features.get("id")
    if kind == "candidates" and ident is not None and ident not in (datasets.Value("string"), datasets.Value("int64")):
        return f"a candidates id becomes str() of its value, and 'id' became {ident}"
    return None


def table_batch(batch: Any, *, arrow_rows: bool, convert: Callable, shape: Shape | None,
                 columns: list[str], schema: Any) -> Any:
    """The map over Arrow rows: each row's example (None for a bad one) and its kind."""
    out: dict[str, list] = {column: [] for column in columns}
    kinds: list[int] = []
    if arrow_rows:
        count, named = batch.num_rows, _arrow_columns(batch)
    else:
        count, named = len(next(iter(batch.values()), [])), batch.get
    fast = openorca_fast(named, count, convert, shape)
    if (whole := _all_decided(fast, schema)) is not None:
        return whole
    rows: list[dict[str, Any]] | None = None
    for i in range(count):
        if fast is not None and fast[0][i] is not None:
            _add(out, kinds, {"prompt": fast[0][i], "completion": fast[1][i]})
            continue
        rows = rows if rows is not None else rows_of(batch) if arrow_rows else list(columns_to_rows(batch))
        _add(out, kinds, _example(rows[i], convert, shape))
    out[ROW_COLUMN] = kinds
    return as_table(out, schema)


_TEXT_SHAPE = (("prompt", "text"), ("completion", "text"))


def _all_decided(fast: tuple[list, list] | None, schema: Any) -> Any:
    """The map's output when :func:`openorca_fast` decided every row of the batch (all good), else None."""
    if fast is None or None in fast[0]:
        return None
    return as_table({"prompt": fast[0], "completion": fast[1], ROW_COLUMN: [GOOD] * len(fast[0])}, schema)


def _arrow_columns(table: Any) -> Callable[[str], list | None]:
    """A column of an Arrow table or record batch as a Python list, None when it has no such column."""
    names = set(table.column_names)
    return lambda name: table.column(name).to_pylist() if name in names else None


def openorca_fast(column: Callable[[str], list | None], count: int, convert: Callable, shape: Shape | None
                  ) -> tuple[list[str | None], list[str | None]] | None:
    """SFT examples of OpenOrca rows decided a column at a time: ``(prompts, completions)`` with None for each row
    that needs :func:`~kuberlhf.data.formats.sft_example`'s own checks (a missing, null, non-string or blank
    question or response, a system prompt that is not a string), or None when the batch cannot be read so (not
    the sft converter; a ``messages`` column, which takes precedence; an example shape of message lists). A row
    decided here is what ``sft_example`` makes of it: ``question.strip()`` and the stripped system prompt (null or
    absent: none) rendered with the templates, and ``" " + response.strip()``."""
    if getattr(convert, "func", None) is not sft_example or shape not in (None, _TEXT_SHAPE):
        return None
    if column("messages") is not None:
        return None
    questions, responses = column("question"), column("response")
    if questions is None or responses is None:
        return None
    systems = column("system_prompt") or [None] * count
    templates = convert.keywords
    prompts: list[str | None] = [None] * count
    completions: list[str | None] = [None] * count
    for i, (question, response, system) in enumerate(zip(questions, responses, systems, strict=True)):
        if (question.__class__ is str and question and not question.isspace() and response.__class__ is str
                and response and not response.isspace() and (system is None or system.__class__ is str)):
            prompts[i] = render_prompt(question.strip(), system.strip() if system else "", **templates)
            completions[i] = " " + response.strip()
    return prompts, completions


def as_table(out: dict[str, list], schema: Any) -> Any:
    """A map's output as an Arrow table of the output schema (written as it is, not value by value)."""
    import pyarrow as pa

    return pa.Table.from_pydict(out, schema=schema)
