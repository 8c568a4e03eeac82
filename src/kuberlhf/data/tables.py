"""Non-streaming loads on Arrow: each file memory-mapped from the cache, each row checked in a batched map.

:func:`load_table` reads what :func:`~kuberlhf.data.sources.resolve` names, file by file in order, into
``datasets`` Arrow files under :func:`data_cache` (``$KUBERLHF_CACHE/datasets``), and checks every row with the
same code as the streaming loader (:mod:`kuberlhf.data.validate`) in a batched ``Dataset.map`` (``num_proc``
processes). The map writes the examples and one small column saying which rows were good, bad or blank; the
counts, and the messages of the bad rows, come from that column, so a second load of the same file reuses both
the Arrow copy and the checked rows from the cache and reports the same counts.

* JSON Lines (``.jsonl``, and ``.json`` files holding JSON Lines), in the first of three ways that gives the
  rows the line reader gives:

  1. ``load_dataset("json")``, when a scan of the bytes shows one object on each non-blank line, the builder
     makes as many rows, and its features are JSON types only. It writes null also for an absent key, so a row
     with a null is read from its own line (``json.loads``); the rest are the builder's rows, which the checks
     judge as they judge the line reader's (same keys and strings; numbers, key order and nested nulls differ
     at most in a bad row's message, which is worded from the row's own line);
  2. else ``load_dataset("text")``, each line kept as it is and parsed in the map with ``json.loads``: the
     line reader's rows by construction, a malformed line a bad row like any other (the json builder infers
     timestamps from date-like strings, floats beside fractions, reads two objects on one line as two rows
     and refuses a whole file for one bad line);
  3. else row by row (below).
* Parquet: ``load_dataset("parquet")``; rows are the Arrow rows, as the file reader gives them.
* Hugging Face datasets (the Hub, ``save_to_disk``): already Arrow; the map runs over them.
* Read row by row, as before, with the examples written to an Arrow file in batches: files the text builder
  cannot take (not UTF-8, empty, a carriage return that ends no line: the line reader splits at line feeds only),
  ``.json`` files holding one JSON document (it is parsed whole), Deep Lake and plug-in sources.

``s3://`` files are downloaded once into the cache (named by their ETag) through
:mod:`kuberlhf.artifacts.storage`, then read as local files; messages still name the ``s3://`` URI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuberlhf.artifacts.cache import cache_root
from kuberlhf.data.batches import (
    BAD,
    BLANK,
    GOOD,
    ROW_COLUMN,
    line_batch,
    line_records,
    line_row,
    lines_holding,
    object_batch,
    object_records,
    table_batch,
    table_records,
    table_row,
    unlike_json,
)
from kuberlhf.data.files import (
    LineReader,
    holds_json_lines,
    line_spans,
    local_copy,
    lone_carriage_return,
    quick_line_count,
)
from kuberlhf.data.hub import hf_disk_dataset, hf_hub_dataset
from kuberlhf.data.records import Record
from kuberlhf.data.sources import DataFile, file_records, iter_records, resolve
from kuberlhf.data.validate import Validator

if TYPE_CHECKING:
    import datasets
    import numpy as np

log = logging.getLogger(__name__)

MAP_BATCH = 1000


def data_cache() -> Path:
    """Where loads keep their Arrow files and S3 downloads: ``$KUBERLHF_CACHE/datasets``."""
    return cache_root() / "datasets"


def load_table(
    path: str,
    validator: Validator,
    *,
    kind: str,
    key: str,
    split: str,
    format: str,
    num_proc: int | None,
    name: str | None,
    data_dir: str | None,
) -> datasets.Dataset:
    """The examples of ``path`` as one memory-mapped ``Dataset``; ``validator`` counts and judges the rows.

    ``key`` names what the rows are checked against (kind and templates): with the file's Arrow copy and the
    code of the checks it makes the fingerprint under which the checked rows are cached.
    """
    import datasets

    source = resolve(path, format)
    loader = _Loader(validator, kind, key, data_cache(), num_proc)
    if source.kind == "files":
        for file in source.files:
            if validator.remaining == 0:
                break
            loader.file(file)
    elif source.kind == "hub":
        table = hf_hub_dataset(source.location, source.shown, split, False, local_miss=source.local_miss,
                               subset=name, data_dir=data_dir)
        loader.table(table, source.shown, arrow_rows=False)
    elif source.kind == "disk":
        table, shown = hf_disk_dataset(source.location, source.shown, split, source.storage_options)
        loader.table(table, shown, arrow_rows=False)
    else:
        records = iter_records(path, split=split, format=format, name=name, data_dir=data_dir)
        loader.rows(records, identity=json.dumps([path, split, format, name, data_dir]))
    validator.finish(path)
    parts = loader.parts
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


class _LineByLine(Exception):
    """This file is read row by row; the message says why."""


class _AsText(Exception):
    """This JSON Lines file is read as lines of text (the json builder's rows are not the line reader's)."""


class _Loader:
    def __init__(self, validator: Validator, kind: str, key: str, cache: Path, num_proc: int | None) -> None:
        self.v = validator
        self.kind = kind
        self.key = key
        self.cache = cache
        self.num_proc = num_proc if num_proc and num_proc > 1 else None
        self.parts: list[datasets.Dataset] = []
        self._features: datasets.Features | None = None

    # ------------------------------------------------------------------ sources

    def file(self, file: DataFile) -> None:
        local = local_copy(file, self.cache)
        try:
            if file.fmt == "parquet":
                self.table(self._load("parquet", local), file.source, arrow_rows=True)
            elif file.fmt == "jsonl" or (file.fmt == "json" and holds_json_lines(local)):
                try:
                    self._objects(local, file.source)
                except _AsText as why:
                    log.info("%s: read as lines of text (%s)", file.source, why)
                    self._json_lines(local, file.source)
            else:
                raise _LineByLine("a JSON document is parsed whole")
        except _LineByLine as why:
            log.info("%s: read row by row (%s)", file.source, why)
            stat = local.stat()
            with open(local, "rb") as handle:
                self.rows(file_records(handle, file.source, file.fmt),
                          identity=json.dumps([file.source, str(local), stat.st_size, stat.st_mtime_ns]))

    def table(self, raw: datasets.Dataset, source: str, *, arrow_rows: bool) -> None:
        """Rows that are already Arrow: a parquet file's (read as Arrow rows) or a Hugging Face dataset's."""
        limit = self.v.remaining
        if limit is not None and limit < len(raw):
            raw = raw.select(range(limit))
        view = raw.with_format("arrow") if arrow_rows else raw
        self._reference(table_records(view, source, arrow_rows))
        out, kinds = self._map(view, table_batch, {"arrow_rows": arrow_rows})

        def message_of(i: int) -> str:
            position = int(bad[i])
            return self._message(Record(source, position, table_row(view, position, arrow_rows)))

        bad = _positions(kinds, BAD)
        self.v.counted(len(raw), bad, message_of)
        self._keep(out, kinds)

    def rows(self, records: Iterable[Record], *, identity: str) -> None:
        """Records read row by row, checked one at a time, their examples written to an Arrow file."""
        import datasets
        from datasets.arrow_writer import ArrowWriter

        final = self.cache / "rows" / f"{_fingerprint(identity, self.key, self.v.shape, self.v.remaining)}.arrow"
        tmp = final.with_name(f"{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        writer = None
        try:
            for example in self.v.examples(records):
                if writer is None:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    writer = ArrowWriter(features=self.features(), path=str(tmp), writer_batch_size=MAP_BATCH)
                writer.write(example)
            if writer is None:
                return
            writer.finalize()
            os.replace(tmp, final)
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        finally:
            tmp.unlink(missing_ok=True)
        self.parts.append(datasets.Dataset.from_file(str(final)))

    def _objects(self, local: Path, source: str) -> None:
        """JSON Lines through ``load_dataset("json")`` when its rows are provably the line reader's: one object
        on each non-blank line (as many rows as such lines), only JSON types (no timestamps, no mixed types).
        A row with a null is read from its line (the builder writes null also for an absent key), and so is
        each bad row's message; every other row is the builder's, which the checks judge alike."""
        with ThreadPoolExecutor(1) as pool:  # the scan of the bytes runs while the builder parses them
            scan = pool.submit(quick_line_count, local)
            try:
                raw, refused = self._load("json", local), None
            except _LineByLine as why:
                raw, refused = None, why
            spans, lines_count = None, scan.result()
        if lines_count is None:
            if (spans := line_spans(local)) is None:
                raise _AsText("a line is not one JSON object, or a carriage return ends no line")
            lines_count = len(spans)
        if raw is None:
            raise _AsText(str(refused)) from refused
        if len(raw) != lines_count:
            raise _AsText(f"the json builder made {len(raw)} rows of {lines_count} lines")
        if unlike := unlike_json(raw.features, self.kind):
            raise _AsText(unlike)
        limit = self.v.remaining
        if limit is not None and limit < len(raw):
            raw = raw.select(range(limit))
        view = raw.with_format("arrow")
        lines = LineReader(str(local), spans, rows=len(raw))
        try:
            nulls = any(column.null_count for column in view.data.columns)
            kwargs = {"source": source, "path": str(local), "spans": lines.spans if nulls else None}
            try:  # Arrow holds the bytes as they are; they are decoded when rows become Python objects
                self._reference(object_records(view, source, lines))
                out, kinds = self._map(view, object_batch, kwargs, with_indices=True)
            except UnicodeDecodeError as err:
                raise _AsText("not UTF-8 text") from err
            bad = _positions(kinds, BAD)
            self.v.counted(len(raw), bad, lambda i: self._message(Record(source, int(bad[i]),
                                                                          lines.row(int(bad[i]), source))))
        finally:
            lines.close()
        self._keep(out, kinds)

    def _json_lines(self, local: Path, source: str) -> None:
        if lone_carriage_return(local):
            raise _LineByLine("a carriage return ends no line")
        raw = self._load("text", local)
        limit = self.v.remaining
        if limit is not None and limit < len(raw):
            raw = raw.select(range(lines_holding(raw, limit)))
        self._reference(line_records(raw, source))
        out, kinds = self._map(raw, line_batch, {"source": source}, input_columns=["text"], with_indices=True)
        nonblank = kinds != BLANK

        def message_of(i: int) -> str:
            position = int(bad[i])
            index = int(nonblank[:position].sum())
            return self._message(Record(source, index, line_row(raw[position]["text"], source, position, index)))

        bad = _positions(kinds, BAD)
        self.v.counted(int(nonblank.sum()), bad, message_of)
        self._keep(out, kinds)

    # ------------------------------------------------------------------ steps

    def _load(self, builder: str, local: Path) -> datasets.Dataset:
        import datasets

        try:
            return datasets.load_dataset(builder, data_files=[str(local)], split="train", cache_dir=str(self.cache))
        except Exception as err:  # the builder refuses the file: read it row by row
            raise _LineByLine(f"the {builder} builder refused it: {type(err).__name__}") from err

    def _reference(self, records: Iterable[Record]) -> None:
        """Find the first good example (its shape is the one every row must have) unless one was found."""
        if self.v.shape is None:
            for record in records:
                if self.v.problem(record)[0] is not None:
                    break

    def features(self) -> datasets.Features:
        import datasets

        if self._features is None:
            self._features = datasets.Dataset.from_list([self.v.first_example]).features
        return self._features

    def _map(self, raw: datasets.Dataset, function: Callable, kwargs: dict, **map_kwargs: Any
             ) -> tuple[datasets.Dataset, np.ndarray]:
        import datasets

        shape = self.v.shape
        columns = [column for column, _ in shape] if shape else []
        features = datasets.Features({**(self.features() if shape else {}), ROW_COLUMN: datasets.Value("int8")})
        named = {k: v for k, v in kwargs.items() if isinstance(v, str | bool)}  # not the spans (the file's own)
        fingerprint = _fingerprint(raw._fingerprint, function.__name__, named, self.key, shape)
        (self.cache / "checked").mkdir(parents=True, exist_ok=True)
        out = raw.map(
            function, batched=True, batch_size=MAP_BATCH, remove_columns=raw.column_names, features=features,
            fn_kwargs={**kwargs, "convert": self.v.convert, "shape": shape, "columns": columns,
                       "schema": features.arrow_schema},
            num_proc=self.num_proc, new_fingerprint=fingerprint,
            cache_file_name=str(self.cache / "checked" / f"{fingerprint}.arrow"), desc="Checking rows", **map_kwargs,
        ).with_format(None)
        kinds = out.data.column(ROW_COLUMN).to_numpy()
        return out, kinds

    def _message(self, record: Record) -> str:
        return self.v.problem(record)[1] or ""

    def _keep(self, out: datasets.Dataset, kinds: np.ndarray) -> None:
        good = kinds == GOOD
        if good.all() and len(out):
            self.parts.append(out.remove_columns(ROW_COLUMN))
        elif good.any():
            keep = _positions(kinds, GOOD)
            fingerprint = _fingerprint(out._fingerprint, "kept")
            kept = out.select(keep, new_fingerprint=fingerprint,
                              indices_cache_file_name=str(self.cache / "checked" / f"{fingerprint}.arrow"))
            self.parts.append(kept.remove_columns(ROW_COLUMN))


def _positions(kinds: np.ndarray, kind: int) -> np.ndarray:
    import numpy as np

    return np.flatnonzero(kinds == kind)


@lru_cache(maxsize=1)
def _code_version() -> str:
    """The checks' code: cached rows of another version are not reused."""
    from kuberlhf.data import batches, files, formats, hub, records, sources, validate

    digest = hashlib.sha256()
    for module in (batches, files, formats, hub, records, sources, validate):
        digest.update(Path(module.__file__ or "").read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([_code_version(), *parts], default=str).encode()).hexdigest()[:32]
