"""kuberlhf.artifacts.transfer against an in-memory S3 client: parts, the memory window, the first failure."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from typing import Any

import pytest

from kuberlhf.artifacts import transfer
from kuberlhf.artifacts.s3 import StorageOptions


class Body:
    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def close(self) -> None:
        pass


class MemoryS3:
    """The calls transfer.Batch makes, on a dict; counts the requests in flight."""

    class meta:  # noqa: N801 (boto3's shape)
        class config:  # noqa: N801
            request_checksum_calculation = "when_supported"

        class events:  # noqa: N801 (no signing here: the batch hashes every body itself)
            @staticmethod
            def register(*args: Any, **kwargs: Any) -> None:
                pass

    def __init__(self, fail_part: int | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.aborted: list[str] = []
        self.fail_part = fail_part
        self.lock = threading.Lock()
        self.now = self.most = 0

    def _request(self) -> Any:
        outer = self

        class InFlight:
            def __enter__(self) -> None:
                with outer.lock:
                    outer.now += 1
                    outer.most = max(outer.most, outer.now)

            def __exit__(self, *exc: Any) -> None:
                with outer.lock:
                    outer.now -= 1

        return InFlight()

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> dict:  # noqa: N803
        with self._request():
            self.objects[Key] = bytes(Body)
        return {}

    def create_multipart_upload(self, Bucket: str, Key: str, ChecksumAlgorithm: str) -> dict:  # noqa: N803
        upload_id = f"{Key}#{len(self.uploads)}"
        self.uploads[upload_id] = {}
        return {"UploadId": upload_id}

    def upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes,  # noqa: N803
                    ChecksumAlgorithm: str) -> dict:
        with self._request():
            if PartNumber == self.fail_part:
                raise ConnectionError("reset")
            self.uploads[UploadId][PartNumber] = Body
        return {"ETag": f'"{PartNumber}"', "ChecksumCRC32": "x"}

    def complete_multipart_upload(self, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict) -> dict:  # noqa: N803
        parts = self.uploads.pop(UploadId)
        assert [p["PartNumber"] for p in MultipartUpload["Parts"]] == sorted(parts)
        assert all(p["ChecksumCRC32"] == "x" for p in MultipartUpload["Parts"])
        self.objects[Key] = b"".join(parts[n] for n in sorted(parts))
        return {}

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> dict:  # noqa: N803
        self.aborted.append(self.uploads.pop(UploadId) and UploadId)
        return {}

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict:  # noqa: N803
        with self._request():
            data = self.objects[Key]
            if Range is None:
                return {"Body": Body(data)}
            first, last = (int(x) for x in Range.removeprefix("bytes=").split("-"))
            return {"Body": Body(data[first:last + 1]), "ContentRange": f"bytes {first}-{last}/{len(data)}"}

    def head_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803
        return {"ContentLength": len(self.objects[Key])}


def batch(client: MemoryS3, concurrency: int) -> transfer.Batch:
    made = transfer.Batch(client, StorageOptions(max_concurrency=concurrency))
    made.threshold = made.chunk = 1000  # parts of 1000 bytes (5 MiB and up with real options)
    return made


def in_thread(fn: Any, timeout: float = 60) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging) when it has not returned within ``timeout``."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # goes up in the test's thread
            out["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "the batch is stuck"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.mark.parametrize("concurrency", [1, 2, 3, 8])
def test_many_files_in_parts_round_trip_with_few_threads(concurrency: int) -> None:
    files = {f"f{i}": os.urandom(n) for i, n in enumerate([4500, 999, 1000, 0, 7001, 3000, 12345, 1])}
    client = MemoryS3()
    up = batch(client, concurrency)
    sent = in_thread(lambda: up.run([lambda k=k, d=d: up.upload(io.BytesIO(d), len(d), "b", k)
                                     for k, d in files.items()]))
    assert sent == [{"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for d in files.values()]
    assert client.objects == files and client.uploads == {}
    assert client.most <= 2 * concurrency  # file threads and part threads

    down, outs = batch(client, concurrency), {k: io.BytesIO() for k in files}
    got = in_thread(lambda: down.run([lambda k=k, d=d: down.download("b", k, len(d), outs[k])
                                      for k, d in files.items()]))
    assert got == [(len(d), hashlib.sha256(d).hexdigest()) for d in files.values()]
    assert {k: out.getvalue() for k, out in outs.items()} == files


def test_a_failed_part_aborts_its_upload_and_stops_the_batch() -> None:
    client, started = MemoryS3(fail_part=2), []
    up = batch(client, 2)

    def job(i: int) -> dict:
        started.append(i)
        if i == 0:
            return up.upload(io.BytesIO(b"x" * 4000), 4000, "b", "big")
        up.stopped.wait(30)  # the others run until the failure stops them
        up.check()
        raise AssertionError("not stopped")

    with pytest.raises(ConnectionError, match="reset"):
        in_thread(lambda: up.run([lambda i=i: job(i) for i in range(20)]))
    assert client.aborted == ["big#0"] and "big" not in client.objects
    assert set(started) <= {0, 1, 2}  # the queued jobs never started


def test_an_object_of_another_size_is_reported_without_writing_it_all() -> None:
    client = MemoryS3()
    client.objects["k"] = os.urandom(5000)
    def download(out: io.BytesIO) -> tuple[int, str]:
        one = batch(client, 2)
        return in_thread(lambda: one.run([lambda: one.download("b", "k", 4000, out)])[0])

    out = io.BytesIO()
    assert download(out) == (5000, "")
    assert len(out.getvalue()) < 5000
    client.objects["k"] = b"short"
    assert download(io.BytesIO()) == (5, "")
