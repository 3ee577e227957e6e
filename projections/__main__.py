"""`python -m projections`: the live follower that `wcsync start` runs beside a PostgreSQL sync.

A separate, lean entry point (no HTTP client, no engine): it only follows the log into the read models,
so the sync and its follower together stay small. Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from domain.errors import WcsyncError
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.logging import configure_logging
from projections import ProjectionRunner

LIVE_POLL_S = 0.25


def _stop_when_orphaned(stop: threading.Event, parent: int) -> None:
    """A follower outliving its sync (killed with SIGKILL, say) would run on forever: stop it."""
    while os.getppid() == parent:
        if stop.wait(0.5):
            return
    stop.set()


def main() -> int:
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # The sync names itself: if it died before this process got here, the check below fires at once.
    parent = int(os.environ.get("WCSYNC_FOLLOWER_PARENT") or os.getppid())
    threading.Thread(target=_stop_when_orphaned, args=(stop, parent), daemon=True).start()
    try:
        app = SyncApplication(
            DatabaseConfig.from_url(os.environ.get("WCSYNC_DATABASE_URL")), create_tables=False
        )
        runner = ProjectionRunner(app)
        try:
            runner.follow(stop, LIVE_POLL_S)
        finally:
            runner.close()
            app.close()
    except WcsyncError as error:
        sys.stderr.write(f"wcsync projections: {error}\n")
        return error.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
