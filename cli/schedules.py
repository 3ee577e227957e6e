"""`wcsync schedule add | list | remove`: a registered store's periodic full sync
(infrastructure.services.schedules). The workers (`wcsync worker`, or `wcsync serve`'s) start each period's
sync once, however many run; nothing here needs the stores' key."""

from __future__ import annotations

import argparse
from uuid import UUID

from cli import common
from cli.arguments import UsageError
from cli.output import print_json
from domain.errors import EXIT_OK


def run(args: argparse.Namespace) -> int:
    return {"add": _add, "list": _list, "remove": _remove}[args.schedule_command](args)


def _add(args: argparse.Namespace) -> int:
    actor = common.actor()
    org = common.org(args)
    with common.services(args) as services:
        document = services.schedules().add(org, args.store, args.every, args.cron, actor)
    if args.json:
        print_json(document)
    else:
        print(
            f"schedule {document['scheduleId']}  store {document['storeId']}  {_when(document)}"
            f"  next {document['nextDueAt']}"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    org = common.org(args)
    with common.services(args, read_only=True) as services:
        rows = services.schedules().list(org)
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"org {org!r} has no schedules; `wcsync schedule add --store STORE_ID --every 1h` adds one")
    else:
        for row in rows:
            last = f"  last queue {row['lastQueueId']}" if row["lastQueueId"] else ""
            print(f"{row['scheduleId']}  store {row['storeId']}  {_when(row)}  next {row['nextDueAt']}{last}")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    org = common.org(args)
    try:
        schedule_id = UUID(args.schedule_id)
    except ValueError:
        raise UsageError("the schedule id is a UUID, as `wcsync schedule list` prints it") from None
    with common.services(args) as services:
        services.schedules().remove(org, schedule_id)
    print(f"removed schedule {schedule_id}")
    return EXIT_OK


def _when(row: dict[str, object]) -> str:
    return f"every {row['every']}" if row["every"] is not None else f"cron '{row['cron']}'"
