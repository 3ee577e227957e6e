"""`wcsync status | queues | failed | activity`: what the read models say about the org's queues."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from cli import common
from cli.output import print_json, render_status, status_exit
from domain.errors import EXIT_OK
from infrastructure.support.errors import printable
from projections import queries


def status(args: argparse.Namespace) -> int:
    org = common.org(args)
    with common.services(args, read_only=True) as services:
        while True:
            services.catch_up()
            current = common.queue_status_or_fail(services, org, args.queue_id)
            if args.json:
                print_json(current)
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write("\x1b[2J\x1b[H")
                print(render_status(current))
            if not args.watch or current["state"] in ("done", "failed"):
                return status_exit(current)
            sys.stdout.flush()
            time.sleep(max(0.2, args.interval))


def queues(args: argparse.Namespace) -> int:
    org = common.org(args)
    with common.services(args, read_only=True) as services:
        services.catch_up()
        rows = queries.list_queues(services.projections, org, limit=args.limit)
        if args.json:
            print_json(rows)
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


def failed(args: argparse.Namespace) -> int:
    return _queue_rows(
        args,
        queries.failed_lines,
        lambda row: (
            f"customer {row['wooCustomerId']:>8}  attempts {row['processCount']}  "
            f"{row['lastErrorTimestamp']}  {row['errorMessage']}"
        ),
        "no failed lines",
    )


def activity(args: argparse.Namespace) -> int:
    return _queue_rows(
        args,
        lambda runner, org, queue_id: queries.activity(runner, org, queue_id, limit=args.limit),
        lambda row: f"{row['createdAt']}  {row['status']:7}  {row['activityType']:24}  {row['message']}",
        "no activity",
    )


def _queue_rows(
    args: argparse.Namespace,
    fetch: Callable[[Any, str, UUID], list[dict[str, Any]]],
    render: Callable[[dict[str, Any]], str],
    empty: str,
) -> int:
    """Print rows about one queue of the org (JSON or one line each), after checking the queue exists."""
    org = common.org(args)
    with common.services(args, read_only=True) as services:
        services.catch_up()
        common.queue_status_or_fail(services, org, args.queue_id)
        rows = fetch(services.projections, org, args.queue_id)
        if args.json:
            print_json(rows)
        else:
            # Stored text (an actor or a store's message saved by an older version) never reaches the
            # terminal raw: each row is one line, its control characters escaped.
            print("\n".join(printable(render(row)) for row in rows) if rows else empty)
        return EXIT_OK
