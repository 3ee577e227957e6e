"""A guard that makes I/O fail a test: for tests/unit, whose tests must do none (tests/unit/conftest.py).

While :func:`forbidding_io` is active, opening a file (``open``, ``io.open``, ``os.open``, so ``Path.open``,
``read_text``, ``tempfile`` too), creating or removing a file or directory, a socket's ``connect``/``bind``/
``sendto`` or a DNS lookup, ``sqlite3.connect`` and starting a subprocess raise :class:`IOForbidden`; and
because code under test may catch that, every attempt is also recorded, for the caller to fail the test on.

Allowed: what pytest, pluggy and hypothesis do themselves (the first caller outside the standard library is
one of them), Python reading source for a traceback (``linecache``), and threads that were running before
the guard began (a session's database dropper, say), which are not the test's doing.
"""

from __future__ import annotations

import builtins
import io
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# The first caller outside the standard library is one of these: the harness's own I/O, not the test's.
ALLOWED_CALLERS = frozenset({"_pytest", "pytest", "pluggy", "hypothesis", "_hypothesis_pytestplugin"})
# Standard-library callers that may read files on a test's behalf: source lines for a traceback.
ALLOWED_STDLIB = frozenset({"linecache"})
_GUARD_MODULE = __name__


class IOForbidden(AssertionError):
    """A unit test did I/O."""


# (object, attribute, what it does): each is replaced by a checking wrapper while the guard is on.
def _targets() -> list[tuple[Any, str, str]]:
    return [
        (builtins, "open", "opens a file"),
        (io, "open", "opens a file"),
        (os, "open", "opens a file"),
        (os, "mkdir", "creates a directory"),
        (os, "rmdir", "removes a directory"),
        (os, "remove", "removes a file"),
        (os, "unlink", "removes a file"),
        (os, "rename", "renames a file"),
        (os, "replace", "renames a file"),
        (socket.socket, "connect", "connects a socket"),
        (socket.socket, "connect_ex", "connects a socket"),
        (socket.socket, "bind", "binds a socket"),
        (socket.socket, "sendto", "sends on a socket"),
        (socket, "getaddrinfo", "looks up a host name"),
        (sqlite3, "connect", "opens an SQLite database"),
        (subprocess.Popen, "_execute_child", "starts a subprocess"),
    ]


def _module_of(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", ""))


def _is_stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names or module.startswith("<frozen")


def _allowed(frame: FrameType | None) -> bool:
    """Whether the I/O called from ``frame`` is the harness's (pytest's, hypothesis's) rather than the test's."""
    while frame is not None:
        module = _module_of(frame)
        if module == _GUARD_MODULE:
            pass
        elif _is_stdlib(module):
            if module.partition(".")[0] in ALLOWED_STDLIB:
                return True
        else:
            return module.partition(".")[0] in ALLOWED_CALLERS
        frame = frame.f_back
    return False


class Guard:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self._exempt_threads = {thread.ident for thread in threading.enumerate()} - {threading.get_ident()}

    def _wrap(self, original: Callable[..., Any], what: str) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() not in self._exempt_threads and not _allowed(sys._getframe(1)):
                detail = f"{what}: {_describe(args)}"
                self.violations.append(detail)
                raise IOForbidden(f"a unit test does no I/O, but this one {detail} (tests/support/no_io.py)")
            return original(*args, **kwargs)

        guarded.__wrapped__ = original  # type: ignore[attr-defined]
        return guarded


def _describe(args: tuple[Any, ...]) -> str:
    shown = [a for a in args if not isinstance(a, socket.socket | subprocess.Popen)]
    return ", ".join(repr(a) for a in shown[:2]) or "(no arguments)"


@contextmanager
def forbidding_io() -> Iterator[Guard]:
    """Every kind of I/O above fails while this is active; the guard's ``violations`` name each attempt."""
    guard = Guard()
    targets = _targets()
    # A class attribute may be inherited (socket.socket's methods are _socket.socket's): then the wrapper
    # goes on the class itself and is deleted afterwards, leaving the class as it was.
    saved = [(owner, name, getattr(owner, name), name in vars(owner)) for owner, name, _ in targets]
    try:
        for (owner, name, what), (_, _, original, _) in zip(targets, saved, strict=True):
            setattr(owner, name, guard._wrap(original, what))
        yield guard
    finally:
        for owner, name, original, own in saved:
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
