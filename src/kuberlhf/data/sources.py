"""Raw rows from any dataset source: local or S3 files, Hugging Face, Deep Lake, demo.

:func:`iter_rows` yields plain ``dict`` rows and raises :class:`DataError` for a source
that cannot be read. :func:`iter_records` is the same stream with positions attached
(the file a row came from and its 0-based index there) and with unparseable JSON lines
reported as :class:`BadRecord` instead of raised, so a caller can skip them.

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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from kuberlhf import plugins
from kuberlhf.data.hub import _deeplake, _hf_disk, _hf_hub
from kuberlhf.data.records import BATCH_ROWS, BadRecord, Record, _one_line
from kuberlhf.errors import DataError

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
    path: str, *, split: str = "train", format: str = "auto", streaming: bool = False
) -> Iterator[dict[str, Any]]:
    """Yield the raw rows of ``path`` as dicts; raise :class:`DataError` on a bad source.

    ``split`` selects a split of Hugging Face datasets; ``format`` is one of
    :data:`FORMATS`; ``streaming`` streams Hub datasets (files always stream).
    """
    for record in iter_records(path, split=split, format=format, streaming=streaming):
        if isinstance(record.row, BadRecord):
            raise DataError(record.row.message)
        yield record.row


def iter_records(
    path: str, *, split: str = "train", format: str = "auto", streaming: bool = False
) -> Iterator[Record]:
    """Like :func:`iter_rows`, with each row's source and index, and bad JSON as records."""
    path = str(path)
    if format not in FORMATS:
        raise DataError(f"{path}: unknown format {format!r}; supported formats: {', '.join(FORMATS)}")
    plugin = plugins.scheme(path) if format == "auto" else format
    if plugin not in _BUILTIN and (source := plugins.load("data_sources", plugin)) is not None:
        for index, row in enumerate(source(path)):
            yield Record(path, index, row)
    elif path.startswith("hf://"):
        yield from _hf_hub(_strip_hf(path), path, split, streaming)
    elif path.startswith(("al://", "hub://")):
        if format not in ("auto", "deeplake"):
            raise DataError(f"{path}: a Deep Lake URL cannot be read as format {format!r}")
        yield from _deeplake(path)
    elif path.startswith("s3://"):
        yield from _s3(path, split, format)
    elif "://" in path and not path.startswith("file://"):
        raise DataError(f"{path}: unsupported URL scheme; supported sources: {_SUPPORTED}")
    else:
        yield from _local(path, split, format, streaming)


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


def _local(path: str, split: str, format: str, streaming: bool) -> Iterator[Record]:
    local = path[len("file://") :] if path.startswith("file://") else path
    p = Path(local).expanduser()
    if not p.exists():
        if format == "hf" or (format == "auto" and _looks_like_hub_name(path)):
            yield from _hf_hub(path, path, split, streaming, local_miss=True)
            return
        raise DataError(f"{path}: no such file or directory")
    if p.is_file():
        fmt = _file_format(p.name, path) if format == "auto" else format
        if fmt in ("hf", "deeplake"):
            raise DataError(f"{path}: format {fmt!r} needs a directory, got a file")
        with open(p, "rb") as handle:
            yield from _read_file(handle, path, fmt)
        return
    names = {child.name for child in p.iterdir()}
    if format == "deeplake" or (format == "auto" and DEEPLAKE_MARKER in names):
        yield from _deeplake(str(p.resolve()))
        return
    if format == "hf" or (format == "auto" and names & set(HF_DISK_MARKERS)):
        yield from _hf_disk(str(p), path, split)
        return
    files = _pick_files([str(child) for child in p.iterdir() if child.is_file()], format)
    if not files:
        wanted = "/".join(FILE_FORMATS) if format == "auto" else f".{format}"
        raise DataError(f"{path}: directory holds no {wanted} files (supported sources: {_SUPPORTED})")
    for file in files:
        with open(file, "rb") as handle:
            yield from _read_file(handle, file, _file_format(file, file))


def _looks_like_hub_name(path: str) -> bool:
    return bool(_HUB_NAME.match(path)) and os.path.splitext(path)[1].lower() not in FILE_FORMATS


def _s3(uri: str, split: str, format: str) -> Iterator[Record]:
    from kuberlhf.artifacts.storage import fs_for, open_uri

    if format == "deeplake":
        yield from _deeplake(uri)
        return
    fs = fs_for(uri)
    try:
        is_file = format in ("auto", "jsonl", "json", "parquet") and fs.isfile(uri)
    except OSError as err:
        raise DataError(f"{uri}: cannot read ({type(err).__name__}: {_one_line(err)})") from None
    if is_file:
        fmt = _file_format(uri, uri) if format == "auto" else format
        with open_uri(uri, "rb") as handle:
            yield from _read_file(handle, uri, fmt)
        return
    if os.path.splitext(uri)[1].lower() in FILE_FORMATS:
        raise DataError(f"{uri}: no such object")
    try:
        listing = fs.ls(uri.rstrip("/"), detail=True)
    except FileNotFoundError:
        listing = []
    except OSError as err:
        raise DataError(f"{uri}: cannot list ({type(err).__name__}: {_one_line(err)})") from None
    if not listing:
        raise DataError(f"{uri}: no such object or prefix")
    names = {os.path.basename(str(e["name"]).rstrip("/")) for e in listing}
    if format == "auto" and DEEPLAKE_MARKER in names:
        yield from _deeplake(uri)
        return
    if format == "hf" or (format == "auto" and names & set(HF_DISK_MARKERS)):
        yield from _hf_disk(uri, uri, split, storage_options=getattr(fs, "storage_options", None))
        return
    files = _pick_files([str(e["name"]) for e in listing if e.get("type") == "file"], format)
    if not files:
        wanted = "/".join(FILE_FORMATS) if format == "auto" else f".{format}"
        raise DataError(f"{uri}: prefix holds no {wanted} files (supported sources: {_SUPPORTED})")
    for key in files:
        file_uri = "s3://" + key.removeprefix("s3://")
        with open_uri(file_uri, "rb") as handle:
            yield from _read_file(handle, file_uri, _file_format(key, file_uri))


# ---------------------------------------------------------------------- files


def _read_file(handle: IO[bytes], source: str, fmt: str) -> Iterator[Record]:
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


def _read_jsonl(handle: IO[bytes], source: str) -> Iterator[Record]:
    """One JSON object per line; blank lines are ignored, line numbers are 1-based."""
    index = 0
    for lineno, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        row: dict[str, Any] | BadRecord
        try:
            obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except UnicodeDecodeError as err:
            row = BadRecord(f"{source} line {lineno}: not UTF-8 text ({err.reason})")
        except json.JSONDecodeError as err:
            row = BadRecord(f"{source} line {lineno}: invalid JSON ({err.msg})")
        else:
            row = _json_row(obj, source, index)
        yield Record(source, index, row)
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
        parquet = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{source}: not a readable parquet file ({_one_line(err)})") from None
    index = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                yield Record(source, index, row)
                index += 1
