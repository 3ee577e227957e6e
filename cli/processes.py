"""The entry points of the processes wcsync starts of itself: ``python -m cli.processes COMMAND``.

Lean on purpose (no HTTP client, no sync engine, not the ``wcsync`` CLI's parser): each only opens the
event store and its read models. The database comes in the environment, as ``WCSYNC_DATABASE_URL`` (with
``WCSYNC_CIPHER_KEY`` and the rest of wcsync's settings), never on argv: argv is visible to every user.

``follow``
    The live follower beside a sync on PostgreSQL (`wcsync start`, `resume`, `retry`, `demo`, the runs of
    `wcsync serve`). Started by ``Services._live_projections_process`` (infrastructure/wiring.py), which
    ends it with SIGTERM when the sync is done. Arguments: none; environment: ``WCSYNC_DATABASE_URL``,
    ``WCSYNC_FOLLOWER_PARENT`` (the sync's pid). Follows the log into the read models until SIGTERM or
    SIGINT, or until the sync is gone (killed with SIGKILL, say). One per schema follows at a time (the
    others stand by: infrastructure/adapters/follower_lock.py). Exit status 0, or a wcsync error's exit
    code with one line on stderr.

``projection-worker [--batch-size N] [--rebuild] NAME...``
    One group of projections catching up (or, with ``--rebuild``, their rebuild copies replaying the
    log) beside the others in a long catch-up or rebuild. Started by ``_GroupProcess`` in
    projections/runner.py (ProjectionRunner._run). Environment: ``WCSYNC_DATABASE_URL`` and the parent
    application's settings. Writes its outcome to stdout as one JSON object, ``{"applied": N,
    "quarantined": [...]}`` or ``{"error": {...}}`` (projections.runner.run_worker), which the parent
    reads back (logging the quarantined events, raising the error); logs go to stderr. Exit status 0
    whenever that object is written: any other status, or no output, is "a projection process failed".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

from domain.errors import WcsyncError
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.adapters.follower_lock import FollowerLock
from infrastructure.services.projections import ProjectionControl
from infrastructure.support.collector import spare_the_exit
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.logging import configure_logging
from projections.names import PROJECTION_NAMES
from projections.runner import (
    DATABASE_URL_VARIABLE,
    DEFAULT_BATCH_SIZE,
    FOLLOW_COMMAND,
    FOLLOWER_PARENT_VARIABLE,
    LIVE_POLL_S,
    WORKER_COMMAND,
    ProjectionRunner,
    run_worker,
)


def follow() -> int:
    """``follow``: the live follower (see the module docstring)."""
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # The sync names itself: if it died before this process got here, the check below fires at once.
    parent = int(os.environ.get(FOLLOWER_PARENT_VARIABLE) or os.getppid())
    threading.Thread(target=_stop_when_orphaned, args=(stop, parent), daemon=True).start()
    try:
        database = DatabaseConfig.from_url(os.environ.get(DATABASE_URL_VARIABLE))
        # One follower per schema works; the others stand by and take over when it ends.
        lock = FollowerLock(database)
        try:
            if not lock.wait(stop):
                return 0
            app = SyncApplication(database, create_tables=False)
            runner = ProjectionRunner(app)
            try:
                ProjectionControl(runner).follow(stop, LIVE_POLL_S)
            finally:
                runner.close()
                app.close()
        finally:
            lock.release()
    except WcsyncError as error:
        sys.stderr.write(f"wcsync projections: {error}\n")
        return error.exit_code
    return 0


def projection_worker(names: Sequence[str], rebuild: bool, batch_size: int) -> int:
    """``projection-worker``: one group of projections caught up (see the module docstring)."""
    configure_logging()  # to stderr: stdout carries the outcome (the parent logs the quarantined events)
    outcome = run_worker(os.environ.get(DATABASE_URL_VARIABLE), names, rebuild, batch_size)
    sys.stdout.write(json.dumps(outcome))
    sys.stdout.flush()
    return 0


def _stop_when_orphaned(stop: threading.Event, parent: int) -> None:
    """A follower outliving its sync (killed with SIGKILL, say) would run on forever: stop it."""
    while os.getppid() == parent:
        if stop.wait(0.5):
            return
    stop.set()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cli.processes", description="processes wcsync starts of itself"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(FOLLOW_COMMAND, help="the live follower beside a sync on PostgreSQL")
    worker = commands.add_parser(WORKER_COMMAND, help="one group of projections of a parallel catch-up")
    worker.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="notifications read and applied at once"
    )
    worker.add_argument("--rebuild", action="store_true", help="catch up the projections' rebuild copies")
    worker.add_argument(
        "names", nargs="+", metavar="NAME", choices=PROJECTION_NAMES, help="a projection of the group"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == FOLLOW_COMMAND:
        return follow()
    return projection_worker(args.names, args.rebuild, args.batch_size)


if __name__ == "__main__":
    code = main()
    # The sync waits for its follower's exit (and a catch-up for its workers'): no last collections there.
    spare_the_exit()
    raise SystemExit(code)
