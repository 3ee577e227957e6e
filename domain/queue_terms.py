"""The sync queue's terms that need no aggregate: its options, its states and the results of its lines.

What a command reads before it has any use for the event-sourcing library (a `wcsync start` sends its first
requests meanwhile, infrastructure.adapters.woocommerce.ScanAhead); domain.queue, the aggregate, uses them
and names them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from domain import bounds

# Queue states.
Q_DRAFT = "draft"
Q_PROCESSING = "processing"
Q_DONE = "done"
Q_FAILED = "failed"

RESULTS = ("created", "updated", "unchanged")


@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = 50
    batch_delay_ms: int = 0
    max_retries: int = 3
    per_page: int = bounds.MAX_PER_PAGE
    role: str = "customer"

    def __post_init__(self) -> None:
        """Every field within domain.bounds (a BoundError, a ValueError, names the field)."""
        bounds.BATCH_SIZE.check(self.batch_size)
        bounds.BATCH_DELAY_MS.check(self.batch_delay_ms)
        bounds.MAX_RETRIES.check(self.max_retries)
        bounds.PER_PAGE.check(self.per_page)
        object.__setattr__(self, "role", bounds.check_role(self.role))

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "batch_delay_ms": self.batch_delay_ms,
            "max_retries": self.max_retries,
            "per_page": self.per_page,
            "role": self.role,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueueOptions:
        """The options a queue was created with, as stored in its Created event. Values an older version
        let through are brought within today's bounds rather than refused: a queue stays resumable."""
        default = cls()
        role = data.get("role", default.role)
        try:
            role = bounds.check_role(role)
        except bounds.BoundError:
            role = default.role
        return cls(
            batch_size=bounds.BATCH_SIZE.clamp(data.get("batch_size"), default.batch_size),
            batch_delay_ms=bounds.BATCH_DELAY_MS.clamp(data.get("batch_delay_ms"), default.batch_delay_ms),
            max_retries=bounds.MAX_RETRIES.clamp(data.get("max_retries"), default.max_retries),
            per_page=bounds.PER_PAGE.clamp(data.get("per_page"), default.per_page),
            role=role,
        )
