"""The command line's parser class and argument types: each turns one argument into a checked value or a
one-line usage error (exit 2). Light on purpose: `wcsync --help` imports this, no database or HTTP library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn
from uuid import UUID

from domain import bounds
from domain.errors import EXIT_USAGE, WcsyncError
from domain.validation import MAX_CUSTOMER_ID
from infrastructure.support.errors import ConfigurationError, printable, quoted, shortened
from infrastructure.support.times import parse_time
from projections.names import PROJECTION_NAMES

MAX_ERROR_LENGTH = 400  # of an argparse message: one that echoes a huge argument is cut in the middle


class UsageError(WcsyncError):
    exit_code = EXIT_USAGE


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line: what is wrong and where to look (the usage block would bury it).
        # Never a control character of the user's input, and never all of a huge argument.
        text = printable(" ".join(message.split()))
        if len(text) > MAX_ERROR_LENGTH:
            text = f"{text[: MAX_ERROR_LENGTH - 80]}…{text[-79:]}"
        sys.stderr.write(f"wcsync: error: {text} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def bounded(bound: bounds.NumberBound) -> Callable[[str], Any]:
    """An argparse type for a number within one of domain.bounds' bounds (the API and the engine check
    the same ones)."""

    def parse(text: str) -> Any:
        try:
            return bound.parse(text)
        except bounds.BoundError as error:
            raise argparse.ArgumentTypeError(error.problem) from None

    return parse


def checked(check: Callable[[Any, str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return check(text, "value")
        except bounds.BoundError as error:
            raise argparse.ArgumentTypeError(error.problem) from None

    return parse


def reason(text: str, field: str) -> str:
    return bounds.check_text(text, field, bounds.MAX_REASON_LENGTH)


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a {what}") from None


def queue_id(text: str) -> UUID:
    return _uuid(text, "queue id (a UUID, as printed by `wcsync start` and `wcsync queues`)")


def store_id(text: str) -> UUID:
    return _uuid(text, "store id (a UUID, as printed by `wcsync stores add` and `wcsync stores list`)")


def projection_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the projection name is empty; leave it out to rebuild all")
    if text not in PROJECTION_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown projection(s) {printable(shortened(text))}; known: {', '.join(PROJECTION_NAMES)} "
            "(leave it out to rebuild all)"
        )
    return text


def woo_id(text: str) -> int:
    what = f"is not a WooCommerce customer id (a whole number from 1 to {MAX_CUSTOMER_ID})"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} {what}") from None
    if not 0 < value <= MAX_CUSTOMER_ID:
        raise argparse.ArgumentTypeError(f"{quoted(text)} {what}")
    return value


def instant(text: str) -> datetime:
    """An ISO 8601 instant (UTC without an offset) that UTC can represent: `0001-01-01T00:00:00+01:00` is
    before year 1 in UTC, and is refused here rather than overflowing later."""
    try:
        return parse_time(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
