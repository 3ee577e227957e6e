"""Schedules: a registered store's full sync, run by the workers every period (issue 12, item 4).

`wcsync schedule add` keeps a row (infrastructure.adapters.schedules): how often (``--every 15m`` or a cron
expression, in UTC) and when it is due next. Every worker (JobWorker on PostgreSQL, LocalJobWorker on
SQLite, so `wcsync serve`'s too) calls ``ScheduleRunner.run_due`` beside its jobs. For each schedule due, the
runner claims the period (one compare-and-set statement: only one worker of all wins it) and starts a
detached sync exactly as `wcsync start --detach` does (a draft queue, then its start job; the actor
``schedule <id>``). Why this shape:

- exactly once per period: the claim, not a lock held while syncing; a worker that dies after its claim
  loses that one period (the next one runs), never runs it twice;
- no pile-up: a period whose previous scheduled queue is not done yet (a draft waiting for a worker, or still
  processing) is skipped, and the log says so;
- missed periods run once: a claim moves next_due_at to the first period after *now*, so a schedule whose
  workers were all down for a day runs one sync when one comes back, not one per missed period;
- deletions: a scheduled sync is an ordinary full scan, so the engine marks deleted the customers a complete
  scan no longer lists (and a partial scan marks none).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from domain.errors import EXIT_USAGE, StoreNotFoundError, WcsyncError
from domain.queue import SyncQueue
from domain.queue_terms import Q_DRAFT, Q_PROCESSING, QueueOptions
from infrastructure.adapters.schedules import Schedule, ScheduleTable
from infrastructure.adapters.schema import iso
from infrastructure.support.errors import ConfigurationError

if TYPE_CHECKING:  # types only: every command that opens the services imports this module (MIN_EVERY_S)
    from infrastructure.services.jobs import DetachedStarts
    from infrastructure.services.sync import SyncEngine

log = structlog.get_logger("wcsync.schedules")

# The CLI's bounds of --every: a minute (a full scan reads every page of the store) to 31 days.
MIN_EVERY_S = 60
MAX_EVERY_S = 31 * 86400

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")


class ScheduleNotFoundError(WcsyncError):
    """No schedule of that id in the org (another org's is the same answer)."""

    exit_code = EXIT_USAGE
    http_status = 404
    error_code = "schedule_not_found"


class ScheduleExistsError(WcsyncError):
    """The store has a schedule already: one per store (a second would scan the same store again)."""

    exit_code = EXIT_USAGE
    http_status = 409
    error_code = "schedule_exists"


def parse_every(text: str, min_every_s: int = MIN_EVERY_S) -> int:
    """``--every``: a whole number and a unit (s, m, h, d), e.g. 15m, 1h, 1d; seconds, within bounds."""
    found = _EVERY.match(text.strip())
    if found is None:
        raise ConfigurationError(
            f"--every is a number and a unit (s, m, h or d), e.g. 15m, 1h, 1d; got {text[:40]!r}"
        )
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if not min_every_s <= seconds <= MAX_EVERY_S:
        raise ConfigurationError(
            f"--every must be at least {_shown(min_every_s)} and at most 31d, got {text.strip()}"
        )
    return seconds


def check_cron(expression: str) -> str:
    """``--cron``: five fields (minute hour day-of-month month day-of-week, UTC), as croniter reads them."""
    text = " ".join(expression.split())
    if len(text.split(" ")) != 5 or not _croniter().is_valid(text):
        raise ConfigurationError(
            f"--cron takes five fields (minute hour day month weekday, UTC), e.g. '0 3 * * *'; got {expression[:60]!r}"
        )
    return text


def next_due(schedule_every_s: int | None, cron: str | None, due_at: float, now: float) -> float:
    """The first time of the schedule after ``now`` (``due_at``: the time that was due): so a schedule
    whose periods were missed runs once, then keeps its rhythm."""
    if cron is not None:
        return float(_croniter()(cron, now).get_next(float))
    assert schedule_every_s is not None
    if due_at > now:
        return due_at
    periods = math.floor((now - due_at) / schedule_every_s) + 1
    return due_at + periods * schedule_every_s


def first_due(every_s: int | None, cron: str | None, now: float) -> float:
    """When a new schedule runs first: one period from now (a cron expression: its next time)."""
    if cron is not None:
        return float(_croniter()(cron, now).get_next(float))
    assert every_s is not None
    return now + every_s


def _croniter() -> Any:
    """croniter's class, imported at its first use: its import starts a process (`file` on the interpreter,
    for platform.architecture), which every command that opens the services would otherwise pay."""
    from croniter import croniter  # type: ignore[import-untyped]

    return croniter


def _shown(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _iso_of(epoch: float | None) -> str | None:
    return None if epoch is None else iso(datetime.fromtimestamp(epoch, UTC))


def document(schedule: Schedule) -> dict[str, Any]:
    """A schedule as `schedule list --json` shows it."""
    return {
        "scheduleId": str(schedule.schedule_id),
        "storeId": str(schedule.store_id),
        "every": None if schedule.every_s is None else _shown(schedule.every_s),
        "everySeconds": schedule.every_s,
        "cron": schedule.cron,
        "nextDueAt": _iso_of(schedule.next_due_at),
        "lastRunAt": _iso_of(schedule.last_run_at),
        "lastQueueId": None if schedule.last_queue_id is None else str(schedule.last_queue_id),
        "createdBy": schedule.created_by,
        "createdAt": schedule.created_at,
    }


# A registered store of an org as the stores projection shows it ({"storeId", "url", ...}), or None.
StoreLookup = Callable[[str, UUID], dict[str, Any] | None]


class Schedules:
    """The use cases of `wcsync schedule`: add, list, remove (each call names its org)."""

    def __init__(
        self,
        table: ScheduleTable,
        store_of: StoreLookup,
        clock: Callable[[], float] = time.time,
        min_every_s: int = MIN_EVERY_S,
    ) -> None:
        self.table = table
        self.store_of = store_of
        self.clock = clock
        self.min_every_s = min_every_s

    def add(
        self, org_id: str, store_id: UUID, every: str | None, cron: str | None, actor: str
    ) -> dict[str, Any]:
        if (every is None) == (cron is None):
            raise ConfigurationError("give --every or --cron (one of the two)")
        every_s = None if every is None else parse_every(every, self.min_every_s)
        cron = None if cron is None else check_cron(cron)
        if self.store_of(org_id, store_id) is None:
            raise StoreNotFoundError(store_id, org_id)
        now = self.clock()
        schedule = Schedule(
            schedule_id=uuid.uuid4(),
            org_id=org_id,
            store_id=store_id,
            every_s=every_s,
            cron=cron,
            next_due_at=first_due(every_s, cron, now),
            created_by=actor,
            created_at=iso(datetime.fromtimestamp(now, UTC)),
            last_run_at=None,
            last_queue_id=None,
        )
        if not self.table.add(schedule):
            [taken] = [s for s in self.table.listed(org_id) if s.store_id == store_id]
            raise ScheduleExistsError(
                f"store {store_id} has schedule {taken.schedule_id} already; "
                f"`wcsync schedule remove {taken.schedule_id}` first"
            )
        log.info(
            "schedule.added", schedule_id=str(schedule.schedule_id), org_id=org_id, store_id=str(store_id)
        )
        return document(schedule)

    def list(self, org_id: str) -> list[dict[str, Any]]:
        return [document(schedule) for schedule in self.table.listed(org_id)]

    def remove(self, org_id: str, schedule_id: UUID) -> None:
        if not self.table.remove(org_id, schedule_id):
            raise ScheduleNotFoundError(
                f"no schedule {schedule_id} in org {org_id!r} (`wcsync schedule list`)"
            )
        log.info("schedule.removed", schedule_id=str(schedule_id), org_id=org_id)


# An engine for a scheduled start: (org, actor) -> SyncEngine.
ScheduleEngines = Callable[[str, str], "SyncEngine"]


@dataclass(frozen=True)
class DueOutcome:
    """What one look at the due schedules did: the queues started, the schedules skipped."""

    started: tuple[UUID, ...] = ()
    skipped: tuple[UUID, ...] = ()


class ScheduleRunner:
    """The "run what is due" step every worker takes every ``WorkerSettings.schedule_check_s`` (see the module docstring).
    ``jobs`` defers the start jobs (SyncJobs on PostgreSQL, LocalSyncJobs on SQLite)."""

    def __init__(
        self,
        table: ScheduleTable,
        engines: ScheduleEngines,
        jobs: DetachedStarts,
        store_of: StoreLookup,
        get_queue: Callable[[UUID], SyncQueue],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.engines = engines
        self.jobs = jobs
        self.store_of = store_of
        self.get_queue = get_queue
        self.clock = clock

    async def run_due(self) -> DueOutcome:
        return await asyncio.to_thread(self.run_due_sync)

    def run_due_sync(self) -> DueOutcome:
        now = self.clock()
        started: list[UUID] = []
        skipped: list[UUID] = []
        for schedule in self.table.due(now):
            following = next_due(schedule.every_s, schedule.cron, schedule.next_due_at, now)
            if not self.table.claim(schedule, following, now):
                continue  # another worker took this period
            fields = {"schedule_id": str(schedule.schedule_id), "org_id": schedule.org_id}
            if self._previous_unfinished(schedule):
                log.info(
                    "schedule.skipped",
                    reason="its previous scheduled queue is not done yet",
                    queue_id=str(schedule.last_queue_id),
                    next_due_at=_iso_of(following),
                    **fields,
                )
                skipped.append(schedule.schedule_id)
                continue
            queue_id = self._start(schedule, fields)
            if queue_id is not None:
                started.append(queue_id)
        return DueOutcome(tuple(started), tuple(skipped))

    def _previous_unfinished(self, schedule: Schedule) -> bool:
        if schedule.last_queue_id is None:
            return False
        try:
            queue = self.get_queue(schedule.last_queue_id)
        except WcsyncError:
            return False  # a queue that is not there cannot be running
        return queue.state in (Q_DRAFT, Q_PROCESSING)

    def _start(self, schedule: Schedule, fields: dict[str, str]) -> UUID | None:
        """The period's sync, as `start --detach`: a draft, then its start job. A failure is logged (this
        period is lost; the next one tries again), never raised into the worker."""
        store = self.store_of(schedule.org_id, schedule.store_id)
        if store is None:
            log.warning(
                "schedule.store_missing",
                store_id=str(schedule.store_id),
                advice=f"the store is not registered: `wcsync schedule remove {schedule.schedule_id}`",
                **fields,
            )
            return None
        engine = self.engines(schedule.org_id, f"schedule {schedule.schedule_id}")
        try:
            queue_id, job_id = self.jobs.start_sync(
                engine, schedule.store_id, str(store["url"]), QueueOptions()
            )
        except WcsyncError as error:
            log.error("schedule.start_failed", error=str(error), **fields)
            return None
        self.table.record_queue(schedule.schedule_id, queue_id)
        log.info("schedule.started", queue_id=str(queue_id), job_id=job_id, **fields)
        return queue_id
