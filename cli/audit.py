"""`wcsync audit`: timelines, time travel, export and verification of the event log (infrastructure/services/audit.py).

Exit codes: 0 done / intact · 1 the log or the export is not intact (the first bad position is printed) ·
2 usage, unknown queue (or another org's), wrong WCSYNC_CIPHER_KEY · 4 database unavailable (or, on
SQLite, missing: audit reads only and creates nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

EXIT_OK = 0
EXIT_NOT_INTACT = 1


def _woo_id(text: str) -> int:
    from domain.validation import MAX_CUSTOMER_ID
    from infrastructure.support.errors import quoted

    what = f"is not a WooCommerce customer id (a whole number from 1 to {MAX_CUSTOMER_ID})"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quoted(text)} {what}") from None
    if not 0 < value <= MAX_CUSTOMER_ID:
        raise argparse.ArgumentTypeError(f"{quoted(text)} {what}")
    return value


def _instant(text: str) -> Any:
    """An ISO 8601 instant (UTC without an offset) that UTC can represent: `0001-01-01T00:00:00+01:00` is
    before year 1 in UTC, and is refused here rather than overflowing later."""
    from infrastructure.services.audit import parse_time
    from infrastructure.support.errors import ConfigurationError

    try:
        return parse_time(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_audit_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    from cli.main import _queue_id

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
    queue.add_argument("queue_id", type=_queue_id, metavar="QUEUE_ID")
    queue.add_argument(
        "--as-of",
        type=_instant,
        metavar="TIMESTAMP",
        help="the queue as it stood then (ISO 8601, UTC if no offset)",
    )
    out = queue.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON document")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per timeline row")

    customer = sub.add_parser("customer", help="one customer's history across every queue", parents=[common])
    customer.add_argument("woo_id", type=_woo_id, metavar="WOO_ID")
    customer.add_argument("--store", metavar="URL", help="the store (needed when the org synced several)")
    customer.add_argument("--json", action="store_true")

    export = sub.add_parser(
        "export", help="every event of the org as JSON lines, with a digest", parents=[common]
    )
    export.add_argument(
        "--since", type=_instant, metavar="TIMESTAMP", help="only events from this instant (ISO 8601)"
    )
    export.add_argument("--output", required=True, metavar="FILE.jsonl", help="file to write")
    export.add_argument("--json", action="store_true")

    verify = sub.add_parser(
        "verify", help="check the stored log against its ledger, or an export offline", parents=[common]
    )
    verify.add_argument("--file", metavar="FILE.jsonl", help="an export to check (no database needed)")
    verify.add_argument("--json", action="store_true")


def run_audit(args: argparse.Namespace) -> int:
    handler = {
        "queue": _queue,
        "customer": _customer,
        "export": _export,
        "verify": _verify,
    }[args.audit_command]
    return handler(args)


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)


def _queue(args: argparse.Namespace) -> int:
    from cli.main import _org, _print_json, _services
    from infrastructure.services.audit import queue_timeline

    org = _org(args)
    as_of = args.as_of
    with _services(args, read_only=True) as services:
        rows = queue_timeline(services.app, org, args.queue_id, as_of)
        if args.jsonl:
            for row in rows:
                _write(orjson.dumps(row) + b"\n")
            return EXIT_OK
        collected = list(rows)
        timeline = [row for row in collected if "asOf" not in row]
        document: dict[str, Any] = {"queueId": str(args.queue_id), "orgId": org, "timeline": timeline}
        document.update(next((row for row in collected if "asOf" in row), {}))
        if args.json:
            _print_json(document)
            return EXIT_OK
        for row in document["timeline"]:
            print(_render_row(row))
        if as_of is not None:
            _print_state(document)
        return EXIT_OK


def _render_row(row: dict[str, Any]) -> str:
    lines = row["lines"]
    shown = ",".join(str(i) for i in lines[:8]) + (f",… ({len(lines)})" if len(lines) > 8 else "")
    return f"{row['time']}  {row['event']:16}  {row['outcome']:16}  {shown:24}  {row['message']}"


def _print_state(document: dict[str, Any]) -> None:
    status = document["status"]
    print(f"\nas of {document['asOf']}:")
    print(
        f"  state {status['state']}  progress {status['progress']}%  total {status['totalCount']}  "
        f"draft {status['draftCount']}  done {status['doneCount']}  failed {status['failedCount']}  "
        f"cancelled {status['cancelledCount']}"
    )
    print(
        f"  created {status['createdCount']}  updated {status['updatedCount']}  unchanged "
        f"{status['unchangedCount']}  runs {status['processCount']}"
        + (f"  ACTION REQUIRED: {status['actionRequiredReason']}" if status["isActionRequired"] else "")
    )


def _customer(args: argparse.Namespace) -> int:
    from cli.main import _org, _print_json, _services
    from infrastructure.services.audit import customer_history
    from infrastructure.support.config import check_store_url

    org = _org(args)
    store = check_store_url(args.store) if args.store else None
    with _services(args, read_only=True) as services:
        document = customer_history(services, org, args.woo_id, store)
    if args.json:
        _print_json(document)
        return EXIT_OK
    summary = document["customer"]
    print(f"customer {summary['wooId']} of {summary['storeUrl']} (org {summary['orgId']})")
    print(f"first synced {summary['firstSyncedAt']} by queue {summary['firstQueueId']}")
    if summary["deleted"]:
        print(f"deleted      {summary['deletedAt']}")
    for entry in document["history"]:
        print(f"{entry['time']}  v{entry['version']:<3} {entry['event']:10}  queue {entry['queueId']}")
        for name, change in entry.get("changes", {}).items():
            print(f"      {name}: {change['old']!r} -> {change['new']!r}")
        if "reason" in entry:
            print(f"      reason: {entry['reason']}")
    if document["lines"]:
        print("lines in queues:")
        for row in document["lines"]:
            print(f"{row['time']}  queue {row['queueId']}  {row['outcome']:10}  {row['message']}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from cli.main import _database, _org, _print_json
    from infrastructure.adapters.eventstore import SyncApplication
    from infrastructure.services.audit import export_log
    from infrastructure.support.config import check_output_file
    from infrastructure.wiring import require_wcsync_tables

    org = _org(args)
    since = args.since
    output = check_output_file(args.output)  # before any work: never a directory, a device or a FIFO
    database = _database(args)
    require_wcsync_tables(database)
    app = SyncApplication(database, create_tables=False)  # reads only: creates nothing
    try:
        summary = export_log(app, org, output, since)
    finally:
        app.close()
    if args.json:
        _print_json(summary.as_dict())
    else:
        print(
            f"exported {summary.events} event(s) of org {org!r} to {summary.path} in {summary.seconds:.2f} s "
            f"(positions {summary.first_position}..{summary.last_position}, chain {summary.chain[:16]}…"
            f"{', signed' if summary.signed else ''})"
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from cli.main import _database, _print_json
    from infrastructure.services.audit import verify_export, verify_log
    from infrastructure.wiring import require_wcsync_tables

    if args.file:
        report = verify_export(Path(args.file))
    else:
        database = _database(args)
        require_wcsync_tables(database)
        report = verify_log(database)
    if args.json:
        _print_json(report.as_dict())
    else:
        what = f"export {args.file}" if args.file else f"event log {report.source}"
        if report.ok:
            print(
                f"intact: {what}: {report.events} event(s), chain {report.chain_hash[:16]}…"
                + (f", {report.checkpoints} checkpoint(s)" if report.checkpoints else "")
            )
        for note in report.notes:
            print(f"note: {note}")
    if report.ok:
        return EXIT_OK
    first = report.first
    assert first is not None
    sys.stderr.write(f"wcsync: NOT INTACT: {first.message}")
    more = report.problem_count - 1
    sys.stderr.write(f" (and {more} more problem(s); --json lists them)\n" if more > 0 else "\n")
    return EXIT_NOT_INTACT
