"""Data files on the local disk for the Arrow loader (:mod:`kuberlhf.data.tables`): ``s3://`` objects
downloaded into the cache, and what a file's bytes say about how it must be read to give the rows the
line reader (:mod:`kuberlhf.data.sources`) gives."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kuberlhf.data.records import BadRecord
from kuberlhf.data.sources import DataFile, raw_line_row
from kuberlhf.errors import DataError

if TYPE_CHECKING:
    import numpy as np

_CHUNK = 16 << 20
_JSON_SPACE = re.compile(r"[^ \t\n\r]")  # json.loads' whitespace is these four
_MAX_FIRST_LINE = 64 << 20


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def local_copy(file: DataFile, cache: Path) -> Path:
    """A local file, or an ``s3://`` object downloaded once into ``cache/downloads`` (named by its ETag)."""
    if not file.remote:
        return Path(file.location)
    from kuberlhf.artifacts.storage import download_object, stat_object
    from kuberlhf.errors import StorageError, TransientStorageError

    try:
        info = stat_object(file.location)
        if info is None:
            raise DataError(f"{file.location}: no such object")
        suffix = os.path.splitext(file.location)[1]
        target = cache / "downloads" / f"{digest(file.location)}-{digest(info['etag'] or str(info['size']))}{suffix}"
        if not (target.is_file() and target.stat().st_size == info["size"]):
            target.parent.mkdir(parents=True, exist_ok=True)
            download_object(file.location, target, info["size"])
    except TransientStorageError:
        raise  # the store is down: the run is retried (exit 200)
    except StorageError as err:
        raise DataError(str(err)) from None
    return target


def lone_carriage_return(path: Path) -> bool:
    """Whether ``path`` has a carriage return not followed by a line feed (the text builder would end a line
    there; the line reader does not)."""
    after_cr = False
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if _lone_cr(chunk, after_cr):
                return True
            after_cr = chunk.endswith(b"\r")
    return after_cr


def _lone_cr(chunk: bytes, after_cr: bool) -> bool:
    """Whether ``chunk`` (after a chunk ending in a carriage return when ``after_cr``) has a carriage return
    followed by something else than a line feed; one at its very end is decided with the next chunk."""
    if after_cr and not chunk.startswith(b"\n"):
        return True
    crs = chunk.count(b"\r")
    return bool(crs) and chunk.count(b"\r\n") + chunk.endswith(b"\r") != crs


def holds_json_lines(path: Path) -> bool:
    """Whether the line reader reads this ``.json`` file as JSON Lines: the whole text is UTF-8 and its first
    value, complete on its line, is followed by more (``json.loads`` of the whole stops at "Extra data")."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    head, found, more = "", False, False
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                return False
            if not found:
                head += text
                start = _JSON_SPACE.search(head)
                end = -1 if start is None else head.find("\n", start.start())
                if start is not None and end < 0 and not chunk:
                    end = len(head)  # the first value's line is the last line
                if start is None or end < 0:
                    if not chunk or len(head) > _MAX_FIRST_LINE:
                        return False
                    continue
                try:
                    _, stop = json.JSONDecoder().raw_decode(head[start.start() : end])
                except json.JSONDecodeError:
                    return False
                found, text = True, head[start.start() + stop :]
            more = more or bool(_JSON_SPACE.search(text))
            if not chunk:
                return more


_BLANK_BYTES = b" \t\n\r\x0b\x0c"  # what bytes.strip() removes


@dataclass(frozen=True)
class LineSpans:
    """The non-blank lines of a JSON Lines file: byte offsets ``[start, end)`` (the line feed left out) and
    1-based line numbers; the ``i``-th span holds the file's row ``i``."""

    starts: np.ndarray
    ends: np.ndarray
    linenos: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def head(self, rows: int) -> LineSpans:
        return LineSpans(self.starts[:rows], self.ends[:rows], self.linenos[:rows])


def line_spans(path: Path) -> LineSpans | None:
    """The spans of the non-blank lines of ``path`` when each starts (after blanks) with ``{`` and no carriage
    return ends a line, as a JSON Lines file of one object per line has them; else None. One pass over the bytes
    in chunks (numpy finds the line feeds); only lines not starting with ``{`` are looked at one by one."""
    import numpy as np

    starts, newlines, firsts = [], [], []
    base, line_starts_next, after_cr = 0, True, False
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if _lone_cr(chunk, after_cr):
                return None
            after_cr = chunk.endswith(b"\r")
            data = np.frombuffer(chunk, dtype=np.uint8)
            feeds = np.flatnonzero(data == 10)
            local = feeds + 1
            if line_starts_next:
                local = np.concatenate((np.zeros(1, dtype=local.dtype), local))
            line_starts_next = bool(len(local)) and int(local[-1]) == len(chunk)
            if line_starts_next:
                local = local[:-1]
            firsts.append(data[local])
            starts.append(local + base)
            newlines.append(feeds + base)
            base += len(chunk)
    if after_cr:
        return None
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return LineSpans(empty, empty, empty)
    start = np.concatenate(starts).astype(np.int64)
    end = np.concatenate([*newlines, np.array([base])]).astype(np.int64)[: len(start)]
    lineno = np.arange(1, len(start) + 1, dtype=np.int64)
    keep = np.ones(len(start), dtype=bool)
    with open(path, "rb") as handle:
        for i in np.flatnonzero(np.concatenate(firsts) != ord("{")):
            handle.seek(int(start[i]))
            raw = handle.read(int(end[i] - start[i]))
            if not raw.strip():
                keep[i] = False
                continue
            if i == 0 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.lstrip(_BLANK_BYTES).startswith(b"{"):
                return None
    return LineSpans(start[keep], end[keep], lineno[keep])


def quick_line_count(path: Path) -> int | None:
    """The number of lines of ``path`` when its bytes show at a glance that each line starts with ``{`` (so none
    is blank) and it has no carriage return; else None (:func:`line_spans` then looks closer)."""
    import numpy as np

    lines = 0
    first = last = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            if b"\r" in chunk or (last == b"\n" and chunk[:1] != b"{"):
                return None
            data = np.frombuffer(chunk, dtype=np.uint8)
            feeds = np.flatnonzero(data == 10)
            after = feeds[feeds + 1 < len(data)] + 1  # a line feed at the chunk's end: seen with the next chunk
            if not (data[after] == ord("{")).all():
                return None
            first = first or chunk[:1]
            lines += len(feeds)
            last = chunk[-1:]
    if first != b"{":
        return None
    return lines + (last != b"\n")


class LineReader:
    """Reads single lines of a JSON Lines file by their :class:`LineSpans`, the first ``rows`` of them (found
    on first use when not given; the file opened on first use)."""

    def __init__(self, path: str, spans: LineSpans | None = None, rows: int | None = None) -> None:
        self.path = path
        self._spans = spans
        self.rows = rows
        self._fd: int | None = None

    @property
    def spans(self) -> LineSpans:
        if self._spans is None:
            spans = line_spans(Path(self.path))
            if spans is None:
                raise DataError(f"{self.path}: changed while it was read")
            self._spans = spans
        if self.rows is not None and len(self._spans) > self.rows:
            self._spans = self._spans.head(self.rows)
        return self._spans

    def raw(self, i: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        spans = self.spans
        start, end = int(spans.starts[i]), int(spans.ends[i])
        return os.pread(self._fd, end - start, start)

    def row(self, i: int, source: str) -> dict[str, Any] | BadRecord:
        """Row ``i`` as the line reader reads it (``json.loads`` of its line)."""
        return raw_line_row(self.raw(i), source, int(self.spans.linenos[i]), i)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
