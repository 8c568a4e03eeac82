"""One storage layer for every artifact: local directories and ``s3://`` prefixes.

An *artifact* is a directory (model, checkpoint, dataset shards) plus a ``manifest.json``
listing every file with its size and sha256. The manifest is written LAST and removed
FIRST when an artifact is overwritten, so its presence means "complete": a reader never
picks up a half-written artifact, and every downloaded file is verified against it.

Credentials and endpoints come from boto3's standard sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL[_S3]``,
``AWS_DEFAULT_REGION``/``AWS_REGION``, profiles, IRSA) unless set in :class:`StorageOptions`.
Every failure raises :class:`~kuberlhf.errors.StorageError` naming the URI at fault.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from kuberlhf.errors import StorageError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "kuberlhf-artifact/1"
_MIB = 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CRED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_CRED_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / a web identity)"

PathLike = str | os.PathLike[str]


@dataclass
class StorageOptions:
    """S3 connection settings; ``None`` fields fall back to boto3's standard sources."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    max_attempts: int = 8
    multipart_threshold_mb: int = 64
    multipart_chunksize_mb: int = 16
    max_concurrency: int = 8


_defaults = StorageOptions()


def configure(options: StorageOptions | None) -> None:
    """Set the options used when a function is called without ``options=`` (None resets)."""
    global _defaults
    _defaults = options if options is not None else StorageOptions()


def _opts(options: StorageOptions | None) -> StorageOptions:
    return options if options is not None else _defaults


# ---------------------------------------------------------------------------------------------- URIs


def is_remote(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return str(uri).lower().startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix/`` into ``("bucket", "some/prefix")``."""
    if not is_remote(uri):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = str(uri)[5:].partition("/")
    if not bucket:
        raise StorageError(f"empty bucket name in URI {uri!r}")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(f"invalid S3 bucket name {bucket!r} in URI {uri!r} "
                           "(3-63 chars: lowercase letters, digits, '.', '-')")
    return bucket, key.strip("/")


def _local_path(uri: PathLike) -> Path:
    """A local path from a plain path or ``file://`` URI; other schemes are refused."""
    text = os.fspath(uri)
    if text.startswith("file://"):
        return Path(text[7:])
    if "://" in text:
        raise StorageError(f"unsupported URI scheme in {text!r}: use s3://bucket/prefix or a local path")
    return Path(text)


def _key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


# ----------------------------------------------------------------------------------------- S3 client


def _endpoint(o: StorageOptions) -> str | None:
    return o.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _session(o: StorageOptions) -> tuple[Any, str]:
    """A boto3 session and its region; StorageError when no credentials can be found."""
    import boto3

    session = boto3.session.Session(aws_access_key_id=o.access_key_id, aws_secret_access_key=o.secret_access_key,
                                    aws_session_token=o.session_token, region_name=o.region)
    if session.get_credentials() is None:
        raise StorageError(f"no S3 credentials: {_CRED_HINT}")
    return session, session.region_name or os.environ.get("AWS_REGION") or "us-east-1"


def _botocore_config(o: StorageOptions) -> dict[str, Any]:
    cfg: dict[str, Any] = {"retries": {"max_attempts": o.max_attempts, "mode": "standard"}}
    if _endpoint(o):
        cfg["s3"] = {"addressing_style": "path"}
    return cfg


def s3_client(options: StorageOptions | None = None) -> Any:
    """A boto3 S3 client (standard retries, path-style addressing for custom endpoints)."""
    from botocore.config import Config

    o = _opts(options)
    session, region = _session(o)
    return session.client("s3", endpoint_url=_endpoint(o), region_name=region, config=Config(**_botocore_config(o)))


def _transfer_config(o: StorageOptions) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=o.multipart_threshold_mb * _MIB,
                          multipart_chunksize=o.multipart_chunksize_mb * _MIB,
                          max_concurrency=o.max_concurrency, use_threads=True)


def _client_code(exc: BaseException) -> str | None:
    """The S3 error code of a ClientError, also when wrapped (boto3's S3UploadFailedError)."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return None


def _translate(exc: BaseException, uri: str, action: str) -> StorageError:
    """Map a boto3/botocore/s3fs exception to a one-line StorageError naming ``uri``."""
    from botocore.exceptions import NoCredentialsError

    code = _client_code(exc)
    remote_os = isinstance(exc, OSError) and exc.errno is None  # s3fs errors carry no errno
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"no S3 credentials while {action} {uri}: {_CRED_HINT}")
    if code in _CRED_CODES:
        return StorageError(f"S3 rejected the credentials while {action} {uri} ({code}): "
                            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    if code in _DENIED_CODES or (remote_os and isinstance(exc, PermissionError)):
        return StorageError(f"access denied while {action} {uri}: the credentials lack permission "
                            "(or are wrong); check AWS_ACCESS_KEY_ID and its policy")
    if code == "NoSuchBucket":
        return StorageError(f"bucket does not exist while {action} {uri}")
    if code in _MISSING_CODES or (remote_os and isinstance(exc, FileNotFoundError)):
        return StorageError(f"not found while {action} {uri}")
    return StorageError(f"failed while {action} {uri}: {exc}")


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    """Re-raise boto3/botocore/s3fs (and local I/O) failures as StorageError."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except StorageError:
        raise
    except (ClientError, BotoCoreError, Boto3Error, OSError) as exc:
        raise _translate(exc, uri, action) from exc


# ------------------------------------------------------------------------------------------ manifest


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


def _remote_manifest(client: Any, uri: str) -> dict | None:
    """The parsed manifest under the s3 prefix ``uri``, or None when there is none."""
    from botocore.exceptions import ClientError

    bucket, prefix = parse_s3_uri(uri)
    try:
        raw = client.get_object(Bucket=bucket, Key=_key(prefix, MANIFEST_NAME))["Body"].read()
    except ClientError as exc:
        if _client_code(exc) in _MISSING_CODES:
            return None
        raise
    return _parse_manifest(raw, uri)


def is_complete(uri: str, options: StorageOptions | None = None) -> bool:
    """True when the artifact at ``uri`` (local dir or s3 prefix) has its manifest."""
    if not is_remote(uri):
        return (_local_path(uri) / MANIFEST_NAME).is_file()
    client = s3_client(options)
    with _s3_errors(uri, "checking"):
        return _remote_manifest(client, uri) is not None


# -------------------------------------------------------------------------------- transfer / publish


def upload_dir(local_dir: PathLike, uri: str, options: StorageOptions | None = None,
               exclude: Iterable[str] = ()) -> dict:
    """Upload ``local_dir`` to the s3 prefix ``uri``: stale manifest deleted first, new one written last."""
    o = _opts(options)
    bucket, prefix = parse_s3_uri(uri)
    root = _local_path(local_dir)
    manifest = build_manifest(root, exclude)
    client, config = s3_client(o), _transfer_config(o)
    with _s3_errors(uri, "uploading to"):
        client.delete_object(Bucket=bucket, Key=_key(prefix, MANIFEST_NAME))
        for entry in manifest["files"]:
            client.upload_file(str(root / entry["path"]), bucket, _key(prefix, entry["path"]), Config=config)
        client.put_object(Bucket=bucket, Key=_key(prefix, MANIFEST_NAME), ContentType="application/json",
                          Body=json.dumps(manifest, indent=2).encode())
    return manifest


def manifest_of(files: Iterable[dict]) -> dict:
    """A manifest for file entries (``path``, ``size``, ``sha256``) gathered from several places."""
    entries = sorted(files, key=lambda f: f["path"])
    return {"format": MANIFEST_FORMAT, "files": entries, "total_bytes": sum(f["size"] for f in entries),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def upload_files(local_dir: PathLike, uri: str, files: Iterable[dict], options: StorageOptions | None = None) -> None:
    """Upload the listed files of ``local_dir`` (manifest entries) under the s3 prefix ``uri``; no manifest.

    For an artifact assembled from several machines: each uploads its part, then one of them
    writes the manifest with :func:`put_manifest`.
    """
    o = _opts(options)
    bucket, prefix = parse_s3_uri(uri)
    root = _local_path(local_dir)
    client, config = s3_client(o), _transfer_config(o)
    with _s3_errors(uri, "uploading to"):
        for entry in files:
            client.upload_file(str(root / entry["path"]), bucket, _key(prefix, entry["path"]), Config=config)


def delete_manifest(uri: str, options: StorageOptions | None = None) -> None:
    """Mark the artifact at the s3 prefix ``uri`` incomplete (before its files are rewritten)."""
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(options)
    with _s3_errors(uri, "uploading to"):
        client.delete_object(Bucket=bucket, Key=_key(prefix, MANIFEST_NAME))


def put_manifest(uri: str, manifest: dict, options: StorageOptions | None = None) -> None:
    """Write ``manifest`` under the s3 prefix ``uri``: the artifact is complete from then on (call it last)."""
    _parse_manifest(json.dumps(manifest), uri)
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(options)
    with _s3_errors(uri, "uploading to"):
        client.put_object(Bucket=bucket, Key=_key(prefix, MANIFEST_NAME), ContentType="application/json",
                          Body=json.dumps(manifest, indent=2).encode())


def download_dir(uri: str, local_dir: PathLike, options: StorageOptions | None = None) -> Path:
    """Download the artifact at ``uri`` into ``local_dir``, verifying every file; keeps matching local files."""
    o = _opts(options)
    bucket, prefix = parse_s3_uri(uri)
    dest = _local_path(local_dir)
    client, config = s3_client(o), _transfer_config(o)
    with _s3_errors(uri, "downloading"):
        manifest = _remote_manifest(client, uri)
        if manifest is None:
            raise StorageError(f"{uri} is an incomplete artifact: no {MANIFEST_NAME} "
                               "(upload unfinished, or not a kuberlhf artifact)")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MANIFEST_NAME).unlink(missing_ok=True)
        for entry in manifest["files"]:
            target = dest / entry["path"]
            if _file_problem(target, entry) is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                client.download_file(bucket, _key(prefix, entry["path"]), str(tmp), Config=config)
                if problem := _file_problem(tmp, entry):
                    raise StorageError(f"{uri}: {problem}")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    _write_json_atomic(dest / MANIFEST_NAME, manifest)
    return dest


def publish_dir(local_dir: PathLike, uri: str, options: StorageOptions | None = None,
                exclude: Iterable[str] = ()) -> dict:
    """Publish a finished artifact to ``uri`` (s3 prefix, same or other local dir); returns its manifest."""
    if is_remote(uri):
        return upload_dir(local_dir, uri, options, exclude)
    src, dst = _local_path(local_dir), _local_path(uri)
    if dst.resolve() == src.resolve():
        return write_manifest(src, exclude)
    manifest = build_manifest(src, exclude)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in manifest["files"]:
        (dst / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / entry["path"], dst / entry["path"])
    _write_json_atomic(dst / MANIFEST_NAME, manifest)
    return manifest


def fetch_dir(uri: str, cache_root: PathLike | None = None, options: StorageOptions | None = None) -> Path:
    """A local, verified copy of the artifact at ``uri``.

    Remote: downloaded into ``(cache_root or ~/.cache/kuberlhf/artifacts)/<sha1 of uri>``. Local: returned
    as is, verified when it has a manifest (a plain folder without one, e.g. a HF model, is allowed).
    """
    if is_remote(uri):
        root = Path(cache_root) if cache_root else Path.home() / ".cache" / "kuberlhf" / "artifacts"
        return download_dir(uri, root / hashlib.sha1(str(uri).rstrip("/").encode()).hexdigest(), options)
    path = _local_path(uri)
    if not path.is_dir():
        raise StorageError(f"artifact directory not found: {uri}")
    if (path / MANIFEST_NAME).is_file():
        verify_local(path)
    return path


# ---------------------------------------------------------------------------------- listing / delete


def list_subdirs(uri: str, options: StorageOptions | None = None) -> list[str]:
    """Sorted names of the immediate subdirectories of a local dir or s3 prefix.

    On S3 only prefixes holding at least one object count: some S3-compatible stores
    (SeaweedFS) keep reporting an emptied "directory" until a background cleanup.
    """
    if not is_remote(uri):
        path = _local_path(uri)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    bucket, prefix = parse_s3_uri(uri)
    base = f"{prefix}/" if prefix else ""
    client, names = s3_client(options), []
    with _s3_errors(uri, "listing"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base, Delimiter="/"):
            for sub in (cp["Prefix"] for cp in page.get("CommonPrefixes", [])):
                if client.list_objects_v2(Bucket=bucket, Prefix=sub, MaxKeys=1).get("Contents"):
                    names.append(sub[len(base):].rstrip("/"))
    return sorted(names)


def remove_dir(uri: str, options: StorageOptions | None = None) -> None:
    """Delete a local dir or every object under an s3 prefix, the manifest first."""
    if not is_remote(uri):
        path = _local_path(uri)
        if path.exists():
            (path / MANIFEST_NAME).unlink(missing_ok=True)
            shutil.rmtree(path)
        return
    bucket, prefix = parse_s3_uri(uri)
    if not prefix:
        raise StorageError(f"refusing to remove a whole bucket: {uri}")
    client = s3_client(options)
    with _s3_errors(uri, "removing"):
        client.delete_object(Bucket=bucket, Key=_key(prefix, MANIFEST_NAME))
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            if keys := [{"Key": obj["Key"]} for obj in page.get("Contents", [])]:
                errors = client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors")
                if errors:
                    raise StorageError(f"cannot remove {uri}: {errors[0].get('Code')} on {errors[0].get('Key')}")


# -------------------------------------------------------------------------------------- streaming IO


def fs_for(uri: str, options: StorageOptions | None = None) -> Any:
    """The fsspec filesystem for ``uri`` (for s3: s3fs configured like :func:`s3_client`)."""
    if not is_remote(uri):
        from fsspec.implementations.local import LocalFileSystem

        _local_path(uri)  # refuses other schemes
        return LocalFileSystem()
    import s3fs

    o = _opts(options)
    _, region = _session(o)
    return s3fs.S3FileSystem(key=o.access_key_id, secret=o.secret_access_key, token=o.session_token,
                             client_kwargs={"endpoint_url": _endpoint(o), "region_name": region},
                             config_kwargs=_botocore_config(o), skip_instance_cache=True)


def open_uri(uri: str, mode: str = "rb", options: StorageOptions | None = None) -> IO[Any]:
    """Open one file (local path or s3 object) as a seekable file-like object; the caller closes it."""
    if not is_remote(uri):
        try:
            return open(_local_path(uri), mode)
        except OSError as exc:
            raise StorageError(f"cannot open {uri}: {exc.strerror or exc}") from exc
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise StorageError(f"no object key in URI {uri!r}")
    fs = fs_for(uri, options)
    with _s3_errors(uri, "opening"):
        return fs.open(f"{bucket}/{key}", mode)
