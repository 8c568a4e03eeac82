"""One object at a time, no manifest: a data source's files and listings, the run's lease, ``metrics.json``.

Where :mod:`kuberlhf.artifacts.storage` moves whole artifacts, these read, write, list and delete single
``s3://`` objects, and :func:`open_uri` opens one file, local or remote, as a file object (streamed by
:mod:`kuberlhf.artifacts.transfer`). :mod:`kuberlhf.artifacts.storage` offers them too: the storage API in one place.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import IO, Any

from kuberlhf.artifacts import transfer
from kuberlhf.artifacts.location import Location, LocationLike, PathLike
from kuberlhf.artifacts.s3 import StorageOptions, effective_options, is_missing, s3_client, s3_errors
from kuberlhf.errors import IntegrityError, StorageError


def stat_object(uri: LocationLike, options: StorageOptions | None = None) -> dict | None:
    """``{"size", "etag"}`` of the s3 object ``uri``, or None when there is none."""
    from botocore.exceptions import ClientError

    loc = Location.parse_s3(uri)
    if not loc.prefix:
        return None
    with s3_errors(loc, "reading"):
        try:
            head = s3_client(options).head_object(Bucket=loc.bucket, Key=loc.key())
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
    return {"size": int(head["ContentLength"]), "etag": str(head.get("ETag", "")).strip('"')}


def download_object(uri: LocationLike, dest: PathLike, size: int, options: StorageOptions | None = None) -> Path:
    """Download the s3 object ``uri`` of ``size`` bytes (as :func:`stat_object` gave it) to ``dest``: written
    beside it (in parts, as many at once, when it is large), renamed into place only when whole."""
    loc = Location.parse_s3(uri)
    o = effective_options(options)
    target = Path(dest)
    batch = transfer.Batch(s3_client(o), o)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")

    def job() -> int:
        with s3_errors(loc, "downloading"), open(tmp, "wb") as out:
            return batch.download(loc.bucket, loc.key(), size, out)[0]

    try:
        got = batch.run([job])[0]
        if got != size:
            raise IntegrityError(f"{loc}: the object changed while it was read ({got} bytes, {size} before)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def list_prefix(uri: LocationLike, options: StorageOptions | None = None) -> list[tuple[str, bool]]:
    """The immediate children of the s3 prefix ``uri``: ``(s3 URI, is_file)`` each, files first in key order,
    then sub-prefixes (what ``ls`` of a folder shows)."""
    loc = Location.parse_s3(uri)
    base, bucket = loc.key_prefix, loc.bucket
    files, folders = [], []
    with s3_errors(loc, "listing"):
        pages = s3_client(options).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base, Delimiter="/")
        for page in pages:
            files += [(f"s3://{bucket}/{obj['Key']}", True) for obj in page.get("Contents", [])
                      if obj["Key"] != base]
            folders += [(f"s3://{bucket}/{cp['Prefix'].rstrip('/')}", False) for cp in page.get("CommonPrefixes", [])]
    return files + folders


def read_object(uri: LocationLike, options: StorageOptions | None = None) -> bytes | None:
    """The bytes of the s3 object ``uri``, or None when there is none."""
    from botocore.exceptions import ClientError

    loc = Location.parse_s3(uri)
    client = s3_client(options)
    with s3_errors(loc, "reading"):
        try:
            return client.get_object(Bucket=loc.bucket, Key=loc.key())["Body"].read()
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise


def write_object(uri: LocationLike, body: bytes, options: StorageOptions | None = None) -> None:
    """Write the s3 object ``uri``."""
    loc = Location.parse_s3(uri)
    with s3_errors(loc, "writing"):
        s3_client(options).put_object(Bucket=loc.bucket, Key=loc.key(), Body=body)


def delete_object(uri: LocationLike, options: StorageOptions | None = None) -> None:
    """Delete the s3 object ``uri`` (no error when there is none)."""
    loc = Location.parse_s3(uri)
    with s3_errors(loc, "deleting"):
        s3_client(options).delete_object(Bucket=loc.bucket, Key=loc.key())


def open_uri(uri: LocationLike, mode: str = "rb", options: StorageOptions | None = None) -> IO[Any]:
    """Open one file (local path or s3 object) as a file object; the caller closes it. An s3 object opens
    seekable for reading (``rb``, ``r``), or for writing (``wb``: the object is written when the file closes)."""
    loc = Location.parse(uri)
    if not loc.is_remote:
        try:
            return open(loc.local, mode)
        except OSError as exc:
            raise StorageError(f"cannot open {loc}: {exc.strerror or exc}") from exc
    if not loc.prefix:
        raise StorageError(f"no object key in URI {loc.uri!r}")
    if mode not in ("rb", "r", "wb"):
        raise StorageError(f"cannot open {loc} in mode {mode!r}: s3 objects open as 'rb', 'r' or 'wb'")
    o = effective_options(options)
    client, errors, bucket, key = s3_client(o), functools.partial(s3_errors, loc), loc.bucket, loc.key()
    if mode == "wb":
        return transfer.ObjectWriter(transfer.Batch(client, o), bucket, key, errors)  # type: ignore[return-value]
    reader = io.BufferedReader(transfer.ObjectReader(client, bucket, key, errors, o.max_attempts), 1024 * 1024)
    return io.TextIOWrapper(reader, encoding="utf-8") if mode == "r" else reader
