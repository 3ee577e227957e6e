"""Projection control: the use cases of `wcsync projections catch-up | run | rebuild | status` (and of the
live follower process, cli/processes.py `follow`), over the read models' runner (projections/runner.py).

An interface calls these and only prints: it opens the services (infrastructure.wiring), hands their
``projections`` runner to ``ProjectionControl``, and renders what comes back. Signals, messages on the
terminal and exit codes stay the interface's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from projections.names import PROJECTION_NAMES
from projections.runner import ProjectionRunner, UnknownProjectionError

__all__ = [
    "PROJECTION_NAMES",
    "QUARANTINED_LISTED",
    "ProjectionControl",
    "Replayed",
    "UnknownProjectionError",
]

# Quarantined events ``status`` lists per projection (their count, ``quarantined``, is always whole).
QUARANTINED_LISTED = 100


@dataclass(frozen=True)
class Replayed:
    """What a catch-up or a rebuild did: the notifications of the log it applied, in how many seconds."""

    events: int
    seconds: float


class ProjectionControl:
    """Catch up, rebuild, follow and report the read models of one database (see the module docstring)."""

    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner

    def catch_up(self) -> Replayed:
        """Apply every event not applied yet, to every projection (`wcsync projections catch-up`)."""
        started = time.monotonic()
        events = self.runner.catch_up()
        return Replayed(events, time.monotonic() - started)

    def rebuild(self, names: Sequence[str] | None = None) -> Replayed:
        """Replay the whole log into fresh tables of the projections named (default: all) and swap them in
        (`wcsync projections rebuild [NAME]`). A name that is no projection's: UnknownProjectionError, before
        anything is rebuilt."""
        started = time.monotonic()
        events = self.runner.rebuild(names)
        return Replayed(events, time.monotonic() - started)

    def follow(self, stop: threading.Event, poll_interval: float | None = None) -> None:
        """Catch up in a loop until ``stop`` is set, through database outages (`wcsync projections run`,
        the live follower); every ``poll_interval`` seconds when idle (default: the runner's)."""
        if poll_interval is None:
            self.runner.follow(stop)
        else:
            self.runner.follow(stop, poll_interval)

    def status(self, listed: int = QUARANTINED_LISTED) -> list[dict[str, Any]]:
        """One row per projection (`wcsync projections status`): name, version, codeVersion, position, head,
        lag, rebuilding, quarantined (the count), and quarantinedEvents: the first ``listed`` of its
        quarantined events, by position (Quarantined.as_dict)."""
        rows = self.runner.status()
        counted = any(row["quarantined"] for row in rows)
        set_aside = self.runner.quarantined(limit=listed * len(rows)) if counted else []
        for row in rows:
            row["quarantinedEvents"] = [q for q in set_aside if q["projection"] == row["name"]][:listed]
        return rows
