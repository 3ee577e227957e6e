"""Waiting, bounded, for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE_S = 60.0


def wait_until(probe: Callable[[], T | None], deadline_s: float = DEADLINE_S, interval_s: float = 0.05) -> T:
    """Call ``probe`` every ``interval_s`` until it returns something other than None or False, and return
    that; fail the test if ``deadline_s`` passes first."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        assert time.monotonic() < deadline, f"not reached within {deadline_s} s"
        time.sleep(interval_s)
