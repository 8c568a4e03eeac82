"""Errors that reach the user as a one-line message and a non-zero exit, and the exit codes.

Exit codes (the stages' CLI, and so the training pods):

- ``0``: done, or the output already holds the finished artifact of this very config (nothing to do).
- ``2`` (:data:`EXIT_PERMANENT`): bad input (config, data, credentials, a refused artifact); rerunning
  the same command fails the same way.
- ``200`` (:data:`EXIT_TRANSIENT`): the object store or network failed for longer than the retry budget
  (``storage.retry_budget_s``); rerunning later resumes from the newest sealed checkpoint. It is above
  every signal code (128 + signal) and in the range the Training Operator's ``restartPolicy: ExitCode``
  restarts (128-255), while 1-127 are permanent.
"""

EXIT_PERMANENT = 2
EXIT_TRANSIENT = 200


def one_line(text: object) -> str:
    """``text`` (another library's error, say) on one line, each run of whitespace one space: fit to quote
    in the message of one of these errors."""
    return " ".join(str(text).split())


class KuberlhfError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits with :attr:`exit_code`."""

    exit_code = EXIT_PERMANENT


class ConfigError(KuberlhfError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(KuberlhfError):
    """A dataset source cannot be read, or one of its rows is malformed."""


class StorageError(KuberlhfError):
    """An object-store URI, credential or artifact is invalid or incomplete."""


class NotFoundError(StorageError):
    """The object, file or prefix a URI names does not exist."""


class IntegrityError(StorageError):
    """An artifact's files do not match its manifest (missing, resized, changed, unlisted), or the manifest
    itself is missing or invalid: that artifact is unusable (a resume falls back to an older checkpoint)."""


class TransientStorageError(StorageError):
    """The object store could not be reached, reset the connection, timed out or answered 5xx/SlowDown:
    worth retrying later (exit :data:`EXIT_TRANSIENT`)."""

    exit_code = EXIT_TRANSIENT


class AlreadyFinished(KuberlhfError):  # noqa: N818 (an outcome, not a failure)
    """The output already holds the finished artifact of this config: the run has nothing to do (exit 0)."""

    exit_code = 0

    def __init__(self, message: str, metrics: dict) -> None:
        super().__init__(message)
        self.metrics = metrics


class Preempted(KuberlhfError):
    """Stopped by a signal (a pod deleted, preempted or drained) after sealing a checkpoint: exit 128 + N,
    which a pod's restart policy treats as retryable; the same command resumes from that checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
