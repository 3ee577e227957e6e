"""The event loop of `wcsync start | resume | retry` (cli/sync.py `_Loop`): one loop for the scan sent ahead
and the run, ended as asyncio.run's was. An interrupted run (a second Ctrl-C raises KeyboardInterrupt out of
the loop) winds down inside `run` itself, while the command's services are still open: its tasks cancelled
and awaited (their finally clauses give the queue's lease back), then the scan sent ahead closed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
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


def test_an_interrupted_run_ends_before_the_other_tasks_are_cancelled_so_its_worker_step_ends_first() -> None:
    """A worker step (SyncEngine._in_worker: a thread's future, shielded) under way when the run is
    interrupted: the run's task is cancelled alone first and waits for the thread's step to end. Cancelling
    every task at once, as asyncio.run did, cancelled the thread's future too, and the run moved on (gave
    its lease back) while the thread still wrote."""
    said: list[str] = []
    gate = threading.Event()  # the thread's step takes a while: until the timer opens it
    timer = threading.Timer(0.3, gate.set)

    def thread_step() -> None:
        gate.wait()
        said.append("thread step done")

    async def in_worker() -> None:
        future = asyncio.ensure_future(asyncio.to_thread(thread_step))
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            said.append("run moves on")
            raise

    def interrupt() -> None:
        timer.start()
        raise KeyboardInterrupt

    async def run() -> None:
        step = asyncio.ensure_future(in_worker())
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(interrupt)
        await step

    loop = _Loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(run())
    finally:
        gate.set()
        timer.cancel()
    assert said == ["thread step done", "run moves on"]


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
