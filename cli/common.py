"""What every command module shares: settings from flags and the environment, the org and actor, the
services of the composition root, and stopping a run on Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cli.arguments import UsageError
from domain import bounds
from infrastructure.support.config import DatabaseConfig, check_ca_file
from infrastructure.support.errors import ConfigurationError, QueueNotFoundError

if TYPE_CHECKING:
    # The HTTP client (aiohttp) is loaded by the commands that talk to a store, when they do; the composition
    # root (the event store, the projections) when a command opens its services: a `wcsync start` has sent
    # its first requests by then (cli/sync.py).
    from infrastructure.adapters.woocommerce import ClientOptions
    from infrastructure.wiring import Services


def setting(args: argparse.Namespace, name: str, env: str, default: str | None = None) -> str | None:
    """A flag given on the command line, as given; else the environment variable; else ``default``.

    One rule for every flag with an environment variable: a flag given empty (`--org ''`) is an error, never
    the default (ConfigurationError, exit 2); an environment variable set empty means unset, as shells treat
    `VAR=` (so `WCSYNC_DATABASE_URL= wcsync ...` is the default database)."""
    value = getattr(args, name, None)
    if value is not None:
        if not value.strip():
            raise ConfigurationError(f"--{name.replace('_', '-')} is empty; give a value or leave it out")
        return str(value)
    return os.environ.get(env) or default


def database(args: argparse.Namespace) -> DatabaseConfig:
    return DatabaseConfig.from_url(setting(args, "database_url", "WCSYNC_DATABASE_URL"))


def org(args: argparse.Namespace) -> str:
    value = setting(args, "org", "WCSYNC_ORG", "default") or "default"
    try:
        return bounds.check_identifier(value, "--org")
    except bounds.BoundError as error:
        raise ConfigurationError(f"--org (or WCSYNC_ORG) {error.problem}") from None


def fields_from(args: argparse.Namespace, kind: Any) -> dict[str, Any]:
    """The fields of dataclass ``kind`` that have an option of the same name (``--batch-size`` for
    ``batch_size``), with the values given: options named after their fields are read in one place."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(kind) if hasattr(args, f.name)}


def client_options(args: argparse.Namespace) -> ClientOptions:
    from infrastructure.adapters.woocommerce import ClientOptions

    # Checked before any work: a missing or garbled CA file would otherwise fail the first request.
    ca_file = check_ca_file(args.ca_file) if args.ca_file is not None else None
    try:
        return ClientOptions(
            concurrency=args.concurrency,
            rate=args.rate,
            ca_file=ca_file,
            timeout_s=args.timeout,
            max_response_bytes=args.max_response_mb * 1024 * 1024,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def actor() -> str:
    """Who runs the command, as the audit log records it: WCSYNC_ACTOR, else USER, else "wcsync"; checked
    as every identifier is (domain.bounds.check_identifier: no control character, newline or undecodable
    byte, at most MAX_NAME_LENGTH characters), ConfigurationError naming the variable. The commands that
    record who ran them check it before anything is done."""
    for name in ("WCSYNC_ACTOR", "USER"):
        value = os.environ.get(name)
        if value:
            try:
                return bounds.check_identifier(value, name)
            except bounds.BoundError as error:
                raise ConfigurationError(
                    f"{name} {error.problem}; set WCSYNC_ACTOR to a plain name (it is recorded in the audit log)"
                ) from None
    return "wcsync"


def services(args: argparse.Namespace, read_only: bool = False) -> Services:
    """The application for a command; ``read_only`` for commands that only read: they create nothing (no
    SQLite file or directory) and say so when the database does not exist."""
    from infrastructure.wiring import open_services

    return open_services(database(args), read_only=read_only)


def queue_status_or_fail(services: Services, org: str, queue_id: UUID | None) -> dict[str, Any]:
    from projections import queries

    status = queries.queue_status(services.projections, org, queue_id)
    if status is None:
        if queue_id is None:
            raise QueueNotFoundError(f"org {org!r} has no queues yet: run `wcsync start --url ...` first")
        raise QueueNotFoundError(
            f"no queue {queue_id} in org {org!r}; `wcsync queues` lists the org's queues"
        )
    return status


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM during a run stops it after its current batch (saved; the run ends with
    RunStopped, exit 130, and the resume command); a second one interrupts at once."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # os.write, not sys.stderr: the handler runs between two bytecodes of the main thread, which may be
        # inside a write to stderr itself (the progress bar, a log line): a second write to that buffered
        # stream from here is "reentrant call inside <_io.BufferedWriter>", and the run ended exit 70.
        with contextlib.suppress(OSError):
            os.write(2, b"\nwcsync: stopping after the current batch (again to stop at once)\n")

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
