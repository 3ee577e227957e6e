"""`wcsync projections catch-up | run | rebuild [NAME] | status`: the read models built from the event stream."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from cli import common
from cli.arguments import UsageError
from cli.output import print_json
from domain.errors import EXIT_OK
from projections import UnknownProjectionError


def run(args: argparse.Namespace) -> int:
    with common.services(args, read_only=args.projections_command == "status") as services:
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
                print_json(rows)
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
