"""An async service (anything opened with ``async with``) run on its own event loop in a background thread,
for synchronous code and tests: the sandbox store (`wcsync demo`), the HTTP API in its tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopThread(Generic[T]):
    """``with LoopThread(open, "the sandbox") as running:`` enters ``open()`` on a new loop in a thread and
    returns what it yields; leaving stops it and waits for the thread. An error while starting is raised in
    the caller's thread. With ``join_timeout``, a service that does not stop in time is an error, and so is
    one that failed while it ran."""

    def __init__(
        self,
        open_service: Callable[[], AbstractAsyncContextManager[T]],
        name: str,
        join_timeout: float | None = None,
    ) -> None:
        self._open = open_service
        self._name = name
        self._join_timeout = join_timeout
        self._ready = threading.Event()
        self._running: T | None = None
        self._started = False
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"wcsync {name}", daemon=True)

    def __enter__(self) -> T:
        self._thread.start()
        self._ready.wait()
        if not self._started:
            self._thread.join()
            raise RuntimeError(f"{self._name} did not start") from self._error
        assert self._running is not None
        return self._running

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=self._join_timeout)
        if self._join_timeout is not None:
            if self._thread.is_alive():
                raise RuntimeError(f"{self._name} did not stop")
            if self._error is not None:
                raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to the caller's thread by __enter__ or __exit__
            self._error = error
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self._open() as running:
            self._running = running
            self._started = True
            self._ready.set()
            await self._stop.wait()
