"""Parallel object transfers: many files at once over one boto3 client, large ones in parts, hashed in passing.

A :class:`Batch` moves the files of one upload or download. ``max_concurrency`` threads each move a
whole file; a file of ``multipart_threshold_mb`` or more moves in ``multipart_chunksize_mb`` parts
through ``max_concurrency`` more threads (boto3 clients are thread-safe, and
:func:`~kuberlhf.artifacts.s3.s3_client` sizes the connection pool for both). At most
``max_concurrency + 2`` parts are in memory at once, read and not yet sent, or fetched and not yet written.

Every file's sha256 is computed as its bytes pass, in the thread that moves it: an upload reads each file
once, hashing every chunk as it is sent (a file sent whole over a signed-payload connection, SigV4 on
plain http, takes the SHA256 botocore computed for the signature, which the store checks); a download
hashes every chunk as it is written, in order, so a file is checked against its manifest entry the
moment it lands, with no second read.

The first failure stops the batch: jobs not started never start, running ones stop at their next chunk,
an unfinished multipart upload is aborted, and once every thread is done the error goes up. The manifest is
the caller's (:mod:`kuberlhf.artifacts.storage`): written after every upload succeeded; a download's only
after every file matched.

:class:`ObjectReader` and :class:`ObjectWriter` stream one object as a file (``objects.open_uri``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from typing import IO, Any, TypeVar

from kuberlhf.artifacts.s3 import StorageOptions, client_code

T = TypeVar("T")
_MIB = 1024 * 1024
_MIN_PART = 5 * _MIB  # S3's smallest part (all but the last)
_MAX_PARTS = 10_000  # S3's most parts per upload
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class Stopped(Exception):
    """A job of a batch that an earlier failure stopped (never the error that goes up)."""


def _stream_errors() -> tuple[type[BaseException], ...]:
    """Failures while an object's body streams in: the request is repeated (botocore repeats only requests)."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    return IncompleteReadError, ReadTimeoutError, ResponseStreamingError, ConnectionError, TimeoutError


class Batch:
    """The transfers of one upload or download: :meth:`run` the jobs, which call :meth:`upload` and
    :meth:`download`. One use."""

    def __init__(self, client: Any, options: StorageOptions) -> None:
        self.client = client
        self.concurrency = max(1, options.max_concurrency)
        self.threshold = max(1, options.multipart_threshold_mb) * _MIB
        self.chunk = max(_MIN_PART, options.multipart_chunksize_mb * _MIB)
        self.attempts = max(1, options.max_attempts)
        self.stopped = threading.Event()
        self._window = threading.BoundedSemaphore(self.concurrency + 2)  # parts held in memory
        self._parts: ThreadPoolExecutor | None = None
        calculation = getattr(client.meta.config, "request_checksum_calculation", None)
        self._checksum = {"ChecksumAlgorithm": "CRC32"} if calculation == "when_supported" else {}
        self._signed = threading.local()
        client.meta.events.register("before-send.s3.PutObject", self._note_signed_payload)

    def _note_signed_payload(self, request: Any, **_: Any) -> None:
        """A PutObject about to go out, signed: a signed payload's SHA256 (SigV4 over plain http, which the
        store checks) is the sha256 of the body, so the body is not hashed twice. Returns None (sends it)."""
        value = request.headers.get("X-Amz-Content-SHA256")
        self._signed.sha256 = value.decode("ascii", "replace") if isinstance(value, bytes) else value

    def run(self, jobs: list[Callable[[], T]], done: Callable[[], None] | None = None) -> list[T]:
        """Run ``jobs`` ``max_concurrency`` at a time and return their results in order; ``done`` runs in
        this thread after each job that succeeded. The first failure stops the others, then goes up."""
        results: list[Any] = [None] * len(jobs)
        error: BaseException | None = None
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kuberlhf-part") as parts:
            self._parts = parts
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="kuberlhf-transfer") as files:
                futures = {files.submit(job): i for i, job in enumerate(jobs)}
                try:
                    for fut in as_completed(futures):
                        if fut.cancelled():
                            continue
                        if (exc := fut.exception()) is None:
                            results[futures[fut]] = fut.result()
                            if error is None and done is not None:
                                done()
                        elif error is None:
                            error = exc
                            self._stop(futures)
                except BaseException:  # interrupted: nothing new starts, the threads finish
                    self._stop(futures)
                    raise
        if error is not None:
            raise error
        return results

    def _stop(self, futures: dict[Future, int]) -> None:
        self.stopped.set()
        for fut in futures:
            fut.cancel()

    def check(self) -> None:
        """Raise :class:`Stopped` once the batch is stopping."""
        if self.stopped.is_set():
            raise Stopped

    # ---------------------------------------------------------------------------------------- upload

    def upload(self, fh: IO[bytes], size: int, bucket: str, key: str) -> dict:
        """Send ``fh`` from where it stands (``size`` bytes expected) to ``key``; the ``size`` and ``sha256``
        of the bytes sent."""
        self.check()
        if size < self.threshold:
            data = fh.read()
            self._signed.sha256 = None
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
            signed = self._signed.sha256
            if not (isinstance(signed, str) and _SHA256_HEX.fullmatch(signed)):  # https: UNSIGNED-PAYLOAD
                signed = hashlib.sha256(data).hexdigest()
            return {"size": len(data), "sha256": signed}
        return self._upload_parts(fh, size, bucket, key)

    def _upload_parts(self, fh: IO[bytes], size: int, bucket: str, key: str) -> dict:
        chunk = max(self.chunk, -(-size // _MAX_PARTS))
        upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key, **self._checksum)["UploadId"]
        digest, sent, parts = hashlib.sha256(), 0, []
        try:
            while True:
                self._window.acquire()
                try:
                    self.check()
                    data = fh.read(chunk)
                except BaseException:
                    self._window.release()
                    raise
                if not data:
                    self._window.release()
                    break
                digest.update(data)
                sent += len(data)
                parts.append(self._parts.submit(self._upload_part, bucket, key, upload_id, len(parts) + 1, data))
            done = [part.result() for part in parts]
            self.check()
            self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": done})
        except BaseException:
            wait(parts)
            with contextlib.suppress(Exception):  # best effort; a lifecycle rule removes what is left
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return {"size": sent, "sha256": digest.hexdigest()}

    def _upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> dict:
        try:
            self.check()
            response = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                               Body=data, **self._checksum)
        finally:
            self._window.release()
        part = {"ETag": response["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    # -------------------------------------------------------------------------------------- download

    def download(self, bucket: str, key: str, size: int, out: IO[bytes]) -> tuple[int, str]:
        """Write the object ``key`` (``size`` bytes, says its manifest) to ``out``; the object's size and the
        sha256 of what was written (a size that differs is returned at once, nothing more written)."""
        self.check()
        if size < self.threshold:
            return self._download_whole(bucket, key, out)
        return self._download_parts(bucket, key, size, out)

    def _download_whole(self, bucket: str, key: str, out: IO[bytes]) -> tuple[int, str]:
        for attempt in range(1, self.attempts + 1):
            out.seek(0)
            out.truncate()
            digest, got = hashlib.sha256(), 0
            try:
                body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
                with contextlib.closing(body):
                    while block := body.read(_MIB):
                        self.check()
                        digest.update(block)
                        out.write(block)
                        got += len(block)
                return got, digest.hexdigest()
            except _stream_errors():
                if attempt == self.attempts:
                    raise
        raise AssertionError("unreachable")

    def _download_parts(self, bucket: str, key: str, size: int, out: IO[bytes]) -> tuple[int, str]:
        chunk = max(self.chunk, -(-size // _MAX_PARTS))
        starts = range(0, size, chunk)
        digest, pending, queued = hashlib.sha256(), deque(), 0
        try:
            while queued < len(starts) or pending:
                # fetch ahead while parts are free; wait for one only with nothing in flight (no deadlock)
                while queued < len(starts) and self._window.acquire(blocking=not pending):
                    start = starts[queued]
                    queued += 1
                    pending.append(self._parts.submit(self._download_range, bucket, key, start,
                                                      min(start + chunk, size) - 1))
                fut = pending.popleft()
                try:
                    data, total = fut.result()
                finally:
                    self._window.release()
                if total is None:  # the object ends before this part
                    total = self.client.head_object(Bucket=bucket, Key=key)["ContentLength"]
                if total != size:
                    return total, ""
                digest.update(data)
                out.write(data)
        finally:
            for fut in pending:  # a failure or a size mismatch: the parts still in flight are dropped
                with contextlib.suppress(BaseException):
                    fut.result()
                self._window.release()
            pending.clear()
        return size, digest.hexdigest()

    def _download_range(self, bucket: str, key: str, first: int, last: int) -> tuple[bytes, int | None]:
        """Bytes ``first``..``last`` of ``key`` and the object's size (None: it is shorter than ``first``)."""
        from botocore.exceptions import ClientError

        for attempt in range(1, self.attempts + 1):
            self.check()
            try:
                response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{last}")
                with contextlib.closing(response["Body"]) as body:
                    data = body.read()
                return data, int(response["ContentRange"].rpartition("/")[2])
            except ClientError as exc:
                if client_code(exc) == "InvalidRange":
                    return b"", None
                raise
            except _stream_errors():
                if attempt == self.attempts:
                    raise
        raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ one object, streamed


class ObjectReader(io.RawIOBase):
    """A seekable, read-only file over one S3 object: a GET from the position read on, kept open while reads
    follow each other (a seek elsewhere drops it). ``errors(action)``: the caller's context that turns failures
    into one-line StorageErrors."""

    def __init__(self, client: Any, bucket: str, key: str, errors: Callable[[str], Any], attempts: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._errors = client, bucket, key, errors
        self._attempts = max(1, attempts)
        with errors("opening"):
            self.size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self._pos, self._body = 0, None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence] + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        if pos != self._pos:
            self._drop()
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self._pos)
        if want <= 0:
            return 0
        with self._errors("reading"):
            for attempt in range(1, self._attempts + 1):
                try:
                    if self._body is None:
                        self._body = self._client.get_object(Bucket=self._bucket, Key=self._key,
                                                             Range=f"bytes={self._pos}-")["Body"]
                    if data := self._body.read(want):
                        break
                    raise ConnectionError(f"the object ended at byte {self._pos} of {self.size}")
                except _stream_errors():
                    self._drop()
                    if attempt == self._attempts:
                        raise
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()


class ObjectWriter(io.RawIOBase):
    """A write-only file whose bytes become one S3 object when it is closed (in parts when large); closed by
    an exception in its ``with`` block, it writes nothing."""

    def __init__(self, batch: Batch, bucket: str, key: str, errors: Callable[[str], Any]) -> None:
        super().__init__()
        self._batch, self._bucket, self._key, self._errors = batch, bucket, key, errors
        self._spool = tempfile.SpooledTemporaryFile(max_size=batch.threshold)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._spool.write(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            size = self._spool.tell()
            self._spool.seek(0)
            with self._errors("writing"):
                self._batch.run([lambda: self._batch.upload(self._spool, size, self._bucket, self._key)])
        finally:
            self._discard()

    def _discard(self) -> None:
        self._spool.close()
        super().close()

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is not None:
            self._discard()
        else:
            self.close()
