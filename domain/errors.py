"""Domain errors: each names the queue or line and what to do."""

from __future__ import annotations

from uuid import UUID


class SyncError(Exception):
    """A sync command could not be carried out."""


class QueueFinishedError(SyncError):
    def __init__(self, queue_id: UUID, state: str) -> None:
        super().__init__(f"queue {queue_id} is already {state}; start a new sync instead")


class DuplicateLineError(SyncError):
    def __init__(self, queue_id: UUID, customer_id: int) -> None:
        super().__init__(f"customer {customer_id} is already a line of queue {queue_id}")
        self.customer_id = customer_id


class UnknownLineError(SyncError):
    def __init__(self, queue_id: UUID, customer_id: int) -> None:
        super().__init__(f"customer {customer_id} is not a line of queue {queue_id}")


class LineAlreadyFinishedError(SyncError):
    def __init__(self, queue_id: UUID, customer_id: int, state: str) -> None:
        super().__init__(f"line for customer {customer_id} of queue {queue_id} is already {state}")


class NothingToRetryError(SyncError):
    def __init__(self, queue_id: UUID, exhausted: int, max_retries: int) -> None:
        if exhausted:
            message = (
                f"queue {queue_id}: {exhausted} failed line(s) have used all {max_retries} attempts; "
                "fix them in WooCommerce and use force-done, or start a new sync"
            )
        else:
            message = f"queue {queue_id} has no failed lines to retry"
        super().__init__(message)
        self.exhausted = exhausted
