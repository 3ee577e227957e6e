"""Failpoints: named places where a test can make this process die with SIGKILL, deterministically.

``WCSYNC_FAILPOINTS="before_batch_save=3,page_fetched=2"`` kills the process the 3rd time it reaches
``before_batch_save`` (or the 2nd ``page_fetched``). Unset (always, outside tests), a failpoint costs one
dict lookup. This is how the crash-safety tests kill a sync at an exact instant instead of guessing with
sleeps.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_ENV = "WCSYNC_FAILPOINTS"
_hits: Counter[str] = Counter()


def _parse(text: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in text.split(","):
        name, _, count = item.strip().partition("=")
        if name:
            points[name] = int(count or "1")
    return points


_points = _parse(os.environ.get(_ENV, ""))


def failpoint(name: str) -> None:
    if not _points or name not in _points:
        return
    _hits[name] += 1
    if _hits[name] == _points[name]:
        os.kill(os.getpid(), signal.SIGKILL)
