"""The one root of wcsync's errors, and the domain's own: each names the queue or line and what to do.

Every error wcsync raises on purpose is a ``WcsyncError``. Its class says, once, what it means to each
interface: the CLI's exit code, the HTTP API's status and error code. The CLI (``cli.main.main``) and the
HTTP API (``infrastructure.api.http._as_api_error``) read these attributes; no other table maps errors.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

# The CLI's exit codes (README, "Exit codes").
EXIT_OK = 0
EXIT_UNFINISHED = 1  # finished with failed lines, or action required
EXIT_USAGE = 2  # usage, configuration, an unknown queue (or another org's)
EXIT_STORE = 3  # the store unreachable or the credentials refused
EXIT_DATABASE = 4  # the database unavailable, not migrated, full or missing
EXIT_INTERNAL = 70  # an error nobody foresaw (sysexits' EX_SOFTWARE): the log has the traceback
EXIT_INTERRUPTED = 130


class WcsyncError(Exception):
    """wcsync could not do what was asked; the message says why and what to do."""

    exit_code: int = EXIT_USAGE
    http_status: int = 500
    error_code: str = "sync_error"

    def http_message(self) -> str:
        """The message of the HTTP API's error answer."""
        return str(self)

    def http_details(self) -> dict[str, Any]:
        """Extra keys of the HTTP API's error answer."""
        return {}


class SyncError(WcsyncError):
    """A sync command could not be carried out: the queue's state forbids it (already done, nothing to
    retry, another writer working on it)."""

    exit_code = EXIT_USAGE
    http_status = 409
    error_code = "invalid_state"


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


class StoreNotFoundError(WcsyncError):
    """No such store in this org: never registered, removed, or another org's (the same answer for each)."""

    exit_code = EXIT_USAGE
    http_status = 404
    error_code = "store_not_found"

    def __init__(self, store_id: UUID, org_id: str) -> None:
        super().__init__(f"no store {store_id} in org {org_id!r}")  # worded as QueueNotFoundError
        self.store_id = store_id
        self.org_id = org_id


class StoreExistsError(WcsyncError):
    """The store is registered in this org already (and not removed): rotate its credentials instead."""

    exit_code = EXIT_USAGE
    http_status = 409
    error_code = "store_exists"

    def __init__(self, store_id: UUID, org_id: str, url: str) -> None:
        super().__init__(f"store {url} is already registered in org {org_id} as {store_id}")
        self.store_id = store_id
        self.org_id = org_id
        self.url = url
