"""The tamper-evident ledger: ``wcsync_ledger``, one row per stored event, each chained to the one before.

For every event in notification order the ledger records what was stored (aggregate id, version, topic, a
SHA-256 of the stored state bytes) and a chain hash: SHA-256 over the previous chain hash and the event's
canonical bytes. ``wcsync audit verify`` recomputes all of it from the events table: an event edited,
deleted, inserted or swapped since the ledger saw it no longer matches (infrastructure/services/audit.py).

The ledger hashes the bytes as stored: with encryption at rest on, the encrypted bytes, so no key is needed
to verify the log.

Why the projection reads the events table itself: the runner hands projections decoded events, and the
stored bytes cannot be recovered from a decoded event (AES-GCM takes a fresh nonce each time). So each batch
reads the raw rows from the ledger's own last position up to the batch's last event, in the runner's
transaction: every stored event is chained exactly once, in order, whatever its topic.

Checkpoints (``wcsync_ledger_checkpoint``): every CHECKPOINT_EVERY events and at the end of each catch-up,
the position, the chain hash there and the time, HMAC-SHA256-signed with ``WCSYNC_AUDIT_KEY`` when set. The
checkpoint table is not one of the projection's tables, so a rebuild of the ledger does not replace it: a
rebuilt ledger that disagrees with an earlier checkpoint (events changed, then the ledger rebuilt to match)
is still caught.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from domain.customer import Customer
from domain.queue import SyncQueue
from domain.store import Store
from domain.webhook import RefusedDeliveries, WebhookDelivery
from infrastructure.adapters import eventlog
from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import (
    BIGINT,
    CHECKPOINT_TABLE_NAME,
    LEDGER_TABLE_NAME,
    TEXT,
    TS,
    UUID_,
    Column,
    Table,
    as_uuid,
)
from projections.base import Item, Projection, event_classes, topics_of

CHECKPOINT_EVERY = 10_000
GENESIS = bytes(32)  # the "previous chain hash" of the first event
AUDIT_KEY_VARIABLE = "WCSYNC_AUDIT_KEY"

LEDGER_TABLE = Table(
    LEDGER_TABLE_NAME,
    (
        Column("position", BIGINT, not_null=True),  # the event's notification id
        Column("seq", BIGINT, not_null=True),  # 1, 2, 3 ...: the events chained so far, this one included
        Column("originator_id", UUID_, not_null=True),
        Column("originator_version", BIGINT, not_null=True),
        Column("topic", TEXT, not_null=True),
        Column("state_hash", TEXT, not_null=True),  # SHA-256 of the stored state bytes
        Column("event_hash", TEXT, not_null=True),  # SHA-256 of the canonical bytes (see event_hash)
        Column("chain_hash", TEXT, not_null=True),  # SHA-256(previous chain hash + event hash)
        Column("recorded_at", TS, not_null=True),
    ),
    ("position",),
)

CHECKPOINT_DDL = (
    f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE_NAME} (position BIGINT NOT NULL, chain_hash TEXT NOT NULL, "
    "events BIGINT NOT NULL, recorded_at TEXT NOT NULL, signature TEXT, "
    f"CONSTRAINT {CHECKPOINT_TABLE_NAME}_pkey PRIMARY KEY (position, chain_hash))"
)


ALL_EVENT_CLASSES = event_classes(SyncQueue, Customer, Store, WebhookDelivery, RefusedDeliveries)

_HEADER = struct.Struct(">q16sqI")


def state_hash(state: bytes) -> bytes:
    return hashlib.sha256(state).digest()


def event_hash(position: int, originator_id: UUID, version: int, topic: str, state_digest: bytes) -> bytes:
    """SHA-256 of an event's canonical bytes: position, aggregate id, version and topic in a fixed binary
    layout, then the SHA-256 of the stored state bytes (which stands for them: same strength, and the
    ledger keeps it to tell a swap from an edit)."""
    return event_hash_of_bytes(position, originator_id.bytes, version, topic, state_digest)


def event_hash_of_bytes(
    position: int, originator_id: bytes, version: int, topic: str, state_digest: bytes
) -> bytes:
    """event_hash with the aggregate id as its 16 bytes."""
    topic_bytes = topic.encode("utf-8")
    header = _HEADER.pack(position, originator_id, version, len(topic_bytes))
    return hashlib.sha256(header + topic_bytes + state_digest).digest()


def chain_hash(previous: bytes, event_digest: bytes) -> bytes:
    return hashlib.sha256(previous + event_digest).digest()


def audit_key() -> bytes | None:
    key = os.environ.get(AUDIT_KEY_VARIABLE, "")
    return key.encode("utf-8") if key else None


def sign_checkpoint(key: bytes, position: int, chain: str, events: int, recorded_at: str) -> str:
    message = f"{position}\n{chain}\n{events}\n{recorded_at}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class LedgerProjection(Projection):
    name = "ledger"
    version = 1
    tables = (LEDGER_TABLE,)
    topics = topics_of(*ALL_EVENT_CLASSES)
    # The ledger reads only notification ids from the runner (and the stored bytes itself), so the runner
    # may trim the records of these events for it.
    record_ids_only = topics_of(SyncQueue.LinesAdded, SyncQueue.LinesRefetched)
    # apply() uses only the notification ids of its items: a pass of its own that decodes nothing.
    reads_events = False

    def __init__(self) -> None:
        self._checkpoint_table_ready = False

    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        upto = max(nid for nid, _ in items)
        table = f"{LEDGER_TABLE_NAME}{suffix}"
        last = db.fetchall(f"SELECT position, chain_hash, seq FROM {table} ORDER BY position DESC LIMIT 1")
        if last:
            position, previous, count = int(last[0][0]), bytes.fromhex(last[0][1]), int(last[0][2])
        else:
            position, previous, count = 0, GENESIS, 0
        if upto <= position:
            return
        # The raw rows after the ledger's own position (hashed: PostgreSQL sent the states' SHA-256, the same
        # digest of the same stored bytes, instead of the states).
        rows, hashed = eventlog.select_for_ledger(db, position, upto)
        now = datetime.now(UTC)
        ledger_rows = []
        checkpoints: list[tuple[int, str, int]] = []
        # event_hash and chain_hash inlined (the same bytes hashed): this loop runs once per stored event.
        sha256, pack = hashlib.sha256, _HEADER.pack
        topic_bytes: dict[str, bytes] = {}
        for nid, originator_id, version, topic, stored in rows:
            oid = originator_id if type(originator_id) is UUID else as_uuid(originator_id)
            digest = bytes(stored) if hashed else sha256(stored).digest()
            encoded = topic_bytes.get(topic)
            if encoded is None:
                encoded = topic_bytes[topic] = topic.encode("utf-8")
            event_digest = sha256(pack(nid, oid.bytes, version, len(encoded)) + encoded + digest).digest()
            previous = sha256(previous + event_digest).digest()
            count += 1
            chain = previous.hex()
            ledger_rows.append(
                (nid, count, oid, version, topic, digest.hex(), event_digest.hex(), chain, now)
            )
            if count % CHECKPOINT_EVERY == 0:
                checkpoints.append((nid, chain, count))
        if not ledger_rows:
            return
        db.insert(LEDGER_TABLE, suffix, ledger_rows)
        head = eventlog.head_position(db)
        last_position = ledger_rows[-1][0]
        if last_position >= head and (not checkpoints or checkpoints[-1][0] != last_position):
            checkpoints.append((last_position, ledger_rows[-1][7], count))  # the end of a catch-up
        if checkpoints:
            self._record_checkpoints(db, checkpoints, now)

    def _record_checkpoints(
        self, db: Database, checkpoints: list[tuple[int, str, int]], now: datetime
    ) -> None:
        if not self._checkpoint_table_ready:
            db.execute(CHECKPOINT_DDL)
            self._checkpoint_table_ready = True
        key = audit_key()
        recorded_at = now.isoformat(timespec="microseconds")
        db.executemany(
            f"INSERT INTO {CHECKPOINT_TABLE_NAME} (position, chain_hash, events, recorded_at, signature) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (
                    position,
                    chain,
                    events,
                    recorded_at,
                    sign_checkpoint(key, position, chain, events, recorded_at) if key else None,
                )
                for position, chain, events in checkpoints
            ],
        )
