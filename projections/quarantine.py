"""Events a projection could not apply, set aside so that it moves on (``wcsync_projection_quarantine``).

An event that makes a projection's ``apply`` raise a data error (a value its table cannot hold, a field of
an unexpected type, a bug that only this event's content reaches) would otherwise stop that projection for
good, and with it every org's read models. The runner applies such a batch again event by event under
savepoints (projections/runner.py) and quarantines just the events that still fail: a row here, written in
the same transaction that moves the projection's position past the event.

A row says which event it was and why, never what the event held: the reason is the exception's type and
first line, with quoted values elided (drivers quote the value they refused), bounded in length.

Errors of the database or the connection are not the event's fault: they are never quarantined (the runner
raises or retries them as before). ``wcsync projections rebuild`` replays the log into a fresh copy whose
quarantine starts empty, so events that a fix in code now applies are healed by it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeGuard
from uuid import UUID

from infrastructure.adapters.projection_db import Database, iso
from infrastructure.adapters.schema import QUARANTINE, QUARANTINE_TABLE, TEXT, UUID_
from infrastructure.support.errors import first_line, loaded_errors

if TYPE_CHECKING:
    import psycopg

ACTIVITY_TYPE = "projection_quarantined"
MAX_REASON_CHARS = 200
# SQLSTATE classes of errors caused by the values written: data exceptions, integrity violations. Any
# other class from the server (an undefined table, a lock, the disk) is the database's, not the event's.
_DATA_SQLSTATE_CLASSES = frozenset({"22", "23"})
# A quoted literal: its quote opens after no word character and closes before none (so "can't" is no quote).
_QUOTED = re.compile(r"""(?<!\w)(["'])(?:(?!\1).)*\1(?!\w)""")
_COLUMNS = (
    "projection",
    "position",
    "originator_id",
    "originator_version",
    "topic",
    "queue_id",
    "reason",
    "event_at",
    "quarantined_at",
)


@dataclass(frozen=True)
class Quarantined:
    """One event set aside by one projection (``projection``: its tracking name)."""

    projection: str
    position: int
    originator_id: UUID | None
    originator_version: int | None
    topic: str
    queue_id: UUID | None
    reason: str
    event_at: datetime | None
    quarantined_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "position": self.position,
            "originatorId": None if self.originator_id is None else str(self.originator_id),
            "originatorVersion": self.originator_version,
            "topic": self.topic,
            "queueId": None if self.queue_id is None else str(self.queue_id),
            "reason": self.reason,
            "eventAt": None if self.event_at is None else iso(self.event_at),
            "quarantinedAt": iso(self.quarantined_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quarantined:
        """The row again from its ``as_dict`` (the form a projection-worker process hands its parent). Times
        come back in UTC: the same moments."""
        return cls(
            projection=data["projection"],
            position=data["position"],
            originator_id=_uuid(data["originatorId"]),
            originator_version=data["originatorVersion"],
            topic=data["topic"],
            queue_id=_uuid(data["queueId"]),
            reason=data["reason"],
            event_at=None if data["eventAt"] is None else datetime.fromisoformat(data["eventAt"]),
            quarantined_at=datetime.fromisoformat(data["quarantinedAt"]),
        )


def _uuid(text: str | None) -> UUID | None:
    return None if text is None else UUID(text)


def _is_psycopg_error(error: BaseException) -> TypeGuard[psycopg.Error]:
    """Only once psycopg is loaded (PostgreSQL): a command on SQLite never imports it."""
    return isinstance(error, loaded_errors("psycopg:Error"))


def quarantinable(error: BaseException) -> bool:
    """Is this error the event's (quarantine it) rather than the database's or the connection's (raise)?
    The caller has already let transient_errors() through (projections/runner.py)."""
    if not isinstance(error, Exception) or isinstance(error, MemoryError):
        return False
    if _is_psycopg_error(error):
        # No SQLSTATE: refused on this side, while adapting a value ("cannot adapt type").
        return error.sqlstate is None or error.sqlstate[:2] in _DATA_SQLSTATE_CLASSES
    if isinstance(error, sqlite3.Error):
        if isinstance(error, sqlite3.IntegrityError | sqlite3.DataError):
            return True
        # A value of a type SQLite cannot bind; other programming errors (a closed database) are not data.
        return isinstance(error, sqlite3.ProgrammingError | sqlite3.InterfaceError) and "binding" in str(
            error
        )
    return True


def reason(error: BaseException) -> str:
    """Why, in one bounded line: the exception's type and first line, quoted values elided."""
    message = first_line(error)
    if _is_psycopg_error(error) and error.diag.message_primary:
        message = error.diag.message_primary  # without DETAIL / CONTEXT, which quote the row
    message = _QUOTED.sub(lambda match: f"{match.group(1)}…{match.group(1)}", message)
    name = type(error).__name__
    text = name if message in ("", name) else f"{name}: {message}"
    # Printable only: a NUL or a lone surrogate would not even be stored.
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def record(db: Database, rows: Sequence[Quarantined]) -> None:
    """Write the rows (in the runner's transaction); a second quarantine of the same event replaces it."""
    encode = db.encoder(QUARANTINE.kinds)
    db.executemany(QUARANTINE.upsert(), [encode([getattr(row, c) for c in _COLUMNS]) for row in rows])


def exists(db: Database) -> bool:
    """Whether the table exists (a database migrated by an older wcsync has none until the next migrate)."""
    return db.table_exists(QUARANTINE_TABLE)


def counts(db: Database, names: Sequence[str]) -> dict[str, int]:
    """projection -> number of events it has set aside, for the projections named (absent: none)."""
    result: dict[str, int] = {}
    for condition, params in db.in_clause("projection", list(names), TEXT):
        for name, count in db.fetchall(
            f"SELECT projection, COUNT(*) FROM {QUARANTINE_TABLE} WHERE {condition} GROUP BY projection",
            params,
        ):
            result[str(name)] = int(count)
    return result


def listed(db: Database, names: Sequence[str], limit: int) -> list[Quarantined]:
    """The events the projections named have set aside, by projection and position (the first ``limit``)."""
    found: list[Quarantined] = []
    for condition, params in db.in_clause("projection", list(names), TEXT):
        found += _rows(db, condition, [*params, int(limit)], "ORDER BY projection, position LIMIT %s")
    found.sort(key=lambda row: (row.projection, row.position))
    return found[:limit]


def of_queue(
    db: Database, queue_table: str, org_id: str, queue_id: UUID, names: Sequence[str], limit: int
) -> list[Quarantined]:
    """The events of one queue (its own, and its customers' changes) that the projections named have set
    aside, in the order of the events. Only while the queue belongs to ``org_id``: the queue table says so."""
    found: list[Quarantined] = []
    for condition, params in db.in_clause("projection", list(names), TEXT):
        found += _rows(
            db,
            f"queue_id = %s AND {condition} AND EXISTS "
            f"(SELECT 1 FROM {queue_table} WHERE id = %s AND org_id = %s)",
            [db.value(UUID_, queue_id), *params, db.value(UUID_, queue_id), org_id, int(limit)],
            "ORDER BY position, projection LIMIT %s",
        )
    found.sort(key=lambda row: (row.position, row.projection))
    return found[:limit]


def _rows(db: Database, where: str, params: list[Any], tail: str) -> list[Quarantined]:
    kinds = {c.name: c.kind for c in QUARANTINE.columns}
    decode = db.decoder([kinds[c] for c in _COLUMNS])
    statement = f"SELECT {', '.join(_COLUMNS)} FROM {QUARANTINE_TABLE} WHERE {where} {tail}"
    rows = []
    for values in db.fetchall(statement, params):
        row = dict(zip(_COLUMNS, decode(values), strict=True))
        row["position"] = int(row["position"])
        if row["originator_version"] is not None:
            row["originator_version"] = int(row["originator_version"])
        rows.append(Quarantined(**row))
    return rows


__all__ = [
    "ACTIVITY_TYPE",
    "Quarantined",
    "counts",
    "exists",
    "listed",
    "of_queue",
    "quarantinable",
    "reason",
    "record",
]
