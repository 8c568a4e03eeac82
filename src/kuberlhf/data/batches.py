"""What the Arrow loader's batched map runs (:mod:`kuberlhf.data.tables`), and the records it reads again.

Each map function takes a batch of rows (lines of text, the json builder's rows, or Arrow rows of a parquet file
or Hugging Face dataset), checks every row with :func:`kuberlhf.data.validate.check` and returns an Arrow table:
the example's columns (null for a row that is not good) and :data:`ROW_COLUMN`, whether each row was good, bad or
blank. The record iterators give the same rows one at a time (to find the first good example, and to word a bad
row's message) as the line and file readers of :mod:`kuberlhf.data.sources` give them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kuberlhf.data.files import LineReader, LineSpans
from kuberlhf.data.formats import RowError
from kuberlhf.data.hub import _columns_to_rows
from kuberlhf.data.records import BATCH_ROWS, BadRecord, Record
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
        for row in batch.to_pylist() if arrow_rows else _columns_to_rows(batch):
            yield Record(source, index, row)
            index += 1


def table_row(view: datasets.Dataset, position: int, arrow_rows: bool) -> dict[str, Any]:
    batch = view[position : position + 1]
    return batch.to_pylist()[0] if arrow_rows else next(_columns_to_rows(batch))


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
    kinds = []
    lines = LineReader(path, spans)
    try:
        for position, row in zip(positions, table.to_pylist(), strict=True):
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
        for row in batch.to_pylist():
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
    kinds = []
    for row in batch.to_pylist() if arrow_rows else _columns_to_rows(batch):
        _add(out, kinds, _example(row, convert, shape))
    out[ROW_COLUMN] = kinds
    return as_table(out, schema)


def as_table(out: dict[str, list], schema: Any) -> Any:
    """A map's output as an Arrow table of the output schema (written as it is, not value by value)."""
    import pyarrow as pa

    return pa.Table.from_pydict(out, schema=schema)
