"""What a projection is: a name, a version of its table definitions, the topics it reads, and a function
that applies a batch of events to its tables inside the runner's transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from infrastructure.adapters.projection_db import Database
from infrastructure.adapters.schema import BIGINT, INT, TEXT, TS, UUID_, Column, Table

# (notification id, domain event)
Item = tuple[int, Any]

# Columns that mean the same in every read model that has them, defined once.
ORG_ID = Column("org_id", TEXT, not_null=True)
STORE_URL = Column("store_url", TEXT, not_null=True)
WOO_CUSTOMER_ID = Column("woo_customer_id", BIGINT, not_null=True)
QUEUE_ID = Column("queue_id", UUID_, not_null=True)
CREATED_AT = Column("created_at", TS, not_null=True)
AGGREGATE_VERSION = Column("version", INT, not_null=True)  # the aggregate version last applied


def topics_of(*classes: type) -> tuple[str, ...]:
    return tuple(get_topic(cls) for cls in classes)


def event_classes(*aggregates: type[Aggregate]) -> list[type]:
    """Every event class the aggregates declare, in declaration order."""
    return [
        value
        for aggregate in aggregates
        for value in vars(aggregate).values()
        if isinstance(value, type)
        and issubclass(value, aggregate.Event)
        and value is not aggregate.Event
        # the library defines a Created class on every aggregate; one created by another event
        # (Customer.Registered, Store.Registered) never stores it
        and not (value.__name__ == "Created" and _created_otherwise(aggregate, value))
    ]


def _created_otherwise(aggregate: type[Aggregate], created: type) -> bool:
    """Whether the aggregate declares a created event other than ``created``."""
    return any(
        isinstance(value, type) and issubclass(value, Aggregate.Created) and value is not created
        for value in vars(aggregate).values()
    )


class Projection(ABC):
    name: ClassVar[str]
    # Bump when a table definition or the meaning of a column changes: the next catch-up rebuilds.
    version: ClassVar[int]
    tables: ClassVar[tuple[Table, ...]]
    topics: ClassVar[tuple[str, ...]]
    # Topics of events with ``records`` (SyncQueue.LinesAdded) that this projection reads only for each
    # record's "id": the runner may then hand it those events with every record trimmed to {"id": ...}.
    # A page of 100 customers is ~100 KB of JSON; holding it decoded costs several times its decoding.
    # Trimming happens only when every projection reading the topic in the same pass declares it.
    record_ids_only: ClassVar[tuple[str, ...]] = ()
    # False when apply() uses only the notification ids of its items (a projection that reads the stored
    # rows itself): it then gets a pass over the log of its own, which reads ids without event states and
    # decodes nothing, and its items are (notification id, None). Such a pass can run in parallel with the
    # others' (see ProjectionRunner._run) instead of making every event wait for its turn in one pass.
    reads_events: ClassVar[bool] = True
    # Topics this projection can also apply inside PostgreSQL, straight from the stored rows of the events
    # table (one INSERT ... SELECT a batch, the server parsing the JSON). Used only where the stored states
    # are plain JSON (no cipher, no compressor) and the backend is PostgreSQL; the runner then fetches no
    # state for them and decodes nothing, and apply() gets (notification id, None) for each such event.
    # Elsewhere apply() gets these events decoded, as any other, and must give the same rows.
    in_database_topics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        """Apply events (in notification order) to the tables named with ``suffix``. Must not commit."""
