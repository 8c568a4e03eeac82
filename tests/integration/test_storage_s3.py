"""kuberlhf.artifacts.storage against a real S3 server (SeaweedFS, see tests/s3server.py)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kuberlhf.artifacts import storage
from kuberlhf.errors import StorageError

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

    def break_second_upload(client: Any) -> None:
        real, calls = client.upload_file, []

        def upload_file(filename: str, *args: Any, **kwargs: Any) -> None:
            calls.append(filename)
            if len(calls) == 2:
                raise OSError("connection reset mid-upload")
            real(filename, *args, **kwargs)

        client.upload_file = upload_file

    (artifact / "config.json").write_bytes(b'{"hidden": 256}')
    with monkeypatch.context() as patch, pytest.raises(StorageError, match="uploading to s3://"):
        spy_client(patch, break_second_upload)
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
