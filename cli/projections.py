"""`wcsync projections catch-up | run | rebuild [NAME] | status`: the read models built from the event
stream, through the projection control service (infrastructure.services.projections)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from cli import common
from cli.arguments import UsageError
from cli.output import print_json
from domain.errors import EXIT_OK
from infrastructure.services.projections import ProjectionControl, UnknownProjectionError


def run(args: argparse.Namespace) -> int:
    action = args.projections_command
    with common.services(args, read_only=action == "status") as services:
        control = ProjectionControl(services.projections)
        if action == "catch-up":
            done = control.catch_up()
            print(f"applied {done.events} event(s) in {done.seconds:.2f} s")
        elif action == "rebuild":
            try:
                done = control.rebuild([args.name] if args.name else None)
            except UnknownProjectionError as error:
                raise UsageError(f"{error}; `wcsync projections status` lists them") from None
            print(f"rebuilt from {done.events} event(s) in {done.seconds:.2f} s")
        elif action == "run":
            stop = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
            sys.stderr.write("following new events; Ctrl-C to stop\n")
            control.follow(stop)
        else:
            rows = control.status()
            if args.json:
                print_json(rows)
            else:
                _print_status(rows)
        return EXIT_OK


def _print_status(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(
            f"{row['name']:12} version {row['version']}  position {row['position']}  "
            f"head {row['head']}  lag {row['lag']}  quarantined {row['quarantined']}"
        )
    if any(row["quarantinedEvents"] for row in rows):
        print(
            "quarantined events (set aside, walked past; `wcsync projections rebuild NAME` "
            "retries them once the cause is fixed):"
        )
    for row in rows:
        listed = row["quarantinedEvents"]
        for q in listed:
            print(
                f"  {q['projection']:12} position {q['position']}  {q['topic']}  "
                f"{q['originatorId']} v{q['originatorVersion']}  {q['reason']}"
            )
        if row["quarantined"] > len(listed):
            print(f"  {row['name']:12} ... and {row['quarantined'] - len(listed)} more")
