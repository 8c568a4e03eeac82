"""Artifact manifests: every file of an artifact with its size and sha256, written last.

A *manifest* (``manifest.json``) lists every file of an artifact directory. It is written LAST
and removed FIRST when an artifact is overwritten, so its presence means "complete": a reader
never picks up a half-written artifact, and every file is verified against it. An artifact holds
exactly its manifest's files: a file it does not list (left over from an earlier artifact in the
same place) is refused, except the *reserved* paths of the run that writes it: ``checkpoints/``
(each checkpoint an artifact of its own) and dot-named entries at the top (staging, lease, trackers).
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from kuberlhf.artifacts.location import Location, PathLike
from kuberlhf.errors import IntegrityError, StorageError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "kuberlhf-artifact/1"
CHECKPOINTS = "checkpoints"
_MIB = 1024 * 1024


def is_reserved(rel: str) -> bool:
    """Whether the relative path ``rel`` under an artifact's root belongs to the run rather than the
    artifact: its ``checkpoints/`` and the dot-named entries at the top (``.final``, ``.lease.json``)."""
    top = rel.split("/", 1)[0]
    return top == CHECKPOINTS or top.startswith(".")


def _walk(root: Path) -> list[str]:
    """The relative paths of the artifact files under ``root``: every file but the manifest and reserved paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        if base == Path("."):
            dirnames[:] = [d for d in dirnames if not is_reserved(d)]
        found += [(base / name).as_posix() for name in filenames]
    return sorted(rel for rel in found if rel != MANIFEST_NAME and not is_reserved(rel))


def unlisted_files(root: Path, manifest: dict) -> list[str]:
    """Artifact files under ``root`` that ``manifest`` does not list."""
    listed = {f["path"] for f in manifest["files"]}
    return [rel for rel in _walk(root) if rel not in listed]


def remove_unlisted(root: Path, manifest: dict) -> list[str]:
    """Delete the artifact files under ``root`` that ``manifest`` does not list (and emptied folders)."""
    stale = unlisted_files(root, manifest)
    for rel in stale:
        (root / rel).unlink()
    for folder in sorted({(root / rel).parent for rel in stale}, key=lambda d: -len(d.parts)):
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return stale


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    return _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_paths(local_dir: PathLike, exclude: Iterable[str] = ()) -> list[str]:
    """The relative paths of the files an artifact of ``local_dir`` holds: every file but the manifest,
    reserved paths and ``exclude`` globs (relative paths), sorted."""
    root = Location.parse(local_dir).local
    if not root.is_dir():
        raise StorageError(f"artifact directory not found: {root}")
    patterns = tuple(exclude)
    return [rel for rel in _walk(root) if not any(fnmatch.fnmatch(rel, p) for p in patterns)]


def build_manifest(local_dir: PathLike, exclude: Iterable[str] = (), extra: dict | None = None) -> dict:
    """Describe every file of :func:`artifact_paths` with its size and sha256; ``extra`` entries (the run
    that made it) are added."""
    root = Location.parse(local_dir).local
    files = [{"path": rel, "size": (root / rel).stat().st_size, "sha256": _sha256(root / rel)}
             for rel in artifact_paths(root, exclude)]
    return manifest_of(files, extra)


def save_manifest(root: Path, manifest: dict) -> None:
    """Write ``manifest`` as ``root/manifest.json``, whole or not at all (call it last: the artifact is complete
    from then on). The files it lists reach the disk first (fsync): a manifest that survives a power cut never
    lists a file that did not."""
    _sync_files(root, manifest.get("files", []))
    path = root / MANIFEST_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(manifest, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(root)


def _sync_files(root: Path, files: list[dict]) -> None:
    for entry in files:
        try:
            fd = os.open(root / entry["path"], os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(local_dir: PathLike, exclude: Iterable[str] = (), extra: dict | None = None) -> dict:
    """Build the manifest of ``local_dir`` and write it atomically into it (call it last)."""
    manifest = build_manifest(local_dir, exclude, extra)
    save_manifest(Location.parse(local_dir).local, manifest)
    return manifest


def parse_manifest(raw: bytes | str, where: str | Location) -> dict:
    """Decode and sanity-check a manifest (an IntegrityError naming ``where``, the artifact, when it is not one);
    its paths must stay inside the artifact."""
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and all(
            isinstance(f["path"], str) and isinstance(f["size"], int) and isinstance(f["sha256"], str) for f in files)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise IntegrityError(f"invalid {MANIFEST_NAME} in {where} (expected {MANIFEST_FORMAT})")
    for f in files:
        rel = PurePosixPath(f["path"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise IntegrityError(f"unsafe path {f['path']!r} in {MANIFEST_NAME} of {where}")
    return manifest


def file_problem(path: Path, entry: dict) -> str | None:
    """Why ``path`` does not match its manifest ``entry`` (presence, size, sha256), or None."""
    if not path.is_file():
        return f"file {entry['path']!r} listed in {MANIFEST_NAME} is missing"
    if (size := path.stat().st_size) != entry["size"]:
        return f"size mismatch for {entry['path']!r} ({size} bytes, manifest says {entry['size']})"
    if _sha256(path) != entry["sha256"]:
        return f"sha256 checksum mismatch for {entry['path']!r}"
    return None


def verify_local(local_dir: PathLike) -> dict:
    """Check every file listed in the manifest of ``local_dir``, and that it holds no other; return the manifest."""
    root = Location.parse(local_dir).local
    if not (root / MANIFEST_NAME).is_file():
        raise IntegrityError(f"{root} is incomplete: no {MANIFEST_NAME} (unfinished write?)")
    manifest = parse_manifest((root / MANIFEST_NAME).read_bytes(), str(root))
    for entry in manifest["files"]:
        if problem := file_problem(root / entry["path"], entry):
            raise IntegrityError(f"{root}: {problem}")
    if stale := unlisted_files(root, manifest):
        raise IntegrityError(f"{root}: file {stale[0]!r} is not listed in {MANIFEST_NAME} "
                           "(left over from an earlier artifact?)")
    return manifest


def manifest_of(files: Iterable[dict], extra: dict | None = None) -> dict:
    """A manifest for file entries (``path``, ``size``, ``sha256``), e.g. gathered from several places;
    ``extra`` entries (the run that made it) are added."""
    entries = sorted(files, key=lambda f: f["path"])
    return {"format": MANIFEST_FORMAT, "files": entries, "total_bytes": sum(f["size"] for f in entries),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **(extra or {})}


