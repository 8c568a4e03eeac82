"""Artifact manifests: every file of an artifact with its size and sha256, written last.

A *manifest* (``manifest.json``) lists every file of an artifact directory. It is written LAST
and removed FIRST when an artifact is overwritten, so its presence means "complete": a reader
never picks up a half-written artifact, and every file is verified against it.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from kuberlhf.artifacts.s3 import PathLike, _local_path
from kuberlhf.errors import StorageError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "kuberlhf-artifact/1"
_MIB = 1024 * 1024


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(local_dir: PathLike, exclude: Iterable[str] = ()) -> dict:
    """Describe every file under ``local_dir`` except the manifest and ``exclude`` globs (relative paths)."""
    root = _local_path(local_dir)
    if not root.is_dir():
        raise StorageError(f"artifact directory not found: {root}")
    patterns = tuple(exclude)
    files = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST_NAME and not any(fnmatch.fnmatch(rel, p) for p in patterns):
                files.append({"path": rel, "size": path.stat().st_size, "sha256": _sha256(path)})
    files.sort(key=lambda f: f["path"])
    return {"format": MANIFEST_FORMAT, "files": files, "total_bytes": sum(f["size"] for f in files),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_manifest(local_dir: PathLike, exclude: Iterable[str] = ()) -> dict:
    """Build the manifest of ``local_dir`` and write it atomically into it (call it last)."""
    manifest = build_manifest(local_dir, exclude)
    _write_json_atomic(_local_path(local_dir) / MANIFEST_NAME, manifest)
    return manifest


def _parse_manifest(raw: bytes | str, where: str) -> dict:
    """Decode and sanity-check a manifest; its paths must stay inside the artifact."""
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and all(
            isinstance(f["path"], str) and isinstance(f["size"], int) and isinstance(f["sha256"], str) for f in files)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise StorageError(f"invalid {MANIFEST_NAME} in {where} (expected {MANIFEST_FORMAT})")
    for f in files:
        rel = PurePosixPath(f["path"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise StorageError(f"unsafe path {f['path']!r} in {MANIFEST_NAME} of {where}")
    return manifest


def _file_problem(path: Path, entry: dict) -> str | None:
    """Why ``path`` does not match its manifest ``entry`` (presence, size, sha256), or None."""
    if not path.is_file():
        return f"file {entry['path']!r} listed in {MANIFEST_NAME} is missing"
    if (size := path.stat().st_size) != entry["size"]:
        return f"size mismatch for {entry['path']!r} ({size} bytes, manifest says {entry['size']})"
    if _sha256(path) != entry["sha256"]:
        return f"sha256 checksum mismatch for {entry['path']!r}"
    return None


def verify_local(local_dir: PathLike) -> dict:
    """Check every file listed in the manifest of ``local_dir``; return the manifest."""
    root = _local_path(local_dir)
    if not (root / MANIFEST_NAME).is_file():
        raise StorageError(f"{root} is incomplete: no {MANIFEST_NAME} (unfinished write?)")
    manifest = _parse_manifest((root / MANIFEST_NAME).read_bytes(), str(root))
    for entry in manifest["files"]:
        if problem := _file_problem(root / entry["path"], entry):
            raise StorageError(f"{root}: {problem}")
    return manifest


def manifest_of(files: Iterable[dict]) -> dict:
    """A manifest for file entries (``path``, ``size``, ``sha256``) gathered from several places."""
    entries = sorted(files, key=lambda f: f["path"])
    return {"format": MANIFEST_FORMAT, "files": entries, "total_bytes": sum(f["size"] for f in entries),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


