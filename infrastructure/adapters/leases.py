"""Queue leases: who is processing a queue right now, so a second run of it is refused at once, naming the
holder, instead of dying half-way through a batch on the event store's optimistic concurrency.

One row per queue in wcsync_queue_leases (migration 3 of adapters/migrations.py): the holder in words for
people ("pid 4242@host-a", "worker 17 (pid 4242@host-a)"), its host and pid, since (UTC ISO text) and its
last heartbeat (epoch seconds of the holder's clock: compared as numbers on both backends). Whoever
processes a queue (the CLI's start/resume/retry/force-done, the server's runs, the workers) holds its lease.

- ``acquire`` is one statement in the common case: INSERT ... ON CONFLICT (queue_id) DO UPDATE ... WHERE
  the lease there is stale ... RETURNING; no row back means a live lease, and QueueBusyError names it.
- A lease is stale when its heartbeat is older than LEASE_STALE_S, or when it was taken on this host by a
  process that no longer exists (a CLI run killed a moment ago): the next run on that machine takes it over
  at once (a second, conditional statement) instead of waiting. This process's own leases are never dead.
- A daemon thread refreshes every lease this object holds every LEASE_HEARTBEAT_S; ``release`` deletes the
  row only while it is still ours (host, pid and since: a lease taken over is someone else's now).

On SQLite the statements wait for the write lock like every writer (the connection's busy timeout) and take
this process's write gate first when given one (wiring.WriteGate), so a heartbeat gets its turn between
the event store's saves.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog

from infrastructure.adapters.migrations import QUEUE_LEASES_TABLE, Connection, storage_errors
from infrastructure.adapters.schema import iso
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import QueueBusyError

log = structlog.get_logger("wcsync.leases")

# A lease whose heartbeat is older than this is stale: its holder is taken to be gone.
LEASE_STALE_S = 30.0
# How often a held lease's heartbeat is refreshed (well inside LEASE_STALE_S: a few missed beats are fine).
LEASE_HEARTBEAT_S = 5.0
# Races between acquire's statements (a lease released or taken over between them) are tried this often.
_ACQUIRE_ATTEMPTS = 5

_COLUMNS = "queue_id, org_id, holder, host, pid, since, heartbeat_at"
_TAKE = (
    "SET org_id = EXCLUDED.org_id, holder = EXCLUDED.holder, host = EXCLUDED.host, pid = EXCLUDED.pid, "
    "since = EXCLUDED.since, heartbeat_at = EXCLUDED.heartbeat_at"
)
_MINE = "queue_id = %s AND host = %s AND pid = %s AND since = %s"


def default_holder() -> str:
    """This process in words: ``pid 4242@host-a``."""
    return f"pid {os.getpid()}@{socket.gethostname()}"


def this_machine() -> str:
    """Who "this host" is when a pid is judged dead or alive: the host name, the kernel's boot and the pid
    namespace. A host name alone let two containers of one name (one pod, host networking) read each
    other's live pids as dead and take their leases, and a reboot or container restart reuse small pids
    that then looked alive forever."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]"))
    return "/".join(parts)


def pid_exists(pid: int) -> bool:
    """Whether a process of this pid runs on this host (one we may not signal runs too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LeaseRow:
    """A lease as stored."""

    queue_id: UUID
    org_id: str
    holder: str
    host: str
    pid: int
    since: str  # iso(), six-digit microseconds: with host and pid, which taking of the lease this is
    heartbeat_at: float

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> LeaseRow:
        queue_id, org_id, holder, host, pid, since, heartbeat_at = row
        return cls(
            UUID(str(queue_id)),
            str(org_id),
            str(holder),
            str(host),
            int(pid),
            str(since),
            float(heartbeat_at),
        )

    @property
    def since_time(self) -> datetime:
        return datetime.fromisoformat(self.since)


@dataclass(frozen=True)
class StaleLease:
    """A lease whose holder is gone (stale_leases): the queue it left processing, for a pickup to resume."""

    queue_id: UUID
    org_id: str
    holder: str


@dataclass
class Lease:
    """A lease this process holds (QueueLeases.acquire). ``lost``: another holder took it over (our
    heartbeat had gone stale: the database unreachable for LEASE_STALE_S, the process suspended), or its row
    went; the heartbeat then stops refreshing it and calls ``on_lost`` once (the engine stops its run after
    the batch in hand, so two runs do not race on the queue)."""

    leases: QueueLeases = field(repr=False)
    queue_id: UUID
    org_id: str
    holder: str
    since: str
    on_lost: Callable[[], None] | None = field(default=None, repr=False)
    lost: bool = False
    released: bool = False

    def heartbeat(self) -> bool:
        """Refresh the heartbeat now; False when the lease is no longer ours."""
        if self.released or self.lost:
            return not self.lost
        if not self.leases._refresh(self):
            self.lost = True
            log.warning("lease.lost", queue_id=str(self.queue_id), holder=self.holder)
            if self.on_lost is not None:
                self.on_lost()
        return not self.lost

    def release(self) -> None:
        """Give the lease up (its row deleted while still ours). Never raises a database error: the run it
        ends must report its own outcome, and a row left behind is stale once its heartbeat stops."""
        if self.released:
            return
        self.released = True
        self.leases._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class QueueLeases:
    """The queue leases on the database of ``database``. Thread-safe (one connection, a lock); every
    database error is a StorageError (exit 4), a database without the table says to migrate.

    ``clock`` (epoch seconds), ``host`` and ``pid`` are this process's unless a test says otherwise;
    ``write_gate``: this process's SQLite write gate, taken around each statement."""

    def __init__(
        self,
        database: DatabaseConfig,
        *,
        write_gate: AbstractContextManager[Any] | None = None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        pid: int | None = None,
        heartbeat_s: float = LEASE_HEARTBEAT_S,
        stale_s: float = LEASE_STALE_S,
    ) -> None:
        self.database = database
        self.clock = clock
        self.host = host if host is not None else this_machine()
        self.pid = pid if pid is not None else os.getpid()
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self._write_gate = write_gate
        self._conn = Connection(database)
        self._lock = threading.Lock()
        self._held: dict[tuple[UUID, str], Lease] = {}
        self._closed = threading.Event()
        self._beats: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"QueueLeases({self.database.display})"

    # ----- taking and giving back ----------------------------------------------------------------------

    def acquire(
        self, queue_id: UUID, org_id: str, holder: str, on_lost: Callable[[], None] | None = None
    ) -> Lease:
        """The queue's lease for ``holder``, kept fresh by the heartbeat until released (``on_lost``: called
        if it is taken over meanwhile). A live lease of someone else (or of another run of this process):
        QueueBusyError naming its holder and since."""
        current: LeaseRow | None = None
        for _attempt in range(_ACQUIRE_ATTEMPTS):
            now = self.clock()
            since = iso(datetime.fromtimestamp(now, UTC))
            if self._insert_or_take_stale(queue_id, org_id, holder, since, now):
                return self._held_lease(Lease(self, queue_id, org_id, holder, since, on_lost))
            current = self.lease_of(queue_id)
            if current is None:
                continue  # released meanwhile: try again
            if self._dead_here(current):
                if self._take_over(current, org_id, holder, since, now):
                    log.info("lease.taken_over", queue_id=str(queue_id), holder=holder, dead=current.holder)
                    return self._held_lease(Lease(self, queue_id, org_id, holder, since, on_lost))
                continue  # someone else took it over first
            raise self.busy(current)
        if current is None:  # taken and released again and again meanwhile: busy, but by whom is unknown
            raise RuntimeError(f"the lease of queue {queue_id} kept changing hands")
        raise self.busy(current)

    def busy(self, lease: LeaseRow) -> QueueBusyError:
        return QueueBusyError(
            lease.queue_id, lease.holder, lease.since_time, self.stale_s, org_id=lease.org_id
        )

    def _insert_or_take_stale(self, queue_id: UUID, org_id: str, holder: str, since: str, now: float) -> bool:
        rows = self._execute(
            f"INSERT INTO {QUEUE_LEASES_TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (queue_id) DO UPDATE {_TAKE} "
            f"WHERE {QUEUE_LEASES_TABLE}.heartbeat_at < %s RETURNING queue_id",
            (str(queue_id), org_id, holder, self.host, self.pid, since, now, now - self.stale_s),
        )
        return bool(rows)

    def _take_over(self, dead: LeaseRow, org_id: str, holder: str, since: str, now: float) -> bool:
        """Take over the lease of a process of this host that is gone, if it is still that one's."""
        rows = self._execute(
            f"UPDATE {QUEUE_LEASES_TABLE} SET org_id = %s, holder = %s, host = %s, pid = %s, since = %s, "
            f"heartbeat_at = %s WHERE {_MINE} RETURNING queue_id",
            (
                org_id,
                holder,
                self.host,
                self.pid,
                since,
                now,
                str(dead.queue_id),
                dead.host,
                dead.pid,
                dead.since,
            ),
        )
        return bool(rows)

    def _held_lease(self, lease: Lease) -> Lease:
        with self._lock:
            self._held[(lease.queue_id, lease.since)] = lease
        self._start_heartbeat()
        return lease

    def _refresh(self, lease: Lease) -> bool:
        rows = self._execute(
            f"UPDATE {QUEUE_LEASES_TABLE} SET heartbeat_at = %s WHERE {_MINE} RETURNING queue_id",
            (self.clock(), str(lease.queue_id), self.host, self.pid, lease.since),
        )
        return bool(rows)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop((lease.queue_id, lease.since), None)
        try:
            self._execute(
                f"DELETE FROM {QUEUE_LEASES_TABLE} WHERE {_MINE}",
                (str(lease.queue_id), self.host, self.pid, lease.since),
            )
        except Exception as error:  # a StorageError: the row goes stale once the heartbeat stops
            # info: the run it ends reports its own error (a full disk, say); the row goes stale by itself.
            log.info("lease.not_released", queue_id=str(lease.queue_id), error=str(error))

    # ----- reading -------------------------------------------------------------------------------------

    def lease_of(self, queue_id: UUID) -> LeaseRow | None:
        """The queue's lease as stored (live or stale), if it has one."""
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM {QUEUE_LEASES_TABLE} WHERE queue_id = %s", (str(queue_id),), write=False
        )
        return LeaseRow.of(rows[0]) if rows else None

    def is_stale(self, lease: LeaseRow) -> bool:
        return lease.heartbeat_at < self.clock() - self.stale_s or self._dead_here(lease)

    def live(self, queue_ids: Collection[UUID]) -> set[UUID]:
        """Which of ``queue_ids`` a run holds now (a lease, not stale): one query for them all (a page of
        the queue list), none for no ids."""
        ids = list(dict.fromkeys(str(queue_id) for queue_id in queue_ids))
        if not ids:
            return set()
        marks = ", ".join(["%s"] * len(ids))
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM {QUEUE_LEASES_TABLE} WHERE queue_id IN ({marks})",
            tuple(ids),
            write=False,
        )
        leases = [LeaseRow.of(row) for row in rows]
        return {lease.queue_id for lease in leases if not self.is_stale(lease)}

    def stale_leases(self) -> list[StaleLease]:
        """The leases whose holder is gone (stale heartbeat, or a process of this host that died): the
        queues a pickup may resume (acquire then takes each lease over)."""
        rows = self._execute(f"SELECT {_COLUMNS} FROM {QUEUE_LEASES_TABLE} ORDER BY since", write=False)
        leases = [LeaseRow.of(row) for row in rows]
        return [StaleLease(ls.queue_id, ls.org_id, ls.holder) for ls in leases if self.is_stale(ls)]

    def _dead_here(self, lease: LeaseRow) -> bool:
        return lease.host == self.host and lease.pid != self.pid and not pid_exists(lease.pid)

    # ----- the heartbeat -------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._beats is not None or self._closed.is_set():
                return
            self._beats = threading.Thread(target=self._beat, name="wcsync-lease-heartbeat", daemon=True)
            self._beats.start()

    def _beat(self) -> None:
        while not self._closed.wait(self.heartbeat_s):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Refresh every lease held (the heartbeat thread's step). A database error is logged: the next
        beat tries again, and a lease is stale only after LEASE_STALE_S of missed beats."""
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            try:
                lease.heartbeat()
            except Exception as error:  # never let the thread die: it keeps every lease alive
                log.warning("lease.heartbeat_failed", queue_id=str(lease.queue_id), error=str(error))

    # ----- the connection ------------------------------------------------------------------------------

    def _execute(
        self, statement: str, params: tuple[Any, ...] = (), write: bool = True
    ) -> list[tuple[Any, ...]]:
        with self._gate(write), self._lock, storage_errors(self.database):
            return self._conn.execute(statement, params)

    @contextlib.contextmanager
    def _gate(self, write: bool) -> Iterator[None]:
        if self._write_gate is None or not write:
            yield
            return
        with self._write_gate:
            yield

    def close(self) -> None:
        """Stop the heartbeat and close the connection (the leases still held go stale, or dead with the
        process). Idempotent."""
        self._closed.set()
        beats = self._beats
        if beats is not None and beats is not threading.current_thread():
            beats.join(timeout=self.heartbeat_s)
        with self._lock:
            self._conn.close()
