"""Errors that reach the user as a one-line message and a non-zero exit."""


class KuberlhfError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits with status 2."""


class ConfigError(KuberlhfError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(KuberlhfError):
    """A dataset source cannot be read, or one of its rows is malformed."""


class StorageError(KuberlhfError):
    """An object-store URI, credential or artifact is invalid or incomplete."""
