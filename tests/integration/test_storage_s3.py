"""kuberlhf.artifacts.storage against a real S3 server (SeaweedFS, see tests/s3server.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kuberlhf.artifacts import storage
from kuberlhf.errors import IntegrityError, StorageError, TransientStorageError

FILES = {
    "config.json": b'{"hidden": 128}',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/vocab.json": b'{"a": 1}',
    "tokenizer/deep/merges.txt": b"a b\n",
    "empty.bin": b"",
}


@pytest.fixture(autouse=True)
def _default_options() -> Iterator[None]:
    storage.configure(None)
    yield
    storage.configure(None)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def keys(server: Any, bucket: str, prefix: str = "") -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def spy_client(monkeypatch: pytest.MonkeyPatch, on_client: Any) -> None:
    """Make storage.s3_client hand out real clients passed through ``on_client``."""
    real = storage.s3_client

    def patched(options: storage.StorageOptions | None = None) -> Any:
        client = real(options)
        on_client(client)
        return client

    monkeypatch.setattr(storage, "s3_client", patched)


def fail_on(name: str, error: BaseException | None = None) -> Any:
    """A botocore ``before-parameter-build`` handler failing the requests for the object whose key ends with
    ``name`` (``OSError`` unless ``error`` is given)."""

    def handler(params: dict, **_: Any) -> None:
        if params.get("Key", "").endswith(f"/{name}"):
            raise error or OSError("connection reset mid-upload")

    return handler


def test_round_trip_nested_dir(s3_server: Any, s3_bucket: str, artifact: Path, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/models/sft/"
    manifest = storage.upload_dir(artifact, uri)
    assert sorted(f["path"] for f in manifest["files"]) == sorted(FILES)
    assert keys(s3_server, s3_bucket) == sorted(f"models/sft/{p}" for p in [*FILES, "manifest.json"])
    assert storage.is_complete(uri)

    dest = storage.download_dir(uri, tmp_path / "dest")
    for rel, data in FILES.items():
        assert (dest / rel).read_bytes() == data
    assert storage.verify_local(dest)["files"] == manifest["files"]
    assert not [p for p in dest.rglob("*") if p.name.endswith((".part", ".tmp"))]


def test_fetch_dir_caches_and_skips_verified_files(s3_bucket: str, artifact: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/rm"
    storage.publish_dir(artifact, uri)
    cached = storage.fetch_dir(uri, cache_root=tmp_path / "cache")
    assert cached.parent == tmp_path / "cache" and len(cached.name) == 40
    assert (cached / "model.safetensors").read_bytes() == FILES["model.safetensors"]

    downloads: list[str] = []
    spy_client(monkeypatch, lambda c: c.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda **kw: downloads.append(kw["params"]["Key"])))
    (cached / "config.json").write_bytes(b'{"hidden": 999}')  # corrupt one cached file
    assert storage.fetch_dir(uri + "/", cache_root=tmp_path / "cache") == cached
    assert downloads == ["rm/manifest.json", "rm/config.json"]  # only the bad file again
    assert (cached / "config.json").read_bytes() == FILES["config.json"]


def test_large_file_uses_multipart_and_verifies(s3_server: Any, s3_bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big"
    src.mkdir()
    data = os.urandom(12 * 1024 * 1024)
    (src / "weights.bin").write_bytes(data)
    parts: list[int] = []
    spy_client(monkeypatch, lambda c: c.meta.events.register(
        "before-parameter-build.s3.UploadPart", lambda **kw: parts.append(kw["params"]["PartNumber"])))
    options = storage.StorageOptions(multipart_threshold_mb=5, multipart_chunksize_mb=5, max_concurrency=4)
    uri = f"s3://{s3_bucket}/big"
    storage.upload_dir(src, uri, options=options)
    assert sorted(parts) == [1, 2, 3]
    assert s3_server.client().head_object(Bucket=s3_bucket, Key="big/weights.bin")["ETag"].endswith('-3"')
    dest = storage.download_dir(uri, tmp_path / "dest", options=options)
    assert hashlib.sha256((dest / "weights.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_prefix_without_manifest_refused(s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="half/model.safetensors", Body=b"123")
    assert not storage.is_complete(f"s3://{s3_bucket}/half")
    with pytest.raises(StorageError, match=r"s3://.*/half is an incomplete artifact: no manifest\.json"):
        storage.download_dir(f"s3://{s3_bucket}/half", tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.safetensors").exists()


def test_corrupted_remote_object_refused(s3_server: Any, s3_bucket: str, artifact: Path, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/corrupt"
    storage.upload_dir(artifact, uri)
    tampered = bytearray(FILES["model.safetensors"])
    tampered[7] ^= 0x01
    s3_server.client().put_object(Bucket=s3_bucket, Key="corrupt/model.safetensors", Body=bytes(tampered))
    with pytest.raises(StorageError, match=r"sha256 checksum mismatch for 'model\.safetensors'"):
        storage.download_dir(uri, tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.safetensors").exists()
    assert not storage.is_complete(str(tmp_path / "dest"))


def test_reupload_removes_old_manifest_first(s3_bucket: str, artifact: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/ckpt"
    storage.upload_dir(artifact, uri)
    assert storage.is_complete(uri)

    (artifact / "config.json").write_bytes(b'{"hidden": 256}')
    with monkeypatch.context() as patch, pytest.raises(StorageError, match="uploading to s3://"):
        spy_client(patch, lambda c: c.meta.events.register("before-parameter-build.s3.PutObject", fail_on("model.safetensors")))
        storage.upload_dir(artifact, uri)
    assert not storage.is_complete(uri)
    with pytest.raises(StorageError, match="incomplete artifact"):
        storage.download_dir(uri, tmp_path / "dest")


def test_wrong_secret_key_refused(s3_server: Any, s3_bucket: str, artifact: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    storage.upload_dir(artifact, f"s3://{s3_bucket}/a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match=r"rejected the credentials.*SignatureDoesNotMatch"):
        storage.upload_dir(artifact, f"s3://{s3_bucket}/b")
    with pytest.raises(StorageError, match="credentials"):
        storage.download_dir(f"s3://{s3_bucket}/a", tmp_path / "dest")
    with pytest.raises(StorageError, match="credentials"):
        storage.is_complete(f"s3://{s3_bucket}/a")
    # explicit options win over the environment
    good = storage.StorageOptions(access_key_id=s3_server.admin.access_key_id,
                                  secret_access_key=s3_server.admin.secret_access_key)
    assert storage.is_complete(f"s3://{s3_bucket}/a", options=good)


def test_unknown_access_key_refused(s3_bucket: str, artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StorageError, match=r"rejected the credentials.*InvalidAccessKeyId"):
        storage.upload_dir(artifact, f"s3://{s3_bucket}/a")


def test_read_only_identity_cannot_write(s3_server: Any, s3_bucket: str, artifact: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/model"
    storage.upload_dir(artifact, uri)
    for var, value in s3_server.env(s3_server.reader).items():
        monkeypatch.setenv(var, value)
    with pytest.raises(StorageError, match=f"access denied while uploading to s3://{s3_bucket}/other"):
        storage.upload_dir(artifact, f"s3://{s3_bucket}/other")
    with pytest.raises(StorageError, match="access denied while removing"):
        storage.remove_dir(uri)
    assert keys(s3_server, s3_bucket, "other") == []
    dest = storage.download_dir(uri, tmp_path / "dest")  # reading is allowed
    assert (dest / "config.json").read_bytes() == FILES["config.json"]


def test_missing_credentials(s3_bucket: str, artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("HOME", "/nonexistent")
    for call in (storage.s3_client, lambda: storage.upload_dir(artifact, f"s3://{s3_bucket}/x"),
                 lambda: storage.open_uri(f"s3://{s3_bucket}/x/config.json")):
        with pytest.raises(StorageError, match=r"no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
            call()


def test_missing_bucket(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="bucket does not exist while downloading s3://no-such-bucket-x/m"):
        storage.download_dir("s3://no-such-bucket-x/m", tmp_path / "dest")
    with pytest.raises(StorageError, match="bucket does not exist"):
        storage.list_subdirs("s3://no-such-bucket-x/m")


def test_configure_supplies_default_options(s3_server: Any, s3_bucket: str, artifact: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    storage.configure(storage.StorageOptions(endpoint_url=s3_server.endpoint_url,
                                             access_key_id=s3_server.admin.access_key_id,
                                             secret_access_key=s3_server.admin.secret_access_key))
    storage.upload_dir(artifact, f"s3://{s3_bucket}/cfg")
    assert storage.is_complete(f"s3://{s3_bucket}/cfg")
    with storage.open_uri(f"s3://{s3_bucket}/cfg/config.json") as fh:
        assert fh.read() == FILES["config.json"]


def test_open_uri_streams_s3_objects(s3_server: Any, s3_bucket: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "score": [1.0, 2.0, 3.0]}), buf)
    s3_server.client().put_object(Bucket=s3_bucket, Key="data/train.parquet", Body=buf.getvalue())
    with storage.open_uri(f"s3://{s3_bucket}/data/train.parquet") as fh:  # parquet needs seek
        assert pq.read_table(fh).column("prompt").to_pylist() == ["a", "b", "c"]

    with storage.open_uri(f"s3://{s3_bucket}/data/notes.txt", "wb") as fh:
        fh.write(b"hello s3")
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="data/notes.txt")["Body"].read()
    assert body == b"hello s3"
    assert storage.fs_for(f"s3://{s3_bucket}/data").exists(f"{s3_bucket}/data/notes.txt")
    with pytest.raises(StorageError, match=f"not found while opening s3://{s3_bucket}/data/missing"):
        storage.open_uri(f"s3://{s3_bucket}/data/missing.parquet")


def test_list_subdirs_and_remove_dir(s3_server: Any, s3_bucket: str, artifact: Path) -> None:
    run = f"s3://{s3_bucket}/runs/ppo"
    for name in ("checkpoint-1", "checkpoint-10", "checkpoint-2"):
        storage.upload_dir(artifact, f"{run}/{name}")
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/ppo/trainer_state.json", Body=b"{}")
    assert storage.list_subdirs(run) == ["checkpoint-1", "checkpoint-10", "checkpoint-2"]
    assert storage.list_subdirs(f"s3://{s3_bucket}") == ["runs"]
    assert storage.list_subdirs(f"s3://{s3_bucket}/nothing-here") == []

    storage.remove_dir(f"{run}/checkpoint-1")  # must not touch checkpoint-10
    assert storage.list_subdirs(run) == ["checkpoint-10", "checkpoint-2"]
    assert keys(s3_server, s3_bucket, "runs/ppo/checkpoint-1/") == []
    assert len(keys(s3_server, s3_bucket, "runs/ppo/checkpoint-10/")) == len(FILES) + 1
    assert storage.is_complete(f"{run}/checkpoint-10")
    with pytest.raises(StorageError, match="refusing to remove a whole bucket"):
        storage.remove_dir(f"s3://{s3_bucket}/")


def test_republishing_leaves_exactly_the_new_files(s3_server: Any, s3_bucket: str, artifact: Path,
                                                   tmp_path: Path) -> None:
    """On S3 too a published artifact holds exactly its manifest's files, and so does its cached copy."""
    uri = f"s3://{s3_bucket}/exact"
    storage.upload_dir(artifact, uri)
    storage.upload_dir(artifact, f"{uri}/checkpoints/checkpoint-3")  # the run's own: kept
    cache = storage.download_dir(uri, tmp_path / "cache")
    smaller = tmp_path / "smaller"
    (smaller / "tokenizer").mkdir(parents=True)
    (smaller / "tokenizer/vocab.json").write_bytes(b'{"b": 2}')
    manifest = storage.upload_dir(smaller, uri)
    assert [k for k in keys(s3_server, s3_bucket, "exact/") if "/checkpoints/" not in k] == [
        "exact/manifest.json", "exact/tokenizer/vocab.json"]
    assert storage.is_complete(f"{uri}/checkpoints/checkpoint-3")
    storage.download_dir(uri, cache)  # the same cache folder: the old files go
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert files == ["manifest.json", "tokenizer/vocab.json"]
    assert storage.verify_local(cache)["files"] == manifest["files"]


def test_an_unlisted_object_and_a_missing_one_are_refused_naming_them(s3_server: Any, s3_bucket: str, artifact: Path,
                                                                     tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/named"
    storage.upload_dir(artifact, uri)
    s3_server.client().put_object(Bucket=s3_bucket, Key="named/generation_config.json", Body=b"{}")
    with pytest.raises(StorageError, match=r"object 'generation_config.json' is not listed in manifest.json"):
        storage.download_dir(uri, tmp_path / "a")
    s3_server.client().delete_object(Bucket=s3_bucket, Key="named/generation_config.json")
    s3_server.client().delete_object(Bucket=s3_bucket, Key="named/tokenizer/vocab.json")
    with pytest.raises(StorageError, match=r"not found while downloading s3://.*/named/tokenizer/vocab.json"):
        storage.download_dir(uri, tmp_path / "b")


# ------------------------------------------------------------------------------------- parallel transfers

PARTS = storage.StorageOptions(multipart_threshold_mb=5, multipart_chunksize_mb=5, max_concurrency=4)
BIG = ("big-1.bin", "big-2.bin")  # 11 MiB: three parts each under PARTS


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """40 small files in nested folders, an empty one, and two files moved in parts under PARTS."""
    root = tmp_path / "many"
    for i in range(40):
        path = root / f"{'abcd'[i % 4]}/{i % 3}/file-{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1000 + 37 * i))
    (root / "a/empty.bin").write_bytes(b"")
    for name in BIG:
        (root / name).write_bytes(os.urandom(11 * 1024 * 1024 + 123))
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class InFlight:
    """Counts the requests in flight whose key does not end with manifest.json; the first two wait (10 s at
    most) for each other, so two that can run at once are seen at once, and one at a time is seen alone."""

    def __init__(self) -> None:
        self.now = self.most = self.seen = 0
        self.lock = threading.Lock()
        self.meet = threading.Barrier(2, timeout=10)

    def watch(self, client: Any, operation: str) -> None:
        client.meta.events.register(f"before-parameter-build.s3.{operation}", self.enter)
        client.meta.events.register(f"after-call.s3.{operation}", self.leave)

    def enter(self, params: dict, context: dict, **_: Any) -> None:
        if params.get("Key", "").endswith("manifest.json"):
            return
        context["in_flight"] = True
        with self.lock:
            self.now += 1
            self.most, self.seen = max(self.most, self.now), self.seen + 1
            first_two = self.seen <= 2
        if first_two:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.meet.wait()

    def leave(self, context: dict, **_: Any) -> None:
        if context.get("in_flight"):
            with self.lock:
                self.now -= 1


def test_parallel_transfers_equal_sequential_ones(s3_server: Any, s3_bucket: str, many: Path, tmp_path: Path) -> None:
    one_at_a_time = dataclasses.replace(PARTS, max_concurrency=1)
    sequential = storage.upload_dir(many, f"s3://{s3_bucket}/seq", options=one_at_a_time)
    parallel = storage.upload_dir(many, f"s3://{s3_bucket}/par", options=PARTS)
    assert parallel["files"] == sequential["files"] == storage.build_manifest(many)["files"]
    client = s3_server.client()
    for rel, data in tree(many).items():
        for prefix in ("seq", "par"):
            assert client.get_object(Bucket=s3_bucket, Key=f"{prefix}/{rel}")["Body"].read() == data, (prefix, rel)
    assert client.head_object(Bucket=s3_bucket, Key="par/big-1.bin")["ETag"].endswith('-3"')  # in parts

    seq_copy = storage.download_dir(f"s3://{s3_bucket}/par", tmp_path / "seq-copy", options=one_at_a_time)
    par_copy = storage.download_dir(f"s3://{s3_bucket}/seq", tmp_path / "par-copy", options=PARTS)
    files = {rel: data for rel, data in tree(par_copy).items() if rel != "manifest.json"}
    assert files == {rel: data for rel, data in tree(seq_copy).items() if rel != "manifest.json"} == tree(many)
    assert storage.verify_local(par_copy)["files"] == sequential["files"]


@pytest.mark.parametrize("operation", ["PutObject", "GetObject"])
def test_transfers_run_at_once(s3_bucket: str, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               operation: str) -> None:
    """Small files only (one request each): more than one in flight means files move at once, and never more
    than max_concurrency."""
    for i in range(12):
        (artifact / f"shard-{i:02d}.json").write_bytes(b"{}" * i)
    uri, options = f"s3://{s3_bucket}/at-once", dataclasses.replace(PARTS, max_concurrency=3)
    probe = InFlight()
    if operation == "GetObject":
        storage.upload_dir(artifact, uri, options=options)
    spy_client(monkeypatch, lambda c: probe.watch(c, operation))
    if operation == "PutObject":
        storage.upload_dir(artifact, uri, options=options)
    else:
        storage.download_dir(uri, tmp_path / "copy", options=options)
    assert 2 <= probe.most <= 3, probe.most
    assert probe.seen == len(FILES) + 12


@pytest.mark.parametrize(("operation", "victim"), [("PutObject", "b/0/file-09.bin"), ("UploadPart", "big-2.bin")])
def test_an_object_failing_mid_upload_leaves_no_manifest(s3_server: Any, s3_bucket: str, many: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, operation: str,
                                                        victim: str) -> None:
    from botocore.exceptions import ClientError

    uri = f"s3://{s3_bucket}/fails"
    storage.upload_dir(many, uri, options=PARTS)  # a complete earlier artifact in the same place
    (many / victim).write_bytes(os.urandom(11 * 1024 * 1024) if victim in BIG else b"new")
    refused = ClientError({"Error": {"Code": "InvalidRequest", "Message": "refused"}}, operation)
    with monkeypatch.context() as patch:
        spy_client(patch, lambda c: c.meta.events.register(f"before-parameter-build.s3.{operation}",
                                                          fail_on(victim.rsplit("/", 1)[-1], refused)))
        with pytest.raises(StorageError, match=rf"failed while uploading to {uri}/{victim}: .*InvalidRequest") as err:
            storage.upload_dir(many, uri, options=PARTS)
    assert not isinstance(err.value, TransientStorageError)  # permanent: retrying() gives up at once
    assert not storage.is_complete(uri)
    with pytest.raises(StorageError, match="incomplete artifact"):
        storage.download_dir(uri, tmp_path / "copy")
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []  # aborted


def test_killed_mid_upload_leaves_no_manifest(s3_server: Any, s3_bucket: str, many: Path, tmp_path: Path) -> None:
    """The ``upload`` failpoint (SIGKILL after the 5th file is in) on a parallel upload over a complete artifact."""
    from helpers import subprocess_env

    uri = f"s3://{s3_bucket}/killed"
    storage.upload_dir(many, uri, options=PARTS)
    for path in many.rglob("*.bin"):
        path.write_bytes(path.read_bytes()[::-1])
    code = ("import sys; from kuberlhf.artifacts import storage; "
            "storage.upload_dir(sys.argv[1], sys.argv[2], options=storage.StorageOptions(max_concurrency=4))")
    proc = subprocess.run([sys.executable, "-c", code, str(many), uri], env=subprocess_env(KUBERLHF_FAILPOINTS="upload:5"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not storage.is_complete(uri)
    with pytest.raises(StorageError, match="incomplete artifact"):
        storage.fetch_dir(uri, cache_root=tmp_path / "cache")


@pytest.mark.parametrize("damage", ["missing", "corrupted", "truncated"])
@pytest.mark.parametrize("victim", ["c/1/file-10.bin", "big-1.bin"])
def test_a_partial_download_is_refused_and_the_copy_does_not_look_complete(s3_server: Any, s3_bucket: str, many: Path,
                                                                          tmp_path: Path, damage: str,
                                                                          victim: str) -> None:
    uri = f"s3://{s3_bucket}/partial"
    storage.upload_dir(many, uri, options=PARTS)
    copy = storage.download_dir(uri, tmp_path / "copy", options=PARTS)  # complete, then one file must come again
    (copy / victim).unlink()
    client, key = s3_server.client(), f"partial/{victim}"
    data = bytearray(tree(many)[victim])
    if damage == "missing":
        client.delete_object(Bucket=s3_bucket, Key=key)
    else:
        data[len(data) // 2] ^= 0x01
        client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data if damage == "corrupted" else data[:-1]))
    expected = {"missing": rf"not found while downloading {uri}/{victim}",
                "corrupted": rf"sha256 checksum mismatch for '{victim}'",
                "truncated": rf"size mismatch for '{victim}' \({len(data) - 1} bytes, manifest says {len(data)}\)"}
    with pytest.raises(IntegrityError, match=expected[damage]):
        storage.download_dir(uri, copy, options=PARTS)
    assert not (copy / "manifest.json").exists() and not storage.is_complete(str(copy))
    assert not (copy / victim).exists()
    assert not [p for p in copy.rglob("*") if p.name.endswith(".part")]
    with pytest.raises(IntegrityError, match="incomplete"):
        storage.verify_local(copy)
    with pytest.raises(IntegrityError, match=expected[damage]):
        storage.fetch_dir(uri, cache_root=tmp_path / "cache")
