"""Raw rows from any dataset source: local or S3 files, Hugging Face, Deep Lake, demo.

:func:`iter_rows` yields plain ``dict`` rows and raises :class:`DataError` for a source
that cannot be read. :func:`iter_records` is the same stream with positions attached
(the file a row came from and its 0-based index there) and with unparseable JSON lines
reported as :class:`BadRecord` instead of raised, so a caller can skip them.
:func:`resolve` says what a path names without reading any row (the Arrow loader,
:mod:`kuberlhf.data.tables`, reads the same sources its own way).

Sources and how ``format="auto"`` picks them:

* ``<scheme>://...`` of a data-source plug-in (:mod:`kuberlhf.plugins`), e.g. the demo task's ``demo://``;
* ``hf://org/name``: a Hugging Face Hub dataset; ``al://``/``hub://``: Deep Lake;
* a local path or ``s3://`` URI: a ``.jsonl``/``.json``/``.parquet`` file, or a directory
  (prefix) holding a Deep Lake 4 dataset (``_deeplake_log/``), a ``save_to_disk``
  dataset (``dataset_dict.json`` or ``state.json``), or else such files (read in sorted
  order, others ignored); ``format="deeplake"`` forces Deep Lake;
* an ``org/name`` that is no local path: a Hugging Face Hub dataset.

S3 files are opened with :mod:`kuberlhf.artifacts.storage`; Hugging Face and Deep Lake datasets
are read by :mod:`kuberlhf.data.hub`.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kuberlhf import plugins
from kuberlhf.data.hub import deeplake_records, hf_disk_records, hf_hub_records
from kuberlhf.data.records import BATCH_ROWS, BadRecord, Record, rows_of
from kuberlhf.errors import DataError, one_line

FORMATS = ("auto", "jsonl", "json", "parquet", "hf", "deeplake", "demo")
FILE_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
DEEPLAKE_MARKER = "_deeplake_log"
HF_DISK_MARKERS = ("dataset_dict.json", "state.json")
_BUILTIN = {"", "s3", "hf", "al", "hub", "file", *FILE_FORMATS.values(), "deeplake"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SUPPORTED = (
    "local or s3:// .jsonl/.json/.parquet files or directories of them, Hugging Face "
    "save_to_disk directories or hub names (org/name, hf://org/name), Deep Lake 4 "
    "datasets (directory, file://, al://, hub://, s3:// with format=deeplake), demo://"
)


# ---------------------------------------------------------------------- public API


def iter_rows(
    path: str,
    *,
    split: str = "train",
    format: str = "auto",
    streaming: bool = False,
    name: str | None = None,
    data_dir: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the raw rows of ``path`` as dicts; raise :class:`DataError` on a bad source.

    ``split``, ``name`` (subset) and ``data_dir`` select what a Hugging Face Hub dataset loads
    (``split`` also the split of a ``save_to_disk`` dataset); ``format`` is one of
    :data:`FORMATS`; ``streaming`` streams Hub datasets (files always stream).
    """
    records = iter_records(path, split=split, format=format, streaming=streaming, name=name, data_dir=data_dir)
    for record in records:
        if isinstance(record.row, BadRecord):
            raise DataError(record.row.message)
        yield record.row


def iter_records(
    path: str,
    *,
    split: str = "train",
    format: str = "auto",
    streaming: bool = False,
    name: str | None = None,
    data_dir: str | None = None,
) -> Iterator[Record]:
    """Like :func:`iter_rows`, with each row's source and index, and bad JSON as records."""
    source = resolve(str(path), format)
    if source.kind == "files":
        for file in source.files:
            with file.open() as handle:
                yield from file_records(handle, file.source, file.fmt)
    elif source.kind == "hub":
        yield from hf_hub_records(source.location, source.shown, split, streaming, local_miss=source.local_miss,
                                  subset=name, data_dir=data_dir)
    elif source.kind == "disk":
        yield from hf_disk_records(source.location, source.shown, split, storage_options=source.storage_options)
    elif source.kind == "deeplake":
        yield from deeplake_records(source.location)
    else:
        assert source.reader is not None
        for index, row in enumerate(source.reader(source.location)):
            yield Record(source.location, index, row)


@dataclass(frozen=True)
class DataFile:
    """One data file: ``source`` names it in messages, ``location`` is its local path or ``s3://`` URI."""

    source: str
    fmt: str
    location: str

    @property
    def remote(self) -> bool:
        return self.location.startswith("s3://")

    def open(self) -> IO[bytes]:
        if self.remote:
            from kuberlhf.artifacts.storage import open_uri

            return open_uri(self.location, "rb")
        return open(self.location, "rb")


@dataclass
class Source:
    """What a path names: ``files`` (kind ``"files"``), or a dataset another library reads (``"hub"``,
    ``"disk"``, ``"deeplake"``, ``"plugin"``) at ``location``, shown in messages as ``shown``."""

    kind: str
    location: str = ""
    shown: str = ""
    files: list[DataFile] = field(default_factory=list)
    local_miss: bool = False  # a hub name tried because no such local path exists
    storage_options: dict[str, Any] | None = None
    reader: Callable[[str], Iterable[dict[str, Any]]] | None = None


def resolve(path: str, format: str = "auto") -> Source:
    """What ``path`` names; :class:`DataError` for an unsupported, missing or empty source."""
    if format not in FORMATS:
        raise DataError(f"{path}: unknown format {format!r}; supported formats: {', '.join(FORMATS)}")
    plugin = plugins.scheme(path) if format == "auto" else format
    if plugin not in _BUILTIN and (reader := plugins.load("data_sources", plugin)) is not None:
        return Source("plugin", location=path, shown=path, reader=reader)
    if path.startswith("hf://"):
        return Source("hub", location=_strip_hf(path), shown=path)
    if path.startswith(("al://", "hub://")):
        if format not in ("auto", "deeplake"):
            raise DataError(f"{path}: a Deep Lake URL cannot be read as format {format!r}")
        return Source("deeplake", location=path, shown=path)
    if path.startswith("s3://"):
        return _s3(path, format)
    if "://" in path and not path.startswith("file://"):
        raise DataError(f"{path}: unsupported URL scheme; supported sources: {_SUPPORTED}")
    return _local(path, format)


# ---------------------------------------------------------------------- dispatch


def _strip_hf(path: str) -> str:
    name = path[len("hf://") :]
    return name[len("datasets/") :] if name.startswith("datasets/") else name


def _file_format(name: str, path: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in FILE_FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from extension {suffix or '(none)'!r}; "
            f"pass format=jsonl|json|parquet|hf|deeplake (supported sources: {_SUPPORTED})"
        )
    return FILE_FORMATS[suffix]


# the bookkeeping of a kuberlhf artifact (a candidates or feedback dataset), never data rows
ARTIFACT_FILES = ("manifest.json", "metrics.json")


def _pick_files(names: Iterable[str], format: str) -> list[str]:
    """Data files among ``names`` (sorted), restricted to ``format`` unless auto."""
    picked = []
    for name in sorted(names):
        base = os.path.basename(name.rstrip("/"))
        suffix = os.path.splitext(base)[1].lower()
        if base.startswith((".", "_")) or suffix not in FILE_FORMATS or base in ARTIFACT_FILES:
            continue
        if format in ("auto", FILE_FORMATS[suffix]):
            picked.append(name)
    return picked


def _local(path: str, format: str) -> Source:
    local = path[len("file://") :] if path.startswith("file://") else path
    p = Path(local).expanduser()
    if not p.exists():
        if format == "hf" or (format == "auto" and _looks_like_hub_name(path)):
            return Source("hub", location=path, shown=path, local_miss=True)
        raise DataError(f"{path}: no such file or directory")
    if p.is_file():
        fmt = _file_format(p.name, path) if format == "auto" else format
        if fmt in ("hf", "deeplake"):
            raise DataError(f"{path}: format {fmt!r} needs a directory, got a file")
        return Source("files", files=[DataFile(path, fmt, str(p))])
    names = {child.name for child in p.iterdir()}
    if format == "deeplake" or (format == "auto" and DEEPLAKE_MARKER in names):
        return Source("deeplake", location=str(p.resolve()))
    if format == "hf" or (format == "auto" and names & set(HF_DISK_MARKERS)):
        return Source("disk", location=str(p), shown=path)
    files = _pick_files([str(child) for child in p.iterdir() if child.is_file()], format)
    if not files:
        wanted = "/".join(FILE_FORMATS) if format == "auto" else f".{format}"
        raise DataError(f"{path}: directory holds no {wanted} files (supported sources: {_SUPPORTED})")
    return Source("files", files=[DataFile(file, _file_format(file, file), file) for file in files])


def _looks_like_hub_name(path: str) -> bool:
    return bool(_HUB_NAME.match(path)) and os.path.splitext(path)[1].lower() not in FILE_FORMATS


def _s3(uri: str, format: str) -> Source:
    from kuberlhf.artifacts.storage import fs_for, list_prefix, stat_object
    from kuberlhf.errors import StorageError, TransientStorageError

    if format == "deeplake":
        return Source("deeplake", location=uri)
    try:
        is_file = format in ("auto", "jsonl", "json", "parquet") and stat_object(uri) is not None
    except TransientStorageError:
        raise  # the store is down: the run is retried (exit 200)
    except StorageError as err:
        raise DataError(str(err)) from None
    if is_file:
        fmt = _file_format(uri, uri) if format == "auto" else format
        return Source("files", files=[DataFile(uri, fmt, uri)])
    if os.path.splitext(uri)[1].lower() in FILE_FORMATS:
        raise DataError(f"{uri}: no such object")
    try:
        listing = list_prefix(uri)
    except TransientStorageError:
        raise
    except StorageError as err:
        raise DataError(str(err)) from None
    if not listing:
        raise DataError(f"{uri}: no such object or prefix")
    names = {os.path.basename(name) for name, _ in listing}
    if format == "auto" and DEEPLAKE_MARKER in names:
        return Source("deeplake", location=uri)
    if format == "hf" or (format == "auto" and names & set(HF_DISK_MARKERS)):
        fs = fs_for(uri)  # datasets.load_from_disk reads through fsspec (s3fs)
        return Source("disk", location=uri, shown=uri, storage_options=getattr(fs, "storage_options", None))
    files = _pick_files([name for name, is_file in listing if is_file], format)
    if not files:
        wanted = "/".join(FILE_FORMATS) if format == "auto" else f".{format}"
        raise DataError(f"{uri}: prefix holds no {wanted} files (supported sources: {_SUPPORTED})")
    return Source("files", files=[DataFile(name, _file_format(name, name), name) for name in files])


# ---------------------------------------------------------------------- files


def file_records(handle: IO[bytes], source: str, fmt: str) -> Iterator[Record]:
    """The records of one data file read from ``handle`` (``fmt``: jsonl, json or parquet), named ``source``."""
    if fmt == "jsonl":
        yield from _read_jsonl(handle, source)
    elif fmt == "json":
        yield from _read_json(handle, source)
    elif fmt == "parquet":
        yield from _read_parquet(handle, source)
    else:
        raise DataError(f"{source}: format {fmt!r} cannot read a single file")


def _json_row(obj: Any, source: str, index: int) -> dict[str, Any] | BadRecord:
    if isinstance(obj, dict):
        return obj
    return BadRecord(f"{source} row {index}: row must be a JSON object, got {type(obj).__name__}")


def json_line_row(text: str, source: str, lineno: int, index: int) -> dict[str, Any] | BadRecord:
    """The row of one decoded, non-blank JSON Lines line: line ``lineno`` (1-based) of ``source``, its
    ``index``-th row (0-based, blank lines not counted)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return BadRecord(f"{source} line {lineno}: invalid JSON ({err.msg})")
    return _json_row(obj, source, index)


def raw_line_row(raw: bytes, source: str, lineno: int, index: int) -> dict[str, Any] | BadRecord:
    """Like :func:`json_line_row` for the line's bytes (line 1 may start with a byte-order mark)."""
    try:
        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(f"{source} line {lineno}: not UTF-8 text ({err.reason})")
    return json_line_row(text, source, lineno, index)


def _read_jsonl(handle: IO[bytes], source: str) -> Iterator[Record]:
    """One JSON object per line; blank lines are ignored, line numbers are 1-based."""
    index = 0
    for lineno, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        yield Record(source, index, raw_line_row(raw, source, lineno, index))
        index += 1


def _read_json(handle: IO[bytes], source: str) -> Iterator[Record]:
    raw = handle.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines in a .json file
            yield from _read_jsonl(io.BytesIO(raw), source)
            return
        raise DataError(f"{source} line {err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, dict):
        rows = next((data[k] for k in ("data", "rows") if isinstance(data.get(k), list)), None)
        if rows is None:
            yield Record(source, 0, data)  # a file holding a single row
            return
        data = rows
    if not isinstance(data, list):
        raise DataError(
            f"{source}: a .json file must hold an array of rows or an object with a "
            f"'data' or 'rows' list, got {type(data).__name__}"
        )
    for index, obj in enumerate(data):
        yield Record(source, index, _json_row(obj, source, index))


def _read_parquet(handle: IO[bytes], source: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pre_buffer keeps every column chunk read so far until the reader is gone: a stream over a
        # parquet file would then hold the whole file by its end
        parquet = pq.ParquetFile(handle, pre_buffer=False)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{source}: not a readable parquet file ({one_line(err)})") from None
    index = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            for row in rows_of(batch):
                yield Record(source, index, row)
                index += 1
