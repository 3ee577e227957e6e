"""The event loop of `wcsync start | resume | retry` (cli/sync.py `_Loop`): one loop for the scan sent ahead
and the run, ended as asyncio.run's was. An interrupted run (a second Ctrl-C raises KeyboardInterrupt out of
the loop) winds down inside `run` itself, while the command's services are still open: its tasks cancelled
and awaited (their finally clauses give the queue's lease back), then the scan sent ahead closed."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from cli.sync import _Loop
from infrastructure.adapters.woocommerce import ScanAhead


class _Ahead:
    """What the loop needs of a ScanAhead: its close (recorded)."""

    def __init__(self, said: list[str]) -> None:
        self.said = said

    async def close(self) -> None:
        self.said.append("ahead closed")


def _interrupt() -> None:
    raise KeyboardInterrupt


def test_an_interrupted_run_winds_down_before_run_returns_and_the_scan_ahead_closes_after_its_tasks() -> None:
    said: list[str] = []
    loop = _Loop()
    loop.ahead = cast(ScanAhead, _Ahead(said))

    async def step() -> None:
        try:
            await asyncio.Event().wait()  # a step waiting for the store
        finally:
            said.append("lease given back")

    async def run() -> None:
        task = asyncio.ensure_future(step())
        await asyncio.sleep(0)  # the step has begun
        asyncio.get_running_loop().call_soon(_interrupt)  # the second Ctrl-C's KeyboardInterrupt
        await task

    with pytest.raises(KeyboardInterrupt):
        loop.run(run())
    # Wound down already, inside run(): the services the caller holds were open throughout.
    assert said == ["lease given back", "ahead closed"]
    loop.end()  # once only: nothing again
    assert said == ["lease given back", "ahead closed"]


def test_a_run_that_ends_leaves_the_loop_to_the_end_and_the_end_closes_the_scan_ahead() -> None:
    said: list[str] = []
    loop = _Loop()
    loop.ahead = cast(ScanAhead, _Ahead(said))

    async def answer() -> int:
        return 42

    assert loop.run(answer()) == 42
    assert said == []  # a later run may still use the loop and its scan
    assert loop.run(answer()) == 42
    loop.end()
    assert said == ["ahead closed"]


def test_the_end_without_a_scan_ahead_or_any_run_and_no_run_after_it() -> None:
    loop = _Loop()
    loop.end()
    late = asyncio.sleep(0)
    try:
        with pytest.raises(RuntimeError, match="closed"):
            loop.run(late)
    finally:
        late.close()
