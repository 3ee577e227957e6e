"""The project's own errors; library errors are converted into these at the adapter boundary."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (library messages go on with detail and hints), or its
    type's name when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class WcsyncError(Exception):
    """wcsync could not do what was asked."""

    exit_code = 2


class ConfigurationError(WcsyncError):
    """The configuration is incomplete or invalid; the message says which setting and how to fix it."""

    exit_code = 2


class QueueNotFoundError(WcsyncError):
    """No such queue for this org."""

    exit_code = 2


class StorageError(WcsyncError):
    """The database could not be reached or refused the operation."""

    exit_code = 4
