"""The `wcsync` command: parse, call one service, render. Nothing else lives here.

Exit codes: 0 done · 1 finished with failed lines or action required · 2 usage, configuration, unknown
queue (or another org's) · 3 store unreachable or credentials refused · 4 database unavailable, not
migrated, full or missing (a read-only command on a SQLite file that does not exist, or that holds no
wcsync tables, creates nothing) ·
70 an error nobody foresaw (one line; the traceback is in the log, shown with -vv) · 130 interrupted.
Every error is one line on stderr: `wcsync: <cause>; <what to do>`, with credentials redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from uuid import UUID

import structlog

from cli.audit import add_audit_parser, run_audit
from cli.serve import add_serve_parser, run_serve
from domain import bounds
from domain.errors import SyncError, WcsyncError
from domain.queue import QueueOptions
from infrastructure.support.config import DatabaseConfig, StoreSettings
from infrastructure.support.errors import (
    ConfigurationError,
    QueueNotFoundError,
    printable,
    quoted,
    shortened,
)
from infrastructure.support.logging import configure_logging

EXIT_OK = 0
EXIT_UNFINISHED = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_DATABASE = 4
EXIT_INTERNAL = 70  # an error nobody foresaw (sysexits' EX_SOFTWARE): the log has the traceback
EXIT_INTERRUPTED = 130


MAX_ERROR_LENGTH = 400  # of an argparse message: one that echoes a huge argument is cut in the middle


class UsageError(WcsyncError):
    exit_code = EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line: what is wrong and where to look (the usage block would bury it).
        # Never a control character of the user's input, and never all of a huge argument.
        text = printable(" ".join(message.split()))
        if len(text) > MAX_ERROR_LENGTH:
            text = f"{text[: MAX_ERROR_LENGTH - 80]}…{text[-79:]}"
        sys.stderr.write(f"wcsync: error: {text} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


# ----- argument parsing --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _bounded(bound: bounds.NumberBound) -> Callable[[str], Any]:
    """An argparse type for a number within one of domain.bounds' bounds (the API and the engine check
    the same ones)."""

    def parse(text: str) -> Any:
        try:
            return bound.parse(text)
        except bounds.BoundError as error:
            raise argparse.ArgumentTypeError(error.problem) from None

    return parse


def _checked(check: Callable[[Any, str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return check(text, "value")
        except bounds.BoundError as error:
            raise argparse.ArgumentTypeError(error.problem) from None

    return parse


def _reason(text: str, field: str) -> str:
    return bounds.check_text(text, field, bounds.MAX_REASON_LENGTH)


def _queue_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} is not a queue id (a UUID, as printed by `wcsync start` and `wcsync queues`)"
        ) from None


def _projection_name(text: str) -> str:
    from projections import PROJECTION_NAMES

    if not text.strip():
        raise argparse.ArgumentTypeError("the projection name is empty; leave it out to rebuild all")
    if text not in PROJECTION_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown projection(s) {printable(shortened(text))}; known: {', '.join(PROJECTION_NAMES)} "
            "(leave it out to rebuild all)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help="sqlite:///path.db or postgresql://user:pass@host/db (env WCSYNC_DATABASE_URL; default: a SQLite file, see README)",
    )
    common.add_argument(
        "--org", default=argparse.SUPPRESS, help="organisation id (env WCSYNC_ORG; default 'default')"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more logs on stderr (-v info, -vv debug)",
    )
    common.add_argument(
        "--log-format", choices=["console", "json"], default=argparse.SUPPRESS, help="log format on stderr"
    )

    parser = _Parser(
        prog="wcsync",
        description="Event-sourced, resumable, auditable sync of WooCommerce customers.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common])

    store_options = _Parser(add_help=False)
    store_options.add_argument(
        "--url",
        help="the store's site root (env WOO_URL); key and secret come from WOO_CONSUMER_KEY / WOO_CONSUMER_SECRET",
    )
    store_options.add_argument(
        "--concurrency",
        type=_bounded(bounds.CONCURRENCY),
        default=4,
        help="pages fetched at once, 1-32 (default 4)",
    )
    store_options.add_argument(
        "--rate",
        type=_bounded(bounds.RATE),
        default=0.0,
        help="max requests per second to the store (default 0: no limit)",
    )
    store_options.add_argument("--ca-file", help="trust this CA certificate (PEM) for an HTTPS store")
    store_options.add_argument(
        "--timeout",
        type=_bounded(bounds.TIMEOUT_S),
        default=60.0,
        help="seconds per request, more than 0 (default 60)",
    )
    store_options.add_argument(
        "--max-response-mb",
        type=_bounded(bounds.MAX_RESPONSE_MB),
        default=bounds.DEFAULT_MAX_RESPONSE_MB,
        help="largest store answer read, in MB (default 8); a larger page is fetched customer by customer",
    )
    store_options.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    start = commands.add_parser(
        "start",
        help="create a queue and sync the store's customers to the end",
        parents=[common, store_options],
    )
    start.add_argument(
        "--batch-size",
        type=_bounded(bounds.BATCH_SIZE),
        default=50,
        help="lines saved per transaction, 1-1000 (default 50)",
    )
    start.add_argument(
        "--batch-delay-ms",
        type=_bounded(bounds.BATCH_DELAY_MS),
        default=0,
        help="pause between batches, 0-60000 (default 0)",
    )
    start.add_argument(
        "--max-retries",
        type=_bounded(bounds.MAX_RETRIES),
        default=3,
        help="attempts per line and per request, 1-100 (default 3)",
    )
    start.add_argument(
        "--per-page",
        type=_bounded(bounds.PER_PAGE),
        default=100,
        help="customers per page, 1-100 (default 100)",
    )
    start.add_argument(
        "--role",
        type=_checked(bounds.check_role),
        default="customer",
        help="WordPress role to sync, or 'all' (default customer)",
    )
    start.add_argument(
        "--queue-name",
        type=_checked(bounds.check_text),
        help=f"a name for the queue, at most {bounds.MAX_NAME_LENGTH} characters (default: 'customers <store url>')",
    )

    for name, text in (
        ("resume", "continue an interrupted queue from where it stopped"),
        ("retry", "fetch the failed lines' customers again and sync them"),
    ):
        sub = commands.add_parser(name, help=text, description=text, parents=[common, store_options])
        sub.add_argument("queue_id", type=_queue_id, metavar="QUEUE_ID")

    force = command("force-done", "cancel every unfinished line and mark the queue done")
    force.add_argument("queue_id", type=_queue_id, metavar="QUEUE_ID")
    force.add_argument(
        "--reason",
        required=True,
        type=_checked(_reason),
        help=f"why, at most {bounds.MAX_REASON_LENGTH} characters (recorded in the audit log)",
    )
    force.add_argument("--json", action="store_true")

    status = command("status", "show a queue's state and counts (the latest queue when no id is given)")
    status.add_argument("queue_id", type=_queue_id, nargs="?", metavar="QUEUE_ID")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="refresh until the queue finishes")
    status.add_argument(
        "--interval",
        type=_bounded(bounds.INTERVAL_S),
        default=2.0,
        help="seconds between refreshes with --watch (default 2)",
    )

    queues = command("queues", "list the org's queues, newest first")
    queues.add_argument("--json", action="store_true")
    queues.add_argument("--limit", type=_bounded(bounds.LIMIT), default=50)

    failed = command("failed", "list a queue's failed lines and their errors")
    failed.add_argument("queue_id", type=_queue_id, metavar="QUEUE_ID")
    failed.add_argument("--json", action="store_true")

    activity = command("activity", "show a queue's activity log, oldest first")
    activity.add_argument("queue_id", type=_queue_id, metavar="QUEUE_ID")
    activity.add_argument("--json", action="store_true")
    activity.add_argument("--limit", type=_bounded(bounds.LIMIT), default=1000)

    db = command("db", "database administration")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", parser_class=_Parser)
    db_commands.required = True
    db_commands.add_parser("migrate", help="create every table once", parents=[common])

    projections = command("projections", "read models built from the event stream")
    p_commands = projections.add_subparsers(
        dest="projections_command", metavar="PROJECTIONS_COMMAND", parser_class=_Parser
    )
    p_commands.required = True
    p_commands.add_parser("catch-up", help="apply every new event once, then exit", parents=[common])
    p_commands.add_parser("run", help="follow new events until stopped (Ctrl-C)", parents=[common])
    rebuild = p_commands.add_parser(
        "rebuild", help="replay every event into fresh tables and swap them in", parents=[common]
    )
    rebuild.add_argument("name", nargs="?", type=_projection_name, help="one projection (default: all)")
    p_status = p_commands.add_parser(
        "status", help="position, head of the log and lag of each projection", parents=[common]
    )
    p_status.add_argument("--json", action="store_true")

    sandbox = command("sandbox", "run a WooCommerce-compatible sandbox store on this machine")
    _sandbox_arguments(sandbox)
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=_bounded(bounds.PORT), default=8080, help="0 picks a free port")

    demo = command("demo", "start a sandbox store and sync it into the default database, end to end")
    demo.add_argument("--customers", type=_positive_int, default=797)
    demo.add_argument(
        "--invalid", type=_positive_int, default=5, help="records that fail validation, fixed and retried"
    )
    demo.add_argument("--json", action="store_true")
    add_audit_parser(commands, common)
    add_serve_parser(commands, common)
    return parser


def _sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=_positive_int, default=797)
    parser.add_argument(
        "--invalid", type=_positive_int, default=0, help="records that break a validation rule"
    )
    parser.add_argument(
        "--other-roles", type=_positive_int, default=0, help="extra users that are not customers"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=0.0, help="requests/s above which it answers 429")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of random 5xx answers")
    parser.add_argument("--html-rate", type=float, default=0.0, help="share of 200 answers with an HTML body")
    parser.add_argument("--truncated-rate", type=float, default=0.0, help="share of truncated JSON answers")
    parser.add_argument("--slow-rate", type=float, default=0.0)
    parser.add_argument("--slow-ms", type=float, default=2000.0)
    parser.add_argument(
        "--repeat-last-page",
        action="store_true",
        help="answer pages past the end with the last page, forever",
    )
    parser.add_argument(
        "--churn-every",
        type=_positive_int,
        default=0,
        help="create/edit/delete a customer every N list requests",
    )
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (self-signed CA) with Basic auth")


# ----- settings ------------------------------------------------------------------------------------------


def _setting(args: argparse.Namespace, name: str, env: str, default: str | None = None) -> str | None:
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


def _database(args: argparse.Namespace) -> DatabaseConfig:
    return DatabaseConfig.from_url(_setting(args, "database_url", "WCSYNC_DATABASE_URL"))


def _org(args: argparse.Namespace) -> str:
    org = _setting(args, "org", "WCSYNC_ORG", "default") or "default"
    try:
        return bounds.check_identifier(org, "--org")
    except bounds.BoundError as error:
        raise ConfigurationError(f"--org (or WCSYNC_ORG) {error.problem}") from None


def _client_options(args: argparse.Namespace) -> Any:
    from infrastructure.adapters.woocommerce import ClientOptions
    from infrastructure.support.config import check_ca_file

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


def _actor() -> str:
    """Who runs the command, as the audit log records it: WCSYNC_ACTOR, else USER, else "wcsync"; checked
    as every identifier is (domain.bounds.check_identifier: no control character, newline or undecodable
    byte, at most MAX_NAME_LENGTH characters), ConfigurationError naming the variable."""
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


# The commands that record who ran them: their actor is checked before anything is done.
_ACTING_COMMANDS = frozenset({"start", "resume", "retry", "force-done"})


# ----- rendering -----------------------------------------------------------------------------------------


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")


def _render_status(status: dict[str, Any]) -> str:
    lines = [
        f"queue      {status['queueId']}  ({status['queueName']})",
        f"org        {status['orgId']}",
        f"state      {status['state']}{'  ACTION REQUIRED: ' + str(status['actionRequiredReason']) if status['isActionRequired'] else ''}",
        f"progress   {status['progress']}%  ({status['doneCount'] + status['cancelledCount']}/{status['totalCount']} lines finished)",
        f"lines      draft {status['draftCount']} · done {status['doneCount']} · failed {status['failedCount']} · cancelled {status['cancelledCount']}",
        f"results    created {status['createdCount']} · updated {status['updatedCount']} · unchanged {status['unchangedCount']}",
        f"runs       {status['processCount']} (last {status['lastProcessDate']})",
        f"created    {status['createdAt']}",
    ]
    return "\n".join(lines)


def _status_exit(status: dict[str, Any]) -> int:
    if status["isActionRequired"] or status["state"] == "failed":
        return EXIT_UNFINISHED
    return EXIT_OK


# ----- commands ------------------------------------------------------------------------------------------


def _services(args: argparse.Namespace, read_only: bool = False) -> Any:
    """The application for a command; ``read_only`` for commands that only read: they create nothing (no
    SQLite file or directory) and say so when the database does not exist."""
    from infrastructure.wiring import open_services

    database = _database(args)
    return open_services(database, read_only=read_only)


def _queue_status_or_fail(services: Any, org: str, queue_id: UUID | None) -> dict[str, Any]:
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
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM during a run stops it after its current batch (saved; the run ends with
    RunStopped, exit 130, and the resume command); a second one interrupts at once."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write("\nwcsync: stopping after the current batch (again to stop at once)\n")

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _run_sync(args: argparse.Namespace, action: str) -> int:
    from cli.progress import ProgressBar

    org = _org(args)
    client_options = _client_options(args)
    json_out = bool(getattr(args, "json", False))
    with _services(args) as services, _stop_on_signals() as stop:
        progress = None if json_out else ProgressBar(action)
        engine = services.engine(org, actor=_actor(), progress=progress, stop=stop)
        if action == "start":
            try:
                options = QueueOptions(
                    batch_size=args.batch_size,
                    batch_delay_ms=args.batch_delay_ms,
                    max_retries=args.max_retries,
                    per_page=args.per_page,
                    role=args.role,
                )
            except ValueError as error:
                raise UsageError(str(error)) from None
            store = StoreSettings.load(args.url)
            if not json_out:
                sys.stderr.write(f"database   {services.database.display}\n")

            def announce(queue_id: UUID) -> None:
                if not json_out:
                    sys.stderr.write(f"queue      {queue_id}\n")

            from infrastructure.adapters.woocommerce import StoreRefused

            try:
                with services.live_projections():
                    outcome = asyncio.run(
                        engine.start(store, options, client_options, args.queue_name, on_created=announce)
                    )
            except StoreRefused as error:
                # Refused before the first page: the queue was never saved.
                raise StoreRefused(
                    f"{error.message}; nothing was saved, fix this and run `wcsync start` again",
                    code=error.code,
                    status=error.status,
                    hint=error.hint,
                ) from None
        else:
            queue = engine.get_queue(args.queue_id)
            store = StoreSettings.load(args.url or queue.store_url)
            run = engine.resume if action == "resume" else engine.retry
            with services.live_projections():
                outcome = asyncio.run(run(args.queue_id, store, client_options))
        status = _queue_status_or_fail(services, org, outcome.queue_id)
        if json_out:
            document = dict(status)
            document["seconds"] = round(outcome.seconds, 3)
            if outcome.store_error is not None:
                document["error"] = str(outcome.store_error)
            _print_json(document)
        else:
            print(_render_status(status))
            print(f"took       {outcome.seconds:.2f} s")
        if outcome.store_error is not None:
            _error(
                f"{outcome.store_error} — the queue is saved; continue with `wcsync resume {outcome.queue_id}`"
            )
            return EXIT_STORE
        return _status_exit(status)


def _cmd_force_done(args: argparse.Namespace) -> int:
    org = _org(args)
    with _services(args) as services:
        engine = services.engine(org, actor=_actor())
        engine.force_done(args.queue_id, args.reason)
        status = _queue_status_or_fail(services, org, args.queue_id)
        _print_json(status) if args.json else print(_render_status(status))
        return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    org = _org(args)
    with _services(args, read_only=True) as services:
        while True:
            services.catch_up()
            status = _queue_status_or_fail(services, org, args.queue_id)
            if args.json:
                _print_json(status)
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write("\x1b[2J\x1b[H")
                print(_render_status(status))
            if not args.watch or status["state"] in ("done", "failed"):
                return _status_exit(status)
            sys.stdout.flush()
            time.sleep(max(0.2, args.interval))


def _cmd_queues(args: argparse.Namespace) -> int:
    from projections import queries

    org = _org(args)
    with _services(args, read_only=True) as services:
        services.catch_up()
        rows = queries.list_queues(services.projections, org, limit=args.limit)
        if args.json:
            _print_json(rows)
            return EXIT_OK
        if not rows:
            print(f"org {org!r} has no queues yet")
            return EXIT_OK
        print(
            f"{'QUEUE ID':36}  {'STATE':10}  {'PROGRESS':>8}  {'TOTAL':>7}  {'FAILED':>6}  {'CREATED AT':25}  NAME"
        )
        for row in rows:
            flag = " !" if row["isActionRequired"] else ""
            print(
                f"{row['queueId']:36}  {row['state'] + flag:10}  {row['progress']:>7}%  {row['totalCount']:>7}  "
                f"{row['failedCount']:>6}  {row['createdAt']!s:25}  {row['queueName']}"
            )
        return EXIT_OK


def _queue_rows(
    args: argparse.Namespace,
    fetch: Callable[[Any, str, UUID], list[dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
    empty: str,
) -> int:
    """Print rows about one queue of the org (JSON or one line each), after checking the queue exists."""
    org = _org(args)
    with _services(args, read_only=True) as services:
        services.catch_up()
        _queue_status_or_fail(services, org, args.queue_id)
        rows = fetch(services.projections, org, args.queue_id)
        if args.json:
            _print_json(rows)
        else:
            # Stored text (an actor or a store's message saved by an older version) never reaches the
            # terminal raw: each row is one line, its control characters escaped.
            print("\n".join(printable(render(row)) for row in rows) if rows else empty)
        return EXIT_OK


def _cmd_failed(args: argparse.Namespace) -> int:
    from projections import queries

    return _queue_rows(
        args,
        queries.failed_lines,
        lambda row: (
            f"customer {row['wooCustomerId']:>8}  attempts {row['processCount']}  "
            f"{row['lastErrorTimestamp']}  {row['errorMessage']}"
        ),
        "no failed lines",
    )


def _cmd_activity(args: argparse.Namespace) -> int:
    from projections import queries

    return _queue_rows(
        args,
        lambda runner, org, queue_id: queries.activity(runner, org, queue_id, limit=args.limit),
        lambda row: f"{row['createdAt']}  {row['status']:7}  {row['activityType']:24}  {row['message']}",
        "no activity",
    )


def _cmd_db(args: argparse.Namespace) -> int:
    from infrastructure.wiring import migrate

    database = _database(args)
    migrate(database)
    print(f"tables ready in {database.display}")
    return EXIT_OK


def _cmd_projections(args: argparse.Namespace) -> int:
    from projections import UnknownProjectionError

    with _services(args, read_only=args.projections_command == "status") as services:
        runner = services.projections
        action = args.projections_command
        if action == "catch-up":
            started = time.monotonic()
            count = runner.catch_up()
            print(f"applied {count} event(s) in {time.monotonic() - started:.2f} s")
        elif action == "rebuild":
            names = [args.name] if args.name else None
            started = time.monotonic()
            try:
                count = runner.rebuild(names)
            except UnknownProjectionError as error:
                raise UsageError(f"{error}; `wcsync projections status` lists them") from None
            print(f"rebuilt from {count} event(s) in {time.monotonic() - started:.2f} s")
        elif action == "run":
            stop = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
            sys.stderr.write("following new events; Ctrl-C to stop\n")
            runner.follow(stop)
        else:
            rows = runner.status()
            shown = 100  # quarantined events listed per projection (their count is always whole)
            counted = any(row["quarantined"] for row in rows)
            set_aside = runner.quarantined(limit=shown * len(rows)) if counted else []
            if args.json:
                for row in rows:
                    mine = [q for q in set_aside if q["projection"] == row["name"]]
                    row["quarantinedEvents"] = mine[:shown]
                _print_json(rows)
            else:
                for row in rows:
                    print(
                        f"{row['name']:12} version {row['version']}  position {row['position']}  "
                        f"head {row['head']}  lag {row['lag']}  quarantined {row['quarantined']}"
                    )
                if set_aside:
                    print(
                        "quarantined events (set aside, walked past; `wcsync projections rebuild NAME` "
                        "retries them once the cause is fixed):"
                    )
                for row in rows:
                    listed = [q for q in set_aside if q["projection"] == row["name"]][:shown]
                    for q in listed:
                        print(
                            f"  {q['projection']:12} position {q['position']}  {q['topic']}  "
                            f"{q['originatorId']} v{q['originatorVersion']}  {q['reason']}"
                        )
                    if row["quarantined"] > len(listed):
                        print(f"  {row['name']:12} ... and {row['quarantined'] - len(listed)} more")
        return EXIT_OK


def _sandbox_config(args: argparse.Namespace, **overrides: Any) -> Any:
    from infrastructure.sandbox import Faults, SandboxConfig

    try:
        faults = Faults(
            latency_ms=args.latency_ms,
            rate_limit=args.rate_limit,
            error_rate=args.error_rate,
            html_rate=args.html_rate,
            truncated_rate=args.truncated_rate,
            slow_rate=args.slow_rate,
            slow_ms=args.slow_ms,
            repeat_last_page=args.repeat_last_page,
            churn_every=args.churn_every,
        )
        if args.invalid > args.customers:
            raise UsageError("--invalid cannot exceed --customers")
        return SandboxConfig(
            customers=args.customers,
            invalid=args.invalid,
            other_roles=args.other_roles,
            seed=args.seed,
            faults=faults,
            tls=args.tls,
            **overrides,
        )
    except ValueError as error:
        # "error_rate must be ..." names the field; on the command line it is --error-rate.
        raise _option_error(error) from None


def _option_error(error: ValueError) -> UsageError:
    """A sandbox setting's ValueError ("latency_ms must be ...") as its command-line option names it."""
    name, _, rest = str(error).partition(" ")
    return UsageError(f"--{name.replace('_', '-')} {rest}")


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from infrastructure.sandbox import serve_forever
    from infrastructure.support.config import check_listen_address

    config = _sandbox_config(args)
    check_listen_address(args.host, args.port)  # before the store is generated: exit 2, one line
    serve_forever(config, args.host, args.port)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo
    from infrastructure.sandbox import SandboxConfig

    try:  # the sandbox's bounds, checked before any work (demo generates the store first)
        SandboxConfig(customers=args.customers, invalid=min(args.invalid, args.customers))
    except ValueError as error:
        raise _option_error(error) from None
    return run_demo(
        _database(args),
        _org(args),
        customers=args.customers,
        invalid=args.invalid,
        json_out=args.json,
        render_status=_render_status,
        print_json=_print_json,
    )


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "start": lambda a: _run_sync(a, "start"),
    "resume": lambda a: _run_sync(a, "resume"),
    "retry": lambda a: _run_sync(a, "retry"),
    "force-done": _cmd_force_done,
    "status": _cmd_status,
    "queues": _cmd_queues,
    "failed": _cmd_failed,
    "activity": _cmd_activity,
    "db": _cmd_db,
    "projections": _cmd_projections,
    "sandbox": _cmd_sandbox,
    "demo": _cmd_demo,
    "audit": run_audit,
    "serve": run_serve,
}


def _error(message: str) -> None:
    sys.stderr.write(f"wcsync: {printable(message)}\n")  # a control character of any input, escaped


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _COMMAND_LINE_URLS[:] = [args.database_url] if getattr(args, "database_url", None) else []
    verbose = getattr(args, "verbose", 0) or 0
    try:
        configure_logging(
            level={0: None, 1: "info"}.get(verbose, "debug"),
            fmt=getattr(args, "log_format", None),
        )
    except WcsyncError as error:  # WCSYNC_LOG_LEVEL / WCSYNC_LOG_FORMAT set to no such thing
        _error(str(error))
        return error.exit_code
    try:
        if args.command in _ACTING_COMMANDS:
            _actor()
        code = HANDLERS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader gone away shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        _error("interrupted; every saved batch is kept — `wcsync resume QUEUE_ID` continues")
        return EXIT_INTERRUPTED
    except SyncError as error:
        _error(str(error))
        return EXIT_USAGE
    except WcsyncError as error:
        _error(str(error))  # our own message: credentials were redacted where store text entered it
        return error.exit_code
    except BrokenPipeError:
        # The reader went away (`wcsync audit queue ... | head`): stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:
        return _unforeseen(error)


def _unforeseen(error: Exception) -> int:
    """A failure nobody foresaw: one line (redacted), the traceback in the log only (-vv shows it)."""
    import traceback

    from infrastructure.support.errors import first_line, storage_error

    if _is_database_error(error):
        # A database library's error that no adapter converted: still the database's class of failure.
        _error(_redacted(str(storage_error(error))))
        structlog.get_logger("wcsync").debug("database_error", exception=_redacted(traceback.format_exc()))
        return EXIT_DATABASE
    structlog.get_logger("wcsync").debug("unexpected_error", exception=_redacted(traceback.format_exc()))
    _error(
        _redacted(f"unexpected error: {type(error).__name__}: {first_line(error)}")
        + "; the traceback is in the log (run again with -vv to see it) - please report it"
    )
    return EXIT_INTERNAL


def _is_database_error(error: BaseException) -> bool:
    import sqlite3

    kinds: list[type[BaseException]] = [sqlite3.Error]
    # Only libraries already loaded can have raised: no import for the check.
    for module, name in (("psycopg", "Error"), ("eventsourcing.persistence", "PersistenceError")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            kinds.append(getattr(loaded, name))
    return isinstance(error, tuple(kinds))


def _redacted(text: str) -> str:
    """What the user sees and the log keeps, with every credential from the environment and the command
    line (the store's key and secret, the database password, the cipher and audit keys) hidden in any form."""
    from urllib.parse import unquote, urlsplit

    from infrastructure.support.redaction import redact

    secrets = [os.environ.get(name, "") for name in _SECRET_VARIABLES]
    for url in (os.environ.get("WCSYNC_DATABASE_URL", ""), *_COMMAND_LINE_URLS):
        try:
            secrets.append(unquote(urlsplit(url).password or ""))
        except ValueError:  # a malformed URL: its error message never quotes the password
            continue
    return redact(text, secrets)


_SECRET_VARIABLES = ("WOO_CONSUMER_KEY", "WOO_CONSUMER_SECRET", "WCSYNC_CIPHER_KEY", "WCSYNC_AUDIT_KEY")
_COMMAND_LINE_URLS: list[str] = []  # --database-url, once parsed


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
