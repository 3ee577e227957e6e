"""The cyclic garbage collector, tuned for wcsync's bulk work.

A sync allocates about 2,000 container objects a page (each parsed customer is a dozen dicts and lists)
and frees nearly all of them by reference counting: they hold no cycles. CPython's default first
threshold (700 allocations) still runs a young collection three times a page, and every tenth of the
older ones a full one, which scans every live object of the process (160,000 by the end of a 100,000
customer sync, ~100 ms each on this kind of machine). Profiled on a 100k first sync (bench/RESULTS.md):
3.1-3.4 s of the sync process's CPU in the collector, 2,600 young and 21 full collections; with the first
threshold at 50,000, 0.13 s, 103 and none, and the sync ~13% faster, peak RSS unchanged.

Nothing is left uncollected: cycles (a traceback, an aiohttp connection) are still found, once every
50,000 allocations instead of 700. The projection follower pauses the collector for each run instead
(projections/runner.py, _gc_paused): it frees its batches as a whole.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def spare_the_exit() -> None:
    """Just before the interpreter exits: move every object to the collector's permanent generation, so
    that the collections the interpreter runs while it tears its modules down skip them. A process that
    imported the sync's libraries spent ~60 ms there scanning objects that the exit frees anyway (the
    whole process wall of `wcsync status` is ~0.2 s). What frees itself by reference counting still does:
    modules, files, connections; only garbage held in cycles is left to the operating system. Only at a
    process's end (``cli.main.entry``, and ``cli.processes``, whose live follower's exit a sync waits for),
    never in a process that goes on: it would keep every later cycle's garbage."""
    gc.freeze()


def tune_for_bulk_work() -> None:
    """Raise the collector's first threshold to YOUNG_THRESHOLD, keeping the older generations' own."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
