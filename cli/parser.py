"""The whole command-line surface of `wcsync`: every command, its arguments and its handler.

Each command names its handler as "module:function" (``HANDLER``); `cli.main` imports that module only
when the command runs, so `wcsync --help` or a usage error loads no database, HTTP or projection library.
This module imports only argument types and bounds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cli.arguments import (
    Parser,
    bounded,
    checked,
    instant,
    positive_int,
    projection_name,
    queue_id,
    reason,
    store_id,
    woo_id,
)
from domain import bounds

# Which module and function carry out each command (imported when it runs).
HANDLERS: dict[str, str] = {
    "start": "cli.sync:start",
    "resume": "cli.sync:resume",
    "retry": "cli.sync:retry",
    "force-done": "cli.sync:force_done",
    "status": "cli.queues:status",
    "queues": "cli.queues:queues",
    "failed": "cli.queues:failed",
    "activity": "cli.queues:activity",
    "db": "cli.db:run",
    "projections": "cli.projections:run",
    "sandbox": "cli.sandbox:sandbox",
    "demo": "cli.sandbox:demo",
    "audit": "cli.audit:run",
    "serve": "cli.serve:run",
    "stores": "cli.stores:run",
    "tokens": "cli.tokens:run",
    "worker": "cli.worker:worker",
    "workers": "cli.worker:workers",
    "jobs": "cli.worker:jobs",
    "schedule": "cli.schedules:run",
    "webhooks": "cli.webhooks:run",
}


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
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

    parser = Parser(
        prog="wcsync",
        description="Event-sourced, resumable, auditable sync of WooCommerce customers.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common])

    store_options = Parser(add_help=False)
    _add_options(
        store_options,
        (
            (
                "--url",
                str,
                None,
                "the store's site root (env WOO_URL); key and secret come from WOO_CONSUMER_KEY / WOO_CONSUMER_SECRET",
            ),
            ("--concurrency", bounded(bounds.CONCURRENCY), 4, "pages fetched at once, 1-32 (default 4)"),
            *STORE_CLIENT_OPTIONS,
        ),
    )
    _add_json(store_options, "print one JSON document on stdout")

    start = commands.add_parser(
        "start",
        help="create a queue and sync the store's customers to the end",
        parents=[common, store_options],
    )
    start.add_argument(
        "--store",
        type=store_id,
        metavar="STORE_ID",
        help="a registered store (`wcsync stores list`): its URL and credentials, no key in the environment",
    )
    _add_options(
        start,
        (
            (
                "--batch-size",
                bounded(bounds.BATCH_SIZE),
                50,
                "lines saved per transaction, 1-1000 (default 50)",
            ),
            (
                "--batch-delay-ms",
                bounded(bounds.BATCH_DELAY_MS),
                0,
                "pause between batches, 0-60000 (default 0)",
            ),
            (
                "--max-retries",
                bounded(bounds.MAX_RETRIES),
                3,
                "attempts per line and per request, 1-100 (default 3)",
            ),
            ("--per-page", bounded(bounds.PER_PAGE), 100, "customers per page, 1-100 (default 100)"),
            (
                "--role",
                checked(bounds.check_role),
                "customer",
                "WordPress role to sync, or 'all' (default customer)",
            ),
            (
                "--queue-name",
                checked(bounds.check_text),
                None,
                f"a name for the queue, at most {bounds.MAX_NAME_LENGTH} characters (default: 'customers <store url>')",
            ),
        ),
    )
    start.add_argument(
        "--detach",
        action="store_true",
        help="save the queue and hand its sync to `wcsync worker` (a registered store); answers at once with "
        "the queue id (--json: queueId and jobId)",
    )

    for name, text in (
        ("resume", "continue an interrupted queue from where it stopped"),
        ("retry", "fetch the failed lines' customers again and sync them"),
    ):
        _add_queue_id(commands.add_parser(name, help=text, description=text, parents=[common, store_options]))

    force = command("force-done", "cancel every unfinished line and mark the queue done")
    _add_queue_id(force)
    force.add_argument(
        "--reason",
        required=True,
        type=checked(reason),
        help=f"why, at most {bounds.MAX_REASON_LENGTH} characters (recorded in the audit log)",
    )
    _add_json(force)

    status = command("status", "show a queue's state and counts (the latest queue when no id is given)")
    _add_queue_id(status, nargs="?")
    _add_json(status)
    status.add_argument("--watch", action="store_true", help="refresh until the queue finishes")
    status.add_argument(
        "--interval",
        type=bounded(bounds.INTERVAL_S),
        default=2.0,
        help="seconds between refreshes with --watch (default 2)",
    )

    queues = command("queues", "list the org's queues, newest first")
    _add_json(queues)
    queues.add_argument("--limit", type=bounded(bounds.LIMIT), default=50)

    failed = command("failed", "list a queue's failed lines and their errors")
    _add_queue_id(failed)
    _add_json(failed)

    activity = command("activity", "show a queue's activity log, oldest first")
    _add_queue_id(activity)
    _add_json(activity)
    activity.add_argument("--limit", type=bounded(bounds.LIMIT), default=1000)

    stores = command("stores", "the org's registered stores, their credentials kept encrypted")
    s_commands = stores.add_subparsers(dest="stores_command", metavar="STORES_COMMAND", parser_class=Parser)
    s_commands.required = True
    add = s_commands.add_parser(
        "add",
        help="register a store (key and secret from WOO_CONSUMER_KEY / WOO_CONSUMER_SECRET, checked first)",
        parents=[common, store_options],
    )
    add.add_argument(
        "--name", type=checked(bounds.check_text), help="a name for the store (default: its URL)"
    )
    _add_json(s_commands.add_parser("list", help="the org's registered stores", parents=[common]))
    remove = s_commands.add_parser("remove", help="remove a store and delete its secret", parents=[common])
    remove.add_argument("store_id", type=store_id, metavar="STORE_ID")
    s_commands.add_parser(
        "rekey",
        help="re-encrypt every store secret under WCSYNC_SECRET_KEY (the old key in WCSYNC_SECRET_KEY_OLD)",
        parents=[common],
    )

    _add_tokens_parser(commands, common)
    _add_schedule_parser(commands, common)
    _add_webhooks_parser(commands, common)

    db = command("db", "database administration")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", parser_class=Parser)
    db_commands.required = True
    db_commands.add_parser("migrate", help="create every table once", parents=[common])

    projections = command("projections", "read models built from the event stream")
    p_commands = projections.add_subparsers(
        dest="projections_command", metavar="PROJECTIONS_COMMAND", parser_class=Parser
    )
    p_commands.required = True
    p_commands.add_parser("catch-up", help="apply every new event once, then exit", parents=[common])
    p_commands.add_parser("run", help="follow new events until stopped (Ctrl-C)", parents=[common])
    rebuild = p_commands.add_parser(
        "rebuild", help="replay every event into fresh tables and swap them in", parents=[common]
    )
    rebuild.add_argument("name", nargs="?", type=projection_name, help="one projection (default: all)")
    p_status = p_commands.add_parser(
        "status", help="position, head of the log and lag of each projection", parents=[common]
    )
    _add_json(p_status)

    sandbox = command("sandbox", "run a WooCommerce-compatible sandbox store on this machine")
    _sandbox_arguments(sandbox)
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=bounded(bounds.PORT), default=8080, help="0 picks a free port")

    demo = command(
        "demo",
        "start a sandbox store, sync it into the default database, then change it and follow by webhooks",
    )
    demo.add_argument("--customers", type=positive_int, default=797)
    demo.add_argument(
        "--invalid", type=positive_int, default=5, help="records that fail validation, fixed and retried"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then keep the sandbox, the API and the dashboard running on 127.0.0.1 (printing its address "
        "and an operator token) until Ctrl-C",
    )
    demo.add_argument(
        "--port",
        type=bounded(bounds.PORT),
        default=None,
        help="with --serve: the dashboard's port (default 8000; 0 picks a free one)",
    )
    _add_json(demo)
    _add_audit_parser(commands, common)
    _add_serve_parser(commands, common)
    _add_worker_parsers(commands, common)
    return parser


def _add_audit_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    audit = commands.add_parser(
        "audit",
        help="what the sync did, when, to whom, and whether the record was changed since",
        description="Audit and compliance, from the event log alone.",
        parents=[common],
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", parser_class=type(audit))
    sub.required = True

    queue = sub.add_parser(
        "queue", help="a queue's full timeline, or its state at an instant", parents=[common]
    )
    _add_queue_id(queue)
    queue.add_argument(
        "--as-of",
        type=instant,
        metavar="TIMESTAMP",
        help="the queue as it stood then (ISO 8601, UTC if no offset)",
    )
    out = queue.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON document")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per timeline row")

    customer = sub.add_parser("customer", help="one customer's history across every queue", parents=[common])
    customer.add_argument("woo_id", type=woo_id, metavar="WOO_ID")
    customer.add_argument("--store", metavar="URL", help="the store (needed when the org synced several)")
    _add_json(customer)

    export = sub.add_parser(
        "export", help="every event of the org as JSON lines, with a digest", parents=[common]
    )
    export.add_argument(
        "--since", type=instant, metavar="TIMESTAMP", help="only events from this instant (ISO 8601)"
    )
    export.add_argument("--output", required=True, metavar="FILE.jsonl", help="file to write")
    _add_json(export)

    verify = sub.add_parser(
        "verify", help="check the stored log against its ledger, or an export offline", parents=[common]
    )
    verify.add_argument("--file", metavar="FILE.jsonl", help="an export to check (no database needed)")
    _add_json(verify)


# infrastructure.adapters.tokens.ROLE_NAMES, lowest first (not imported: this module loads no database library).
TOKEN_ROLES = ("viewer", "operator", "admin")


def _add_schedule_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    text = "periodic full syncs of a registered store, started by the workers once per period"
    schedule = commands.add_parser("schedule", help=text, description=text, parents=[common])
    sc_commands = schedule.add_subparsers(
        dest="schedule_command", metavar="SCHEDULE_COMMAND", parser_class=Parser
    )
    sc_commands.required = True
    add = sc_commands.add_parser(
        "add",
        help="sync a registered store every period (--every) or at a cron expression's times",
        parents=[common],
    )
    add.add_argument("--store", required=True, type=store_id, metavar="STORE_ID", help="a registered store")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", metavar="PERIOD", help="e.g. 15m, 1h, 1d (at least 1m, at most 31d)")
    when.add_argument("--cron", metavar="EXPR", help="five fields in UTC, e.g. '0 3 * * *'")
    _add_json(add)
    _add_json(
        sc_commands.add_parser("list", help="the org's schedules, when each runs next", parents=[common])
    )
    remove = sc_commands.add_parser(
        "remove", help="remove a schedule (its syncs so far stay)", parents=[common]
    )
    remove.add_argument("schedule_id", metavar="SCHEDULE_ID", help="as `wcsync schedule list` prints it")


def _add_webhooks_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    text = (
        "a registered store's customer webhooks in the store itself (needs a Read/Write key to change them)"
    )
    webhooks = commands.add_parser("webhooks", help=text, description=text, parents=[common])
    w_commands = webhooks.add_subparsers(
        dest="webhooks_command", metavar="WEBHOOKS_COMMAND", parser_class=Parser
    )
    w_commands.required = True
    client = Parser(add_help=False)
    client.add_argument(
        "--store", required=True, type=store_id, metavar="STORE_ID", help="a registered store"
    )
    _add_options(
        client,
        (
            ("--ca-file", str, None, "trust this CA certificate (PEM) for an HTTPS store"),
            ("--timeout", bounded(bounds.TIMEOUT_S), 60.0, "seconds per request, more than 0 (default 60)"),
        ),
    )
    install = w_commands.add_parser(
        "install",
        help="create (or update) the customer.created/updated/deleted webhooks, active, to wcsync serve",
        parents=[common, client],
    )
    install.add_argument(
        "--public-url",
        required=True,
        metavar="URL",
        help="where the store reaches `wcsync serve` (http(s)://host[:port][/prefix])",
    )
    _add_json(install)
    _add_json(
        w_commands.add_parser(
            "status",
            help="each webhook as the store has it; exit 1 when one is disabled, paused or missing",
            parents=[common, client],
        )
    )
    _add_json(
        w_commands.add_parser(
            "uninstall",
            help="delete the store's wcsync webhooks (none left is fine)",
            parents=[common, client],
        )
    )
    deliveries = w_commands.add_parser(
        "deliveries",
        help="the deliveries the receiver recorded for a store, newest first: state, result, error",
        parents=[common],
    )
    deliveries.add_argument(
        "--store", required=True, type=store_id, metavar="STORE_ID", help="a registered store"
    )
    deliveries.add_argument("--limit", type=bounded(bounds.LIMIT), default=50)
    _add_json(deliveries)


def _add_tokens_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    text = "API tokens for `wcsync serve`: each acts for one org with one role; only its SHA-256 is kept"
    tokens = commands.add_parser("tokens", help=text, description=text, parents=[common])
    t_commands = tokens.add_subparsers(dest="tokens_command", metavar="TOKENS_COMMAND", parser_class=Parser)
    t_commands.required = True
    create = t_commands.add_parser(
        "create", help="create a token for the org (--org) and print it, once", parents=[common]
    )
    create.add_argument(
        "--name",
        required=True,
        type=checked(bounds.check_identifier),
        help="the token's name, unique in the org (the recorded actor of its requests that name no user)",
    )
    create.add_argument(
        "--role",
        choices=TOKEN_ROLES,
        default="viewer",
        help="viewer reads; operator also starts, retries, resumes, force-finishes; admin also manages "
        "stores (default viewer)",
    )
    _add_json(create, 'one JSON document: {"token", "name", "org", "role", "createdAt"}')
    _add_json(
        t_commands.add_parser(
            "list", help="the tokens (of --org, else of every org), never the tokens", parents=[common]
        )
    )
    revoke = t_commands.add_parser(
        "revoke", help="revoke a token: it answers 401 from then on", parents=[common]
    )
    revoke.add_argument("name", type=checked(bounds.check_identifier), metavar="NAME")


def _add_worker_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    text = (
        "run the sync jobs deferred by `start --detach` and the API (WCSYNC_SECRET_KEY opens the stores' "
        "credentials) until Ctrl-C or SIGTERM, which stop it after the batches in hand"
    )
    worker = commands.add_parser("worker", help=text, description=text, parents=[common])
    _add_options(
        worker,
        (
            ("--concurrency", bounded(bounds.CONCURRENCY), 1, "sync jobs run at once, 1-32 (default 1)"),
            *WORKER_TIMING_OPTIONS,
            *STORE_CLIENT_OPTIONS,
        ),
    )
    _add_json(
        commands.add_parser("workers", help="the running workers, their heartbeat and jobs", parents=[common])
    )
    _add_json(commands.add_parser("jobs", help="the sync jobs waiting, running or failed", parents=[common]))


def _add_serve_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    text = (
        "serve the HTTP API (the seed's sync endpoint, queue and store routes; every route but /healthz, "
        "/readyz and /api/openapi.json needs `Authorization: Bearer TOKEN`, see `wcsync tokens`) until Ctrl-C"
    )
    serve = commands.add_parser("serve", help=text, description=text, parents=[common])
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=bounded(bounds.PORT), default=8000, help="0 picks a free port (default 8000)"
    )
    serve.add_argument(
        "--workers",
        type=bounded(bounds.WORKERS),
        default=1,
        help="`wcsync worker` processes it runs for registered stores' syncs (default 1; 0: they run elsewhere)",
    )
    # Its workers' heartbeat and stall timeout, as `wcsync worker` takes them (forwarded to each).
    _add_options(serve, WORKER_TIMING_OPTIONS)
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="local development only: no token asked for, each request names its org_id (refused unless "
        "--host is a loopback address)",
    )
    serve.add_argument(
        "--public-origin",
        metavar="URL",
        help="the dashboard's origin as browsers see it behind a reverse proxy (https://ops.example.com; "
        "env WCSYNC_PUBLIC_ORIGIN): its forms are accepted although the proxy rewrites Host, and https "
        "makes the cookies Secure",
    )


def _sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    _add_options(
        parser,
        (
            ("--customers", positive_int, 797, None),
            ("--invalid", positive_int, 0, "records that break a validation rule"),
            ("--other-roles", positive_int, 0, "extra users that are not customers"),
            ("--seed", int, 42, None),
            ("--latency-ms", float, 0.0, None),
            ("--rate-limit", float, 0.0, "requests/s above which it answers 429"),
            ("--error-rate", float, 0.0, "share of random 5xx answers"),
            ("--html-rate", float, 0.0, "share of 200 answers with an HTML body"),
            ("--truncated-rate", float, 0.0, "share of truncated JSON answers"),
            ("--slow-rate", float, 0.0, None),
            ("--slow-ms", float, 2000.0, None),
            ("--drop-deliveries", float, 0.0, "share of webhook deliveries lost without being sent"),
            ("--delivery-timeout-s", float, 60.0, "seconds a webhook delivery may take (WooCommerce: 60)"),
        ),
    )
    parser.add_argument(
        "--read-only-key",
        dest="read_only_pair",
        action="store_true",
        help="also accept the public read-only key pair (ck_sandbox_readonly_..., for 401 tests)",
    )
    parser.add_argument(
        "--repeat-last-page",
        action="store_true",
        help="answer pages past the end with the last page, forever",
    )
    parser.add_argument(
        "--churn-every",
        type=positive_int,
        default=0,
        help="create/edit/delete a customer every N list requests",
    )
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (self-signed CA) with Basic auth")


# An option given by its flag, argument type (str: the text as given), default and help text (None: none).
Option = tuple[str, Callable[[str], Any], Any, str | None]
# How the store client talks to a store: `start`, `resume`, `retry` and `wcsync worker` (for its jobs) alike.
STORE_CLIENT_OPTIONS: tuple[Option, ...] = (
    ("--rate", bounded(bounds.RATE), 0.0, "max requests per second to the store (default 0: no limit)"),
    ("--ca-file", str, None, "trust this CA certificate (PEM) for an HTTPS store"),
    ("--timeout", bounded(bounds.TIMEOUT_S), 60.0, "seconds per request, more than 0 (default 60)"),
    (
        "--max-response-mb",
        bounded(bounds.MAX_RESPONSE_MB),
        bounds.DEFAULT_MAX_RESPONSE_MB,
        "largest store answer read, in MB (default 8); a larger page is fetched customer by customer",
    ),
)


# How a worker shows it is alive and how soon a silent one's jobs run elsewhere: `wcsync worker` and the
# workers `wcsync serve` starts alike.
WORKER_TIMING_OPTIONS: tuple[Option, ...] = (
    ("--heartbeat-s", bounded(bounds.TIMEOUT_S), 10.0, "seconds between heartbeats (default 10)"),
    (
        "--stalled-after-s",
        bounded(bounds.TIMEOUT_S),
        30.0,
        "a worker silent this long is dead: its jobs run again elsewhere (default 30)",
    ),
    (
        "--stalled-check-s",
        positive_int,
        10,
        "seconds between checks for dead workers' jobs, dividing 60 (default 10)",
    ),
)


def _add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    for flag, kind, default, help_text in options:
        parser.add_argument(flag, type=kind, default=default, help=help_text)


def _add_json(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument("--json", action="store_true", help=help_text)


def _add_queue_id(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    parser.add_argument("queue_id", type=queue_id, nargs=nargs, metavar="QUEUE_ID")
