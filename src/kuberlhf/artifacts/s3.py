"""S3 connection: options, the boto3 client, one-line errors, and the fsspec filesystem of data sources.

Credentials and endpoints come from boto3's standard sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL[_S3]``,
``AWS_DEFAULT_REGION``/``AWS_REGION``, profiles, IRSA) unless set in :class:`StorageOptions`.
Every failure raises :class:`~kuberlhf.errors.StorageError` naming the URI at fault; what a URI names is
:mod:`kuberlhf.artifacts.location`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kuberlhf.artifacts.location import Location, is_remote
from kuberlhf.errors import NotFoundError, StorageError, TransientStorageError, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")
_MIB = 1024 * 1024
_CRED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT_CODES = {"500", "502", "503", "504", "429", "InternalError", "ServiceUnavailable", "SlowDown",
                    "SlowDownRead", "SlowDownWrite", "RequestTimeout", "Throttling", "ThrottlingException",
                    "RequestLimitExceeded", "TooManyRequests", "XMinioServerNotInitialized"}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
_CRED_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / a web identity)"


@dataclass
class StorageOptions:
    """S3 connection settings; ``None`` fields fall back to boto3's standard sources."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    max_attempts: int = 8  # per request (botocore's standard retries), and per streamed body
    retry_budget_s: float = 300.0  # how long retrying() repeats a whole operation that failed transiently
    timeout_s: float = 60.0  # connect and read timeout, per request
    multipart_threshold_mb: int = 16  # files this large or larger move in parts (kuberlhf.artifacts.transfer)
    multipart_chunksize_mb: int = 16  # the size of a part (at least 5, S3's smallest)
    max_concurrency: int = 8  # files moved at once by one upload or download, and parts of large files at once


_defaults = StorageOptions()


def configure(options: StorageOptions | None) -> None:
    """Set the options used when a function is called without ``options=`` (None resets)."""
    global _defaults
    _defaults = options if options is not None else StorageOptions()


def effective_options(options: StorageOptions | None) -> StorageOptions:
    """The options a call uses: ``options`` when given, else those set with :func:`configure`."""
    return options if options is not None else _defaults


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
    # a transfer's file threads and part threads (kuberlhf.artifacts.transfer) each hold a connection
    cfg: dict[str, Any] = {"retries": {"max_attempts": o.max_attempts, "mode": "standard"},
                           "connect_timeout": o.timeout_s, "read_timeout": o.timeout_s,
                           "max_pool_connections": max(10, 2 * o.max_concurrency + 2)}
    if _endpoint(o):
        cfg["s3"] = {"addressing_style": "path"}
    return cfg


def s3_client(options: StorageOptions | None = None) -> Any:
    """A boto3 S3 client (standard retries, path-style addressing for custom endpoints)."""
    from botocore.config import Config

    o = effective_options(options)
    session, region = _session(o)
    client = session.client("s3", endpoint_url=_endpoint(o), region_name=region, config=Config(**_botocore_config(o)))
    client.meta.events.register("needs-retry.s3", functools.partial(_say_unreachable, o, client.meta.endpoint_url))
    return client


_unanswered: set[str] = set()  # endpoints already reported as not answering (once per process)


def _say_unreachable(o: StorageOptions, address: str, caught_exception: BaseException | None = None,
                     **_: Any) -> None:
    """At a request's first failure to reach the store, say which address, why, and how long retries go on
    (botocore's retries and retrying() are otherwise silent for minutes). Returns None: retries are unchanged."""
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if not isinstance(caught_exception, BotoConnectionError) or address in _unanswered:
        return
    _unanswered.add(address)
    log.warning("object store %s does not answer (%s: %s); each request is tried %d times (%g s timeout), "
                "each operation again for up to storage.retry_budget_s=%g s; the run goes on when it answers",
                address, type(caught_exception).__name__, _brief(caught_exception), o.max_attempts, o.timeout_s,
                o.retry_budget_s)


def _client_error(exc: BaseException):
    """The botocore ClientError behind ``exc``, also when wrapped (boto3's S3UploadFailedError), or None."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def client_code(exc: BaseException) -> str | None:
    """The S3 error code of a ClientError, also when wrapped (None for any other exception)."""
    found = _client_error(exc)
    return str(found.response.get("Error", {}).get("Code", "")) if found is not None else None


def is_missing(exc: BaseException) -> bool:
    """True when ``exc`` is the store saying the object is not there (a ClientError, also when wrapped)."""
    return client_code(exc) in _MISSING_CODES


def _translate(exc: BaseException, uri: str | Location, action: str) -> StorageError:
    """Map a boto3/botocore/s3fs exception to a one-line StorageError naming ``uri``."""
    from botocore.exceptions import NoCredentialsError

    code = client_code(exc)
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
        return NotFoundError(f"not found while {action} {uri}")
    if code in _TRANSIENT_CODES or _http_status(exc) in _TRANSIENT_STATUS or (code is None and _is_network(exc)):
        return TransientStorageError(f"object store unavailable while {action} {uri}: {_brief(exc)}")
    return StorageError(f"failed while {action} {uri}: {exc}")


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a ClientError (also when wrapped), or None."""
    found = _client_error(exc)
    return found.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if found is not None else None


def _is_network(exc: BaseException) -> bool:
    """A connection refused, reset or timed out, or a response cut off: the network, not the request."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError, ResponseStreamingError

    network = (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError, ConnectionError,
               TimeoutError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, network) or "Connection" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _brief(exc: BaseException) -> str:
    """``exc`` on one line; its type when it says nothing."""
    return one_line(exc) or type(exc).__name__


def retrying(action: Callable[[], T], what: str, options: StorageOptions | None = None) -> T:
    """Run ``action``, retrying it while it fails with a transient storage error, with exponential backoff
    (1 s doubling, at most 30 s apart) for up to ``retry_budget_s`` seconds; then the last error goes up
    (exit code 200: retryable). Each attempt already has botocore's own retries (``max_attempts``)."""
    import time

    budget = effective_options(options).retry_budget_s
    deadline, delay = time.monotonic() + budget, 1.0
    while True:
        try:
            return action()
        except TransientStorageError as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientStorageError(f"{err} (gave up {what} after storage.retry_budget_s={budget:g})") from err
            wait = min(delay, left, 30.0)
            log.warning("%s: %s; retrying in %.0f s (%.0f s of the retry budget left)", what, err, wait, left)
            time.sleep(wait)
            delay *= 2


@contextlib.contextmanager
def s3_errors(uri: str | Location, action: str) -> Iterator[None]:
    """Re-raise boto3/botocore/s3fs (and local I/O) failures as one-line StorageErrors naming ``uri``, saying
    what was being done (``action``: "reading", "uploading to", ...); a transient one as TransientStorageError."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except StorageError:
        raise
    except (ClientError, BotoCoreError, Boto3Error, OSError) as exc:
        raise _translate(exc, uri, action) from exc


# ------------------------------------------------------------------------------------ data sources


def fs_for(uri: str, options: StorageOptions | None = None) -> Any:
    """The fsspec filesystem for ``uri`` (for s3: s3fs configured like :func:`s3_client`), for data sources
    that list prefixes or hand ``storage_options`` to ``datasets``. Artifacts move through boto3 alone
    (:mod:`kuberlhf.artifacts.transfer`); s3fs is the ``s3data`` extra."""
    if not is_remote(uri):
        from fsspec.implementations.local import LocalFileSystem

        Location.parse(uri)  # refuses other schemes
        return LocalFileSystem()
    try:
        import s3fs
    except ImportError:
        raise StorageError(f"reading {uri} as a dataset needs s3fs: pip install 'kuberlhf[s3data]'") from None

    o = effective_options(options)
    _, region = _session(o)
    return s3fs.S3FileSystem(key=o.access_key_id, secret=o.secret_access_key, token=o.session_token,
                             client_kwargs={"endpoint_url": _endpoint(o), "region_name": region},
                             config_kwargs=_botocore_config(o), skip_instance_cache=True)


def configure_from(section: Any) -> None:
    """Make a stage's ``storage`` config section the defaults of this process (:func:`configure`)."""
    configure(StorageOptions(endpoint_url=section.endpoint_url, region=section.region,
                             max_attempts=section.max_attempts, retry_budget_s=section.retry_budget_s,
                             timeout_s=section.timeout_s, max_concurrency=section.max_concurrency))
