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

from cli import common
from cli.output import print_json
from domain.errors import EXIT_OK
from infrastructure.services.audit import (
    customer_history,
    export_log,
    queue_timeline,
    verify_export,
    verify_log,
)
from infrastructure.support.config import check_output_file, check_store_url
from infrastructure.wiring import open_event_log, require_wcsync_tables

EXIT_NOT_INTACT = 1  # the log or the export is not intact


def run(args: argparse.Namespace) -> int:
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
    org = common.org(args)
    as_of = args.as_of
    with common.services(args, read_only=True) as services:
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
            print_json(document)
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
    org = common.org(args)
    store = check_store_url(args.store) if args.store else None
    with common.services(args, read_only=True) as services:
        document = customer_history(services, org, args.woo_id, store)
    if args.json:
        print_json(document)
        return EXIT_OK
    summary = document["customer"]
    print(f"customer {summary['wooId']} of {summary['storeUrl']} (org {summary['orgId']})")
    history = document["history"]
    first = _writer(history[0]) if history else f"queue {summary['firstQueueId']}"
    print(f"first synced {summary['firstSyncedAt']} by {first}")
    if summary["deleted"]:
        print(f"deleted      {summary['deletedAt']}")
    for entry in history:
        print(f"{entry['time']}  v{entry['version']:<3} {entry['event']:10}  {_writer(entry)}")
        for name, change in entry.get("changes", {}).items():
            print(f"      {name}: {change['old']!r} -> {change['new']!r}")
        if "reason" in entry:
            print(f"      reason: {entry['reason']}")
    if document["lines"]:
        print("lines in queues:")
        for row in document["lines"]:
            print(f"{row['time']}  queue {row['queueId']}  {row['outcome']:10}  {row['message']}")
    return EXIT_OK


def _writer(entry: dict[str, Any]) -> str:
    """Who wrote a customer's change: its queue, or the webhook delivery (WooCommerce's delivery id)."""
    delivery = entry.get("webhookDelivery")
    if delivery is None:
        return f"queue {entry['queueId']}"
    return (
        f"webhook delivery {delivery['deliveryId'] or '(no id)'} ({delivery['topic']}, "
        f"received {delivery['receivedAt']}, key {delivery['deliveryKey']})"
    )


def _export(args: argparse.Namespace) -> int:
    org = common.org(args)
    since = args.since
    output = check_output_file(args.output)  # before any work: never a directory, a device or a FIFO
    database = common.database(args)
    app = open_event_log(database)  # reads only: creates nothing
    try:
        summary = export_log(app, org, output, since)
    finally:
        app.close()
    if args.json:
        print_json(summary.as_dict())
    else:
        print(
            f"exported {summary.events} event(s) of org {org!r} to {summary.path} in {summary.seconds:.2f} s "
            f"(positions {summary.first_position}..{summary.last_position}, chain {summary.chain[:16]}…"
            f"{', signed' if summary.signed else ''})"
        )
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    if args.file:
        report = verify_export(Path(args.file))
    else:
        database = common.database(args)
        require_wcsync_tables(database)
        report = verify_log(database)
    if args.json:
        print_json(report.as_dict())
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
