"""Where an artifact or object lives: a local path or an ``s3://bucket/prefix``, parsed once.

The public functions of :mod:`kuberlhf.artifacts.storage` (and the run directory, checkpoints and lease above
them) take a :class:`Location` or its text (a path, a ``file://`` path, an ``s3://`` URI), parse it once where
they are entered, and pass the value down: ``location / "checkpoints"`` descends, ``location.key(rel)`` is an
object key. ``str()`` gives the location back as it was written, which is how messages name it. Any other URI
scheme, and an ``s3://`` URI without a valid bucket, is refused with a one-line
:class:`~kuberlhf.errors.StorageError` naming it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kuberlhf.errors import StorageError

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

PathLike = str | os.PathLike[str]


def is_remote(uri: object) -> bool:
    """True for ``s3://`` URIs (and remote :class:`Location` values)."""
    return str(uri).lower().startswith("s3://")


@dataclass(frozen=True)
class Location:
    """A local directory or file (``path``), or an S3 prefix or object (``bucket`` and ``prefix``, no slash at
    either end; ``""`` for a whole bucket). ``uri``: the location as written (what ``str()`` gives back); two
    spellings of one place (a trailing slash) are equal."""

    uri: str = field(compare=False)
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    @classmethod
    def parse(cls, where: LocationLike) -> Location:
        """The location ``where`` names: an ``s3://`` URI, a ``file://`` path or a plain local path."""
        if isinstance(where, Location):
            return where
        text = os.fspath(where)
        if is_remote(text):
            bucket, _, key = text[5:].partition("/")
            if not bucket:
                raise StorageError(f"empty bucket name in URI {text!r}")
            if not _BUCKET_RE.match(bucket) or ".." in bucket:
                raise StorageError(f"invalid S3 bucket name {bucket!r} in URI {text!r} "
                                   "(3-63 chars: lowercase letters, digits, '.', '-')")
            return cls(text, bucket, key.strip("/"))
        if text.startswith("file://"):
            return cls(text, path=Path(text[7:]))
        if "://" in text:
            raise StorageError(f"unsupported URI scheme in {text!r}: use s3://bucket/prefix or a local path")
        return cls(text, path=Path(text))

    @classmethod
    def parse_s3(cls, where: LocationLike) -> Location:
        """:meth:`parse`, refusing anything but an ``s3://`` URI (for what exists only in an object store)."""
        if not is_remote(where):
            raise StorageError(f"not an s3:// URI: {str(where)!r}")
        return cls.parse(where)

    @property
    def is_remote(self) -> bool:
        return self.path is None

    @property
    def local(self) -> Path:
        """The local path; a StorageError for an ``s3://`` location."""
        if self.path is None:
            raise StorageError(f"{self.uri!r} is not a local path")
        return self.path

    def key(self, rel: str = "") -> str:
        """The object key of ``rel`` under this prefix (of this object itself without ``rel``)."""
        return f"{self.prefix}/{rel}" if self.prefix and rel else self.prefix or rel

    @property
    def key_prefix(self) -> str:
        """What the keys of every object under this prefix start with: ``prefix/``, or ``""`` for a bucket."""
        return f"{self.prefix}/" if self.prefix else ""

    def child(self, rel: str) -> Location:
        """The location of ``rel`` (a relative path) under this one."""
        uri = f"{self.uri.rstrip('/')}/{rel}"
        if self.path is None:
            return Location(uri, self.bucket, self.key(rel).strip("/"))
        return Location(uri, path=self.path / rel)

    def __truediv__(self, rel: str) -> Location:
        return self.child(rel)

    def __str__(self) -> str:
        return self.uri


LocationLike = PathLike | Location  # a location or its text: what a public function takes, and parses once
