"""Artifact manifests and local-path storage (no S3 server needed)."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kuberlhf.artifacts import storage
from kuberlhf.errors import KuberlhfError, StorageError


def make_artifact(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"hidden": 128}',
        "model.safetensors": bytes(range(256)) * 40,
        "tokenizer/vocab.json": b'{"a": 1}',
        "tokenizer/deep/merges.txt": b"a b\n",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    root = tmp_path / "artifact"
    make_artifact(root)
    return root


def test_build_manifest_lists_every_file_with_size_and_sha256(artifact: Path) -> None:
    files = make_artifact(artifact)
    (artifact / storage.MANIFEST_NAME).write_text("{}")  # an old manifest is not listed
    manifest = storage.build_manifest(artifact)
    assert manifest["format"] == "kuberlhf-artifact/1"
    assert [f["path"] for f in manifest["files"]] == sorted(files)
    for entry in manifest["files"]:
        data = files[entry["path"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["total_bytes"] == sum(len(d) for d in files.values())
    assert datetime.datetime.fromisoformat(manifest["created"]).tzinfo is not None


def test_build_manifest_exclude_globs(artifact: Path) -> None:
    manifest = storage.build_manifest(artifact, exclude=["tokenizer/*", "*.txt"])
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors"]


def test_write_manifest_then_verify(artifact: Path) -> None:
    written = storage.write_manifest(artifact)
    on_disk = json.loads((artifact / storage.MANIFEST_NAME).read_text())
    assert on_disk == written
    assert not [p for p in artifact.iterdir() if p.name.endswith(".tmp")]
    assert storage.verify_local(artifact) == written
    assert storage.is_complete(str(artifact))


def test_tampered_file_same_size_detected(artifact: Path) -> None:
    storage.write_manifest(artifact)
    data = bytearray((artifact / "model.safetensors").read_bytes())
    data[100] ^= 0xFF
    (artifact / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"sha256.*model\.safetensors"):
        storage.verify_local(artifact)


def test_truncated_and_missing_files_detected(artifact: Path) -> None:
    storage.write_manifest(artifact)
    (artifact / "tokenizer/vocab.json").write_bytes(b"{")
    with pytest.raises(StorageError, match=r"size mismatch.*tokenizer/vocab\.json"):
        storage.verify_local(artifact)
    (artifact / "tokenizer/vocab.json").unlink()
    with pytest.raises(StorageError, match=r"tokenizer/vocab\.json.*missing"):
        storage.verify_local(artifact)


def test_missing_manifest_refused(artifact: Path) -> None:
    assert not storage.is_complete(str(artifact))
    with pytest.raises(StorageError, match=r"incomplete: no manifest\.json") as info:
        storage.verify_local(artifact)
    assert str(artifact) in str(info.value)
    assert isinstance(info.value, KuberlhfError)


@pytest.mark.parametrize("content", ["not json", '{"format": "other/1", "files": []}',
                                     '{"format": "kuberlhf-artifact/1", "files": [{"path": "a"}]}',
                                     '{"format": "kuberlhf-artifact/1", "files": '
                                     '[{"path": "../escape", "size": 0, "sha256": "x"}]}'])
def test_invalid_or_unsafe_manifest_refused(artifact: Path, content: str) -> None:
    (artifact / storage.MANIFEST_NAME).write_text(content)
    with pytest.raises(StorageError, match=r"(invalid|unsafe).*manifest\.json"):
        storage.verify_local(artifact)


@pytest.mark.parametrize(("uri", "expected"), [
    ("s3://bucket/a/b/", ("bucket", "a/b")),
    ("s3://my.bucket-1/model.safetensors", ("my.bucket-1", "model.safetensors")),
    ("s3://bucket", ("bucket", "")),
])
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert storage.is_remote(uri)
    loc = storage.Location.parse_s3(uri)
    assert (loc.bucket, loc.prefix) == expected and loc.is_remote and str(loc) == uri


@pytest.mark.parametrize(("uri", "why"), [
    ("s3://", "empty bucket"), ("s3:///key", "empty bucket"),
    ("s3://Bad_Bucket/x", "invalid S3 bucket name"), ("s3://ab/x", "invalid S3 bucket name"),
    ("s3://a..b/x", "invalid S3 bucket name"),
    ("gs://bucket/x", "not an s3:// URI"), ("http://host/x", "not an s3:// URI"),
    ("/local/path", "not an s3:// URI"),
])
def test_parse_s3_uri_errors_name_the_uri(uri: str, why: str) -> None:
    with pytest.raises(StorageError, match=why) as info:
        storage.Location.parse_s3(uri)
    assert repr(uri) in str(info.value)


def test_a_location_descends_and_names_its_keys(tmp_path: Path) -> None:
    """Parsed once: ``/`` descends (the URI as written, one slash between), ``key`` is an object's key,
    ``key_prefix`` what the keys under it start with; two spellings of one place are equal."""
    out = storage.Location.parse("s3://bucket/runs/sft/")
    ckpt = out / "checkpoints" / "checkpoint-3"
    assert str(ckpt) == "s3://bucket/runs/sft/checkpoints/checkpoint-3" and ckpt.prefix == "runs/sft/checkpoints/checkpoint-3"
    assert ckpt.key("manifest.json") == "runs/sft/checkpoints/checkpoint-3/manifest.json"
    assert (out.key(), out.key_prefix, out.key("a/b.json")) == ("runs/sft", "runs/sft/", "runs/sft/a/b.json")
    whole = storage.Location.parse("s3://bucket")
    assert (whole.key(), whole.key_prefix, whole.key("x"), str(whole / "x")) == ("", "", "x", "s3://bucket/x")
    assert out == storage.Location.parse("s3://bucket/runs/sft") and storage.Location.parse(out) is out
    local = storage.Location.parse(f"file://{tmp_path}")
    assert not local.is_remote and local.local == tmp_path and (local / "a").local == tmp_path / "a"
    assert storage.Location.parse(tmp_path) == local
    with pytest.raises(StorageError, match="'s3://bucket/runs/sft/' is not a local path"):
        assert out.local
    with pytest.raises(StorageError, match=f"not an s3:// URI: '{tmp_path}'"):
        storage.Location.parse_s3(tmp_path)


def test_other_schemes_refused_by_local_operations(tmp_path: Path) -> None:
    for call in (lambda: storage.fetch_dir("gs://bucket/model"), lambda: storage.open_uri("http://host/a.parquet"),
                 lambda: storage.publish_dir(tmp_path, "gs://bucket/x")):
        with pytest.raises(StorageError, match="unsupported URI scheme"):
            call()
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("gs://b/x")


def test_publish_dir_in_place_writes_manifest(artifact: Path) -> None:
    manifest = storage.publish_dir(artifact, str(artifact))
    assert storage.verify_local(artifact) == manifest


def test_publish_dir_copies_then_writes_manifest(artifact: Path, tmp_path: Path) -> None:
    dest = tmp_path / "published"
    manifest = storage.publish_dir(artifact, str(dest), exclude=["*.txt"])
    assert storage.verify_local(dest) == manifest
    assert (dest / "tokenizer/vocab.json").read_bytes() == b'{"a": 1}'
    assert not (dest / "empty.txt").exists()
    assert "tokenizer/deep/merges.txt" not in [f["path"] for f in manifest["files"]]


def test_publish_dir_over_old_artifact_is_incomplete_if_interrupted(
        artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "published"
    storage.publish_dir(artifact, str(dest))
    assert storage.is_complete(str(dest))
    (artifact / "config.json").write_bytes(b'{"hidden": 256}')
    calls = []

    def flaky_copy(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        shutil.copyfile(src, dst)

    monkeypatch.setattr(storage.shutil, "copy2", flaky_copy)
    with pytest.raises(OSError, match="disk full"):
        storage.publish_dir(artifact, str(dest))
    assert not storage.is_complete(str(dest))


def test_fetch_dir_local(artifact: Path, tmp_path: Path) -> None:
    assert storage.fetch_dir(str(artifact)) == artifact  # no manifest: a plain folder is fine
    storage.write_manifest(artifact)
    assert storage.fetch_dir(f"file://{artifact}") == artifact
    (artifact / "config.json").write_bytes(b'{"hidden": 999}')
    with pytest.raises(StorageError, match="config.json"):
        storage.fetch_dir(str(artifact))
    with pytest.raises(StorageError, match="not found"):
        storage.fetch_dir(str(tmp_path / "nope"))


def test_list_subdirs_and_remove_dir_local(tmp_path: Path) -> None:
    for name in ("checkpoint-20", "checkpoint-10"):
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "w.bin").write_bytes(b"x")
    (tmp_path / "run" / "file.txt").write_text("not a dir")
    assert storage.list_subdirs(str(tmp_path / "run")) == ["checkpoint-10", "checkpoint-20"]
    assert storage.list_subdirs(str(tmp_path / "missing")) == []
    storage.remove_dir(str(tmp_path / "run" / "checkpoint-10"))
    assert storage.list_subdirs(str(tmp_path / "run")) == ["checkpoint-20"]
    storage.remove_dir(str(tmp_path / "run" / "checkpoint-10"))  # already gone: no error


def test_open_uri_and_fs_for_local(artifact: Path) -> None:
    with storage.open_uri(str(artifact / "config.json")) as fh:
        assert fh.read() == b'{"hidden": 128}'
    assert storage.fs_for(str(artifact)).exists(str(artifact / "config.json"))
    with pytest.raises(StorageError, match="cannot open"):
        storage.open_uri(str(artifact / "nope.json"))


def test_configure_sets_defaults() -> None:
    try:
        storage.configure(storage.StorageOptions(max_attempts=3, multipart_threshold_mb=5))
        assert storage.effective_options(None).max_attempts == 3
        explicit = storage.StorageOptions(max_attempts=1)
        assert storage.effective_options(explicit) is explicit
    finally:
        storage.configure(None)
    assert storage.effective_options(None) == storage.StorageOptions()


def test_an_unlisted_file_is_refused_naming_it(artifact: Path) -> None:
    storage.write_manifest(artifact)
    (artifact / "tokenizer/chat_template.jinja").write_text("{{ stale }}")
    with pytest.raises(StorageError, match=r"'tokenizer/chat_template.jinja' is not listed in manifest.json"):
        storage.verify_local(artifact)


def test_reserved_paths_are_not_the_artifact(artifact: Path) -> None:
    (artifact / "checkpoints/checkpoint-2").mkdir(parents=True)
    (artifact / "checkpoints/checkpoint-2/state.pt").write_bytes(b"x")
    (artifact / ".final").mkdir()
    (artifact / ".final/config.json").write_text("{}")
    manifest = storage.write_manifest(artifact)
    assert not [f for f in manifest["files"] if f["path"].startswith(("checkpoints/", ".final/"))]
    storage.verify_local(artifact)


def test_publishing_over_an_old_artifact_leaves_none_of_its_files(tmp_path: Path) -> None:
    """A LoRA artifact published where a full fine-tune was: the old weights, generation config and chat
    template go (a loader would pick them up; merge would take the artifact for a merged one)."""
    out = tmp_path / "out"
    full = tmp_path / "full"
    for rel in ("config.json", "model.safetensors", "generation_config.json", "tokenizer/chat_template.jinja"):
        (full / rel).parent.mkdir(parents=True, exist_ok=True)
        (full / rel).write_text(rel)
    storage.publish_dir(full, out)
    (out / "checkpoints/checkpoint-1").mkdir(parents=True)  # the run's own: kept
    lora = tmp_path / "lora"
    (lora / "adapter").mkdir(parents=True)
    (lora / "adapter/adapter_config.json").write_text("{}")
    (lora / "tokenizer").mkdir()
    (lora / "tokenizer/tokenizer.json").write_text("{}")
    manifest = storage.publish_dir(lora, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["adapter/adapter_config.json", "manifest.json", "tokenizer/tokenizer.json"]
    assert (out / "checkpoints/checkpoint-1").is_dir()
    assert storage.verify_local(out)["files"] == manifest["files"]


def test_storage_max_concurrency_reaches_the_transfers_and_their_connection_pool() -> None:
    from kuberlhf.artifacts import s3
    from kuberlhf.config.sections import StorageConfig
    from kuberlhf.errors import ConfigError

    for bad in (0, 65):
        with pytest.raises(ConfigError, match="storage.max_concurrency"):
            StorageConfig(max_concurrency=bad)
    try:
        s3.configure_from(StorageConfig(max_concurrency=20, retry_budget_s=7))
        options = storage.effective_options(None)
        assert (options.max_concurrency, options.retry_budget_s) == (20, 7)
        assert s3._botocore_config(options)["max_pool_connections"] >= 2 * 20  # file threads + part threads
    finally:
        storage.configure(None)
