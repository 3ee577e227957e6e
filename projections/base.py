"""What a projection is: a name, a version of its table definitions, the topics it reads, and a function
that applies a batch of events to its tables inside the runner's transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from eventsourcing.utils import get_topic

from projections.db import Database
from projections.schema import Table

# (notification id, domain event)
Item = tuple[int, Any]


def topics_of(*classes: type) -> tuple[str, ...]:
    return tuple(get_topic(cls) for cls in classes)


class Projection(ABC):
    name: ClassVar[str]
    # Bump when a table definition or the meaning of a column changes: the next catch-up rebuilds.
    version: ClassVar[int]
    tables: ClassVar[tuple[Table, ...]]
    topics: ClassVar[tuple[str, ...]]

    @abstractmethod
    def apply(self, db: Database, suffix: str, items: Sequence[Item]) -> None:
        """Apply events (in notification order) to the tables named with ``suffix``. Must not commit."""
