"""One storage layer for every artifact: local directories and ``s3://`` prefixes.

An *artifact* is a directory (model, checkpoint, dataset shards) plus a ``manifest.json``
(:mod:`kuberlhf.artifacts.manifest`) listing every file with its size and sha256, written last:
its presence means "complete", and every downloaded file is verified against it. Where an artifact
lives is a :class:`~kuberlhf.artifacts.location.Location`, parsed once where a function here is entered;
the S3 connection and errors are :mod:`kuberlhf.artifacts.s3`; this module moves artifacts, many
files at once, each hashed as its bytes pass (:mod:`kuberlhf.artifacts.transfer`). Single objects
(a data file, the lease) are :mod:`kuberlhf.artifacts.objects`, offered here too.

Objects move through boto3 alone (one client per operation, thread-safe): artifacts, and the files and
listings of s3:// data sources. s3fs, with the narrow botocore range its aiobotocore pins, is only the
fsspec filesystem that ``datasets.load_from_disk`` needs for a ``save_to_disk`` folder on S3
(:func:`fs_for`): the ``s3data`` extra.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kuberlhf.artifacts import transfer
from kuberlhf.artifacts.failpoints import failpoint
from kuberlhf.artifacts.location import Location, LocationLike, PathLike, is_remote  # noqa: F401
from kuberlhf.artifacts.manifest import (  # noqa: F401 (the storage API in one place)
    CHECKPOINTS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    artifact_paths,
    build_manifest,
    file_problem,
    is_reserved,
    manifest_of,
    parse_manifest,
    remove_unlisted,
    save_manifest,
    sha256_of,
    unlisted_files,
    verify_local,
    write_manifest,
)
from kuberlhf.artifacts.objects import (  # noqa: F401
    delete_object,
    download_object,
    list_prefix,
    open_uri,
    read_object,
    stat_object,
    write_object,
)
from kuberlhf.artifacts.s3 import (  # noqa: F401
    StorageOptions,
    configure,
    effective_options,
    fs_for,
    is_missing,
    retrying,
    s3_client,
    s3_errors,
)
from kuberlhf.errors import IntegrityError, NotFoundError, StorageError


def _remote_manifest(client: Any, loc: Location) -> dict | None:
    """The parsed manifest under the s3 prefix ``loc``, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        raw = client.get_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))["Body"].read()
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return parse_manifest(raw, loc)


def is_complete(uri: LocationLike, options: StorageOptions | None = None) -> bool:
    """True when the artifact at ``uri`` (local dir or s3 prefix) has its manifest."""
    loc = Location.parse(uri)
    if not loc.is_remote:
        return (loc.local / MANIFEST_NAME).is_file()
    return read_manifest(loc, options) is not None


def read_manifest(uri: LocationLike, options: StorageOptions | None = None) -> dict | None:
    """The parsed manifest of the artifact at ``uri`` (local dir or s3 prefix), or None when it has none."""
    loc = Location.parse(uri)
    if not loc.is_remote:
        path = loc.local / MANIFEST_NAME
        return parse_manifest(path.read_bytes(), loc) if path.is_file() else None
    client = s3_client(options)
    with s3_errors(loc, "checking"):
        return _remote_manifest(client, loc)


# -------------------------------------------------------------------------------- transfer / publish


def upload_dir(local_dir: PathLike, uri: LocationLike, options: StorageOptions | None = None,
               exclude: Iterable[str] = (), extra: dict | None = None) -> dict:
    """Upload ``local_dir`` to the s3 prefix ``uri``, ``max_concurrency`` files at once, each hashed as it is
    read: the stale manifest is deleted first, the new one written once every file is in."""
    o, loc = effective_options(options), Location.parse_s3(uri)
    root = Location.parse(local_dir).local
    paths = artifact_paths(root, exclude)
    client = s3_client(o)
    with s3_errors(loc, "uploading to"):
        client.delete_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))
        batch = transfer.Batch(client, o)
        files = batch.run([_upload_job(batch, root, rel, loc) for rel in paths], done=lambda: failpoint("upload"))
        manifest = manifest_of(files, extra)
        _delete_unlisted(client, loc, manifest)
        client.put_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME), ContentType="application/json",
                          Body=json.dumps(manifest, indent=2).encode())
    return manifest


def _upload_job(batch: transfer.Batch, root: Path, rel: str, loc: Location,
                listed: dict | None = None) -> Callable[[], dict]:
    """Upload ``root/rel`` to ``loc/rel``; its manifest entry (``listed``: the entry it must match)."""

    def job() -> dict:
        with s3_errors(loc / rel, "uploading to"), open(root / rel, "rb") as fh:
            sent = batch.upload(fh, os.fstat(fh.fileno()).st_size, loc.bucket, loc.key(rel))
        if listed is not None and (sent["size"], sent["sha256"]) != (listed["size"], listed["sha256"]):
            raise IntegrityError(f"{root / rel} changed after it was listed (now {sent['size']} bytes, sha256 "
                                 f"{sent['sha256'][:12]}...): {loc / rel} would not match its manifest")
        return {"path": rel, **sent}

    return job


def _object_paths(client: Any, loc: Location) -> list[str]:
    """The relative paths of every object under the s3 prefix ``loc``."""
    base = loc.key_prefix
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=base)
    return [obj["Key"][len(base):] for page in pages for obj in page.get("Contents", [])]


def _delete_unlisted(client: Any, loc: Location, manifest: dict) -> None:
    """Delete the artifact objects under ``loc`` that ``manifest`` does not list (before it is written):
    a published artifact holds exactly its manifest's files. Reserved paths (checkpoints/) stay."""
    listed = {f["path"] for f in manifest["files"]} | {MANIFEST_NAME}
    stale = [rel for rel in _object_paths(client, loc) if rel not in listed and not is_reserved(rel)]
    for start in range(0, len(stale), 1000):
        keys = [{"Key": loc.key(rel)} for rel in stale[start:start + 1000]]
        errors = client.delete_objects(Bucket=loc.bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors")
        if errors:
            raise StorageError(f"cannot remove the stale {errors[0].get('Key')} under {loc}: {errors[0].get('Code')}")


def upload_files(local_dir: PathLike, uri: LocationLike, files: Iterable[dict],
                 options: StorageOptions | None = None) -> None:
    """Upload the listed files of ``local_dir`` (manifest entries) under the s3 prefix ``uri``; no manifest.
    A file that no longer matches its entry is refused.

    For an artifact assembled from several machines: each uploads its part, then one of them
    writes the manifest with :func:`put_manifest` (which removes the objects it does not list).
    """
    o, loc = effective_options(options), Location.parse_s3(uri)
    root = Location.parse(local_dir).local
    client = s3_client(o)
    with s3_errors(loc, "uploading to"):
        batch = transfer.Batch(client, o)
        batch.run([_upload_job(batch, root, entry["path"], loc, listed=entry) for entry in files])


def delete_manifest(uri: LocationLike, options: StorageOptions | None = None) -> None:
    """Mark the artifact at the s3 prefix ``uri`` incomplete (before its files are rewritten)."""
    loc = Location.parse_s3(uri)
    client = s3_client(options)
    with s3_errors(loc, "uploading to"):
        client.delete_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME))


def put_manifest(uri: LocationLike, manifest: dict, options: StorageOptions | None = None) -> None:
    """Write ``manifest`` under the s3 prefix ``uri``: the artifact is complete from then on (call it last).
    Objects under ``uri`` that it does not list are removed first."""
    loc = Location.parse_s3(uri)
    parse_manifest(json.dumps(manifest), loc)
    client = s3_client(options)
    with s3_errors(loc, "uploading to"):
        _delete_unlisted(client, loc, manifest)
        client.put_object(Bucket=loc.bucket, Key=loc.key(MANIFEST_NAME), ContentType="application/json",
                          Body=json.dumps(manifest, indent=2).encode())


def download_dir(uri: LocationLike, local_dir: PathLike, options: StorageOptions | None = None) -> Path:
    """Download the artifact at ``uri`` into ``local_dir``, ``max_concurrency`` files at once, each verified as
    it lands; keeps matching local files and removes the ones the manifest does not list (the copy holds
    exactly the artifact). The local manifest goes first and comes back only once every file matched."""
    o, loc = effective_options(options), Location.parse_s3(uri)
    dest = Location.parse(local_dir).local
    client = s3_client(o)
    with s3_errors(loc, "downloading"):
        manifest = _remote_manifest(client, loc)
        if manifest is None:
            raise StorageError(f"{loc} is an incomplete artifact: no {MANIFEST_NAME} "
                               "(upload unfinished, or not a kuberlhf artifact)")
        listed = {f["path"] for f in manifest["files"]} | {MANIFEST_NAME}
        if stale := [rel for rel in _object_paths(client, loc) if rel not in listed and not is_reserved(rel)]:
            raise IntegrityError(f"{loc}: object {stale[0]!r} is not listed in {MANIFEST_NAME} "
                               "(left over from an earlier artifact?)")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MANIFEST_NAME).unlink(missing_ok=True)
        batch = transfer.Batch(client, o)
        batch.run([_download_job(batch, loc, dest, entry) for entry in manifest["files"]])
    remove_unlisted(dest, manifest)
    save_manifest(dest, manifest)
    return dest


def _download_job(batch: transfer.Batch, loc: Location, dest: Path, entry: dict) -> Callable[[], None]:
    """Make ``dest/<path>`` the listed file: kept when it matches, else downloaded beside it, hashed as it is
    written, synced, and renamed into place only when its size and sha256 match ``entry``."""

    def job() -> None:
        target, rel = dest / entry["path"], entry["path"]
        if file_problem(target, entry) is None:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            try:
                with s3_errors(loc / rel, "downloading"), open(tmp, "wb") as out:
                    size, digest = batch.download(loc.bucket, loc.key(rel), entry["size"], out)
                    out.flush()
                    os.fsync(out.fileno())
            except NotFoundError as err:  # listed, not there: this artifact is damaged
                raise IntegrityError(str(err)) from err
            if size != entry["size"]:
                raise IntegrityError(f"{loc}: size mismatch for {rel!r} ({size} bytes, manifest says {entry['size']})")
            if digest != entry["sha256"]:
                raise IntegrityError(f"{loc}: sha256 checksum mismatch for {rel!r}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    return job


def publish_dir(local_dir: PathLike, uri: LocationLike, options: StorageOptions | None = None,
                exclude: Iterable[str] = (), extra: dict | None = None) -> dict:
    """Publish a finished artifact to ``uri`` (s3 prefix, same or other local dir); returns its manifest.
    ``extra``: manifest entries besides the files (the run that made it)."""
    loc = Location.parse(uri)
    if loc.is_remote:
        return retrying(lambda: upload_dir(local_dir, loc, options, exclude, extra), f"publishing {loc}", options)
    src, dst = Location.parse(local_dir).local, loc.local
    if dst.resolve() == src.resolve():
        return write_manifest(src, exclude, extra)
    manifest = build_manifest(src, exclude, extra)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    remove_unlisted(dst, manifest)  # what an earlier artifact here left goes: the artifact is exactly its files
    for entry in manifest["files"]:
        (dst / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / entry["path"], dst / entry["path"])
        failpoint("publish")
    save_manifest(dst, manifest)
    return manifest


def fetch_dir(uri: LocationLike, cache_root: PathLike | None = None, options: StorageOptions | None = None) -> Path:
    """A local, verified copy of the artifact at ``uri``.

    Remote: downloaded into ``(cache_root or ~/.cache/kuberlhf/artifacts)/<sha1 of uri>``. Local: returned
    as is, verified when it has a manifest (a plain folder without one, e.g. a HF model, is allowed).
    """
    loc = Location.parse(uri)
    if loc.is_remote:
        root = Path(cache_root) if cache_root else Path.home() / ".cache" / "kuberlhf" / "artifacts"
        return download_dir(loc, root / hashlib.sha1(str(loc).rstrip("/").encode()).hexdigest(), options)
    path = loc.local
    if not path.is_dir():
        raise StorageError(f"artifact directory not found: {loc}")
    if (path / MANIFEST_NAME).is_file():
        verify_local(path)
    return path


# ---------------------------------------------------------------------------------- listing / delete


def list_subdirs(uri: LocationLike, options: StorageOptions | None = None) -> list[str]:
    """Sorted names of the immediate subdirectories of a local dir or s3 prefix.

    On S3 only prefixes holding at least one object count: some S3-compatible stores
    (SeaweedFS) keep reporting an emptied "directory" until a background cleanup.
    """
    loc = Location.parse(uri)
    if not loc.is_remote:
        path = loc.local
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    base, bucket = loc.key_prefix, loc.bucket
    client, names = s3_client(options), []
    with s3_errors(loc, "listing"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base, Delimiter="/"):
            for sub in (cp["Prefix"] for cp in page.get("CommonPrefixes", [])):
                if client.list_objects_v2(Bucket=bucket, Prefix=sub, MaxKeys=1).get("Contents"):
                    names.append(sub[len(base):].rstrip("/"))
    return sorted(names)


def remove_dir(uri: LocationLike, options: StorageOptions | None = None, keep: Iterable[str] = ()) -> None:
    """Delete a local dir or every object under an s3 prefix, the manifest first; ``keep``: relative paths
    of s3 objects that stay (the run's lease)."""
    loc = Location.parse(uri)
    if not loc.is_remote:
        path = loc.local
        if path.exists():
            (path / MANIFEST_NAME).unlink(missing_ok=True)
            shutil.rmtree(path)
        return
    if not loc.prefix:
        raise StorageError(f"refusing to remove a whole bucket: {loc}")
    client, kept, bucket = s3_client(options), {loc.key(rel) for rel in keep}, loc.bucket
    with s3_errors(loc, "removing"):
        client.delete_object(Bucket=bucket, Key=loc.key(MANIFEST_NAME))
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=loc.key_prefix):
            if keys := [{"Key": obj["Key"]} for obj in page.get("Contents", []) if obj["Key"] not in kept]:
                errors = client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors")
                if errors:
                    raise StorageError(f"cannot remove {loc}: {errors[0].get('Code')} on {errors[0].get('Key')}")
