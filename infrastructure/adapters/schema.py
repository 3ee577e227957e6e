"""Table definitions of the read models: the one place that builds SQL for a projection table.

A table is described once (columns with a portable kind, primary key, indexes) and rendered for PostgreSQL
or SQLite. Kinds map to native types on PostgreSQL (uuid, timestamptz, jsonb, boolean) and to TEXT/INTEGER
on SQLite, where times are ISO-8601 UTC text with an offset and JSON is text.

A rebuild creates every table and index under a suffix (``woo_customers__rebuild``) and renames them on
swap, so constraint and index names are always derived from the table name plus the suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

POSTGRES = "postgres"
SQLITE = "sqlite"

# Portable column kinds.
TEXT = "text"
INT = "int"
BIGINT = "bigint"
BOOL = "bool"
UUID_ = "uuid"
TS = "ts"
JSON = "json"

_PG_TYPES = {
    TEXT: "TEXT",
    INT: "INTEGER",
    BIGINT: "BIGINT",
    BOOL: "BOOLEAN",
    UUID_: "UUID",
    TS: "TIMESTAMPTZ",
    JSON: "JSONB",
}
_SQLITE_TYPES = {
    TEXT: "TEXT",
    INT: "INTEGER",
    BIGINT: "INTEGER",
    BOOL: "BOOLEAN",
    UUID_: "TEXT",
    TS: "TEXT",
    JSON: "TEXT",
}

# The events table as eventsourcing names it: per application on PostgreSQL, fixed on SQLite. Only
# infrastructure/adapters/eventlog.py writes SQL on it.
EVENTS_TABLE = {POSTGRES: "wcsync_events", SQLITE: "stored_events"}
EVENTS_ID_COLUMN = {POSTGRES: "notification_id", SQLITE: "rowid"}

TRACKING_TABLE = "wcsync_projection_tracking"
REBUILD_SUFFIX = "__rebuild"

# The ledger projection's tables (projections/ledger.py), named here because the audit's log reader
# (adapters/eventlog.py) reads them too, and adapters import no projection.
LEDGER_TABLE_NAME = "wcsync_ledger"
CHECKPOINT_TABLE_NAME = "wcsync_ledger_checkpoint"


# ----- values of the kinds -------------------------------------------------------------------------------

# A NUL character as JSON writes it (in a stored state, in a JSON value): PostgreSQL's jsonb cannot hold one.
NUL_ESCAPE = b"\\u0000"


def as_uuid(value: Any) -> UUID:
    """A UUID_ value as a UUID, whatever form it came in (a UUID, or its text as SQLite stores it)."""
    return value if isinstance(value, UUID) else UUID(str(value))


def iso(value: datetime, timespec: str = "microseconds") -> str:
    """A TS value as ISO-8601 text in UTC with its offset. With microseconds (the default), always six
    digits: the text sorts in time order, the form SQLite's tables store. ``timespec="auto"``: microseconds
    only when there are some (datetime.isoformat's own form, the audit's output)."""
    return value.astimezone(UTC).isoformat(timespec=timespec)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    not_null: bool = False
    default: str | None = None  # an SQL literal valid on both backends


@dataclass(frozen=True)
class Index:
    name: str  # the final name; a rebuild's copy carries the table's suffix
    columns: str  # an SQL column list, e.g. "org_id, created_at DESC"
    unique: bool = False
    where: str = ""  # a partial index's predicate


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(c.kind for c in self.columns)

    def pkey_name(self, suffix: str = "") -> str:
        return f"{self.name}{suffix}_pkey"

    def create_table(self, dialect: str, suffix: str = "") -> str:
        types = _PG_TYPES if dialect == POSTGRES else _SQLITE_TYPES
        parts = []
        for column in self.columns:
            text = f"{column.name} {types[column.kind]}"
            if column.not_null:
                text += " NOT NULL"
            if column.default is not None:
                text += f" DEFAULT {column.default}"
            parts.append(text)
        parts.append(f"CONSTRAINT {self.pkey_name(suffix)} PRIMARY KEY ({', '.join(self.primary_key)})")
        statement = f"CREATE TABLE IF NOT EXISTS {self.name}{suffix} (\n  " + ",\n  ".join(parts) + "\n)"
        if dialect == POSTGRES and suffix:
            # A copy being filled is left alone by autovacuum (nothing reads it; its statistics come once it
            # is full). A worker busy on it when the swap wants its lock held the swap up for a second,
            # the deadlock timeout after which PostgreSQL cancels the worker. Reset by swap_in.
            statement += " WITH (autovacuum_enabled = off)"
        return statement

    def create_indexes(self, suffix: str = "", table_suffix: str | None = None) -> list[str]:
        """The indexes named with ``suffix``, on the table named with ``table_suffix`` (default: the same)."""
        on = self.name + (suffix if table_suffix is None else table_suffix)
        return [
            f"CREATE {'UNIQUE ' if index.unique else ''}INDEX IF NOT EXISTS {index.name}{suffix} "
            f"ON {on} ({index.columns})" + (f" WHERE {index.where}" if index.where else "")
            for index in self.indexes
        ]

    def drop(self, suffix: str = "") -> str:
        return f"DROP TABLE IF EXISTS {self.name}{suffix}"

    def swap_in(self, dialect: str, suffix: str) -> list[str]:
        """Statements that replace the live table by its rebuilt copy (run in one transaction).

        A rebuilt copy has only its primary key while it fills (index upkeep row by row costs more than
        building the index once). On PostgreSQL its other indexes are built when it is full, under the
        copy's names (create_indexes(suffix), before the swap), and renamed here; SQLite cannot rename an
        index, so they are built here under their final names."""
        statements = [self.drop(), f"ALTER TABLE {self.name}{suffix} RENAME TO {self.name}"]
        if dialect != POSTGRES:
            return statements + self.create_indexes()
        statements.append(f"ALTER TABLE {self.name} RESET (autovacuum_enabled)")
        # The primary key's index keeps the copy's name, as do indexes built before the swap.
        statements.append(f"ALTER INDEX {self.pkey_name(suffix)} RENAME TO {self.pkey_name()}")
        for index, create in zip(self.indexes, self.create_indexes(suffix, table_suffix=""), strict=True):
            statements.append(create)  # a no-op when built before the swap
            statements.append(f"ALTER INDEX {index.name}{suffix} RENAME TO {index.name}")
        return statements

    def upsert(self, suffix: str = "") -> str:
        """INSERT ... ON CONFLICT (pk) DO UPDATE of every other column, with %s placeholders."""
        names = self.column_names
        updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n not in self.primary_key)
        return (
            f"INSERT INTO {self.name}{suffix} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) "
            f"ON CONFLICT ({', '.join(self.primary_key)}) DO UPDATE SET {updates}"
        )

    def select(self, suffix: str = "") -> str:
        return f"SELECT {', '.join(self.column_names)} FROM {self.name}{suffix}"


TRACKING = Table(
    TRACKING_TABLE,
    (
        Column("name", TEXT, not_null=True),
        Column("position", BIGINT, not_null=True, default="0"),
        Column("version", INT, not_null=True),
        Column("updated_at", TS),
    ),
    ("name",),
)

QUARANTINE_TABLE = "wcsync_projection_quarantine"

# The events a projection could not apply and walked past (see projections/quarantine.py): one row per
# (projection, position), the projection named as it is tracked (a rebuild's copy records under
# ``<name>__rebuild``; the swap makes its rows the projection's). What the event was, never what it held.
QUARANTINE = Table(
    QUARANTINE_TABLE,
    (
        Column("projection", TEXT, not_null=True),
        Column("position", BIGINT, not_null=True),  # the event's notification id
        Column("originator_id", UUID_),
        Column("originator_version", BIGINT),
        Column("topic", TEXT, not_null=True),
        Column("queue_id", UUID_),  # the queue whose activity log shows it (a customer's event: its queue's)
        Column("reason", TEXT, not_null=True),  # exception type and first line, quoted values elided
        Column("event_at", TS),  # the event's own time, when it could be decoded
        Column("quarantined_at", TS, not_null=True),
    ),
    ("projection", "position"),
    (Index("wcsync_projection_quarantine_queue_idx", "queue_id"),),
)
