"""The sync queue: one run of mirroring a store's customers, as an event-sourced aggregate.

Pure domain: stdlib and eventsourcing.domain only. Time comes from the events' timestamps, ids from the
caller.

Why events carry many lines: eventsourcing appends ~12k events/s to PostgreSQL in saves of 50 and ~1k/s one
event per save. One event per line and outcome (plus the customer's own) would cap a 100,000-customer sync
far above its budget, so a page of the store is one ``LinesAdded`` and a batch's outcomes are one
``LinesDone`` (and, when some fail, one ``LinesFailed``). Every line is still named in the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.errors import (
    DuplicateLineError,
    LineAlreadyFinishedError,
    NothingToRetryError,
    QueueFinishedError,
    UnknownLineError,
)
from domain.lines import CANCELLED, DONE, DRAFT, FAILED, Line, LineBook
from domain.queue_terms import (
    Q_DONE,
    Q_DRAFT,
    Q_FAILED,
    Q_PROCESSING,
    RESULTS,
    QueueOptions,
)
from domain.status import progress as share_finished


class SyncQueue(Aggregate):
    """A queue of lines, one per WooCommerce customer, with the state machine of the design note:

    queue: draft -> processing -> done | failed (+ is_action_required); line: draft -> done | failed | cancelled.
    """

    class_version = 1

    class Event(Aggregate.Event):
        class_version = 1

    class Created(Event, Aggregate.Created):
        org_id: str
        queue_name: str
        store_url: str
        options: dict[str, Any]
        started_by: str

    class ProcessingStarted(Event):
        """A run began. Version 2 added ``log_position`` (a version 1 event reads as one with None)."""

        class_version = 2

        mode: str  # start | resume | retry
        # The event log's position (its last notification id) when the run began, before it read any
        # customer: a customer with no event after it is, after the run, as the run left it. A later scan
        # whose answer for a page is this run's byte for byte checks only the customers with an event past
        # it (SyncEngine's known pages). None when not known (version 1 events).
        log_position: int | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["log_position"] = None

        def apply(self, aggregate: Any) -> None:
            aggregate.state = Q_PROCESSING
            aggregate.process_count += 1
            aggregate.last_process_date = self.timestamp

    class LinesAdded(Event):
        """A page's customers as lines. Version 2 added ``processed`` and ``body_digest`` (a version 1
        event reads as one with none of either); version 3 ``answers`` (None in an older event)."""

        class_version = 3

        page: int | None  # the store's page number; None when lines come from a reconciliation
        records: list[dict[str, Any]]  # the customers as fetched, to be processed
        # [customer id, digest] of customers fetched exactly as last synced: their lines are added done
        # ("unchanged") at once. The record is not stored again: the digest names it in the customer's
        # own history. A re-sync of an unchanged store so writes ids, not whole records.
        unchanged: list[list[Any]]
        # [customer id, digest] of customers fetched and processed in the same save as this event: their
        # lines are added draft, as ``records``' are, and the LinesDone/LinesFailed saved with it finish
        # them. The record is not stored here: it is in the customer's own event of that save (or was not
        # stored at all, when unchanged or failed). A first sync so writes each record once.
        processed: list[list[Any]]
        # SHA-256 (hex) of the store's answer for this page, byte for byte, when every customer on it is a
        # line of this event: a later scan whose page is the same bytes read the same customers
        # (SyncEngine's known pages). None otherwise, and for a reconciliation.
        body_digest: str | None
        # With ``body_digest``: base64 of each line's answer digest, the first 16 bytes of the SHA-256 of
        # its customer's bytes in that answer, in the order of ``processed`` then ``unchanged``. A later
        # scan whose answer changed reads only the customers whose bytes did (SyncEngine's partly known
        # pages). None when the answer could not be cut into its customers, and in older events.
        answers: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("unchanged", [])
            state["processed"] = []
            state["body_digest"] = None

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["answers"] = None

    class LinesRefetched(Event):
        records: list[dict[str, Any]]  # failed lines' customers fetched again for a retry

    class LinesRejected(Event):
        """Customers whose records the boundary refused (domain.validation.check_record): each is a line
        that fails at once (attempt 1). The log keeps a bounded excerpt and the digest of each record, not
        the record: a store can send anything, of any size."""

        page: int | None  # the store's page it came on (None: a reconciliation or a retry)
        rejected: list[dict[str, Any]]  # {"id", "error", "excerpt", "digest", "bytes"}

        def apply(self, aggregate: Any) -> None:
            for entry in self.rejected:
                aggregate.lines.add(entry["id"])
                aggregate.lines.fail(entry["id"], entry["error"], 1, self.timestamp)

    class LinesDone(Event):
        results: dict[str, list[int]]  # result -> customer ids

    class LinesFailed(Event):
        failures: list[dict[str, Any]]  # {"id", "error", "attempt"}

        def apply(self, aggregate: Any) -> None:
            for entry in self.failures:
                aggregate.lines.fail(entry["id"], entry["error"], entry["attempt"], self.timestamp)

    class LinesCancelled(Event):
        ids: list[int]
        reason: str

    class FetchFinished(Event):
        pages: int
        total: int  # distinct customers recorded by the fetch
        complete: bool  # False when the scan was cut short (hard cap, store repeating itself)

    class FetchFailed(Event):
        next_page: int
        error: str

    class StoreIncident(Event):
        activity_type: str
        status: str
        message: str
        details: dict[str, Any]

    class RetryRequested(Event):
        ids: list[int]
        requested_by: str

    class ActionRequired(Event):
        reason: str

    class ForcedDone(Event):
        reason: str
        forced_by: str
        cancelled: list[int]

    class Finished(Event):
        state: str  # done | failed

    @event(Created)
    def __init__(
        self, org_id: str, queue_name: str, store_url: str, options: dict[str, Any], started_by: str
    ) -> None:
        self.org_id = org_id
        self.queue_name = queue_name
        self.store_url = store_url
        self.options = dict(options)
        self.started_by = started_by
        self.state = Q_DRAFT
        self.lines = LineBook()
        self.process_count = 0
        self.is_action_required = False
        self.action_required_reason: str | None = None
        self.last_process_date: datetime | None = None
        self.pages_recorded = 0
        self.fetch_finished = False
        self.fetch_complete = False
        self.forced_done_reason: str | None = None

    # ----- reading -------------------------------------------------------------------------------------

    @property
    def queue_options(self) -> QueueOptions:
        return QueueOptions.from_dict(self.options)

    @property
    def next_page(self) -> int:
        """The first page of the store not yet recorded: where a resumed fetch starts."""
        return self.pages_recorded + 1

    @property
    def progress(self) -> float:
        """Percent of lines finished (domain.status.progress); with no lines, 100% once the fetch finished."""
        finished = self.lines.count(DONE) + self.lines.count(CANCELLED)
        return share_finished(self.lines.total, finished, done_when_empty=self.fetch_finished)

    def draft_ids(self) -> Iterator[int]:
        return self.lines.ids_in_state(DRAFT)

    def retryable_ids(self) -> list[int]:
        max_retries = self.queue_options.max_retries
        return [cid for cid, line in self.lines.items_in_state(FAILED) if line.attempts < max_retries]

    def exhausted_ids(self) -> list[int]:
        max_retries = self.queue_options.max_retries
        return [cid for cid, line in self.lines.items_in_state(FAILED) if line.attempts >= max_retries]

    # ----- commands ------------------------------------------------------------------------------------

    def start_processing(self, mode: str, log_position: int | None = None) -> None:
        self._check_open()
        self.trigger_event(self.ProcessingStarted, mode=mode, log_position=log_position)

    def add_lines(
        self,
        records: list[dict[str, Any]],
        page: int | None,
        unchanged: Iterable[tuple[int, str]] = (),
        processed: Iterable[tuple[int, str]] = (),
        body_digest: str | None = None,
        answers: str | None = None,
    ) -> None:
        """Record customers as fetched: ``records`` to process, ``unchanged`` (id, digest) pairs of
        customers identical to their last sync, and ``processed`` (id, digest) pairs of customers the
        caller processes and saves together with this event (their records go in their own events, see
        LinesAdded). ``body_digest``: the page's answer's digest, when every customer on it is a line
        here; ``answers``: its customers' answer digests (LinesAdded.answers), with it only. Every id must
        be a positive integer (see validation)."""
        self._check_open()
        unchanged_rows = [[cid, digest] for cid, digest in unchanged]
        processed_rows = [[cid, digest] for cid, digest in processed]
        lines = self.lines
        ids = [record["id"] for record in records]
        ids += [row[0] for row in unchanged_rows]
        ids += [row[0] for row in processed_rows]
        if len(set(ids)) != len(ids) or lines.has_any(ids):
            seen: set[int] = set()
            for cid in ids:
                if cid in lines or cid in seen:
                    raise DuplicateLineError(self.id, cid)
                seen.add(cid)
        if page is not None and page != self.pages_recorded + 1:
            raise ValueError(f"page {page} recorded out of order: expected page {self.pages_recorded + 1}")
        self._lines_added(
            page=page,
            records=records,
            unchanged=unchanged_rows,
            processed=processed_rows,
            body_digest=body_digest,
            answers=answers if body_digest is not None else None,
        )

    @event(LinesAdded)
    def _lines_added(
        self,
        page: int | None,
        records: list[dict[str, Any]],
        unchanged: list[list[Any]],
        processed: list[list[Any]],
        body_digest: str | None,
        answers: str | None,
    ) -> None:
        lines = self.lines
        drafts = [record["id"] for record in records]
        drafts += [cid for cid, _digest in processed]
        done = [cid for cid, _digest in unchanged]
        # A page above the lines so far goes in at C speed, in id order; any other one line by one.
        if not lines.add_page(drafts, done, "unchanged"):
            for cid in drafts:
                lines.add(cid)
            for cid in done:
                lines.add(cid)
                lines.finish(cid, DONE, result="unchanged")
        if page is not None:
            self.pages_recorded = page

    def reject_lines(self, rejected: Iterable[Mapping[str, Any]], page: int | None) -> None:
        """Record customers whose records were refused at the boundary as lines failed at once."""
        self._check_open()
        entries = [dict(entry) for entry in rejected]
        seen: set[int] = set()
        for entry in entries:
            cid = entry["id"]
            if cid in self.lines or cid in seen:
                raise DuplicateLineError(self.id, cid)
            seen.add(cid)
        if entries:
            self.trigger_event(self.LinesRejected, page=page, rejected=entries)

    def refetch_lines(self, records: list[dict[str, Any]]) -> None:
        """Record customers fetched again (for a retry) for lines that are back to draft."""
        self._check_open()
        for record in records:
            self._check_unfinished(record["id"])
        if records:
            self._lines_refetched(records=records)

    @event(LinesRefetched)
    def _lines_refetched(self, records: list[dict[str, Any]]) -> None:
        pass

    def finish_lines(self, results: Mapping[str, Iterable[int]]) -> None:
        self._check_open()
        clean: dict[str, list[int]] = {}
        for result, ids in results.items():
            if result not in RESULTS:
                raise ValueError(f"unknown line result {result!r}")
            id_list = list(ids)
            for cid in id_list:
                self._check_unfinished(cid)
            if id_list:
                clean[result] = id_list
        if clean:
            self._lines_done(results=clean)

    @event(LinesDone)
    def _lines_done(self, results: dict[str, list[int]]) -> None:
        for result, ids in results.items():
            for cid in ids:
                self.lines.finish(cid, DONE, result=result)

    def fail_lines(self, failures: Mapping[int, str]) -> None:
        """Fail lines with their error; each failure counts as one attempt."""
        self._check_open()
        entries = []
        for cid, error in failures.items():
            line = self._check_unfinished(cid)
            entries.append({"id": cid, "error": error, "attempt": line.attempts + 1})
        if entries:
            self.trigger_event(self.LinesFailed, failures=entries)

    def cancel_lines(self, ids: Iterable[int], reason: str) -> None:
        self._check_open()
        id_list = list(ids)
        for cid in id_list:
            self._check_unfinished(cid)
        if id_list:
            self._lines_cancelled(ids=id_list, reason=reason)

    @event(LinesCancelled)
    def _lines_cancelled(self, ids: list[int], reason: str) -> None:
        for cid in ids:
            self.lines.finish(cid, CANCELLED, error=reason)

    def finish_fetch(self, pages: int, total: int, complete: bool) -> None:
        self._check_open()
        self._fetch_finished(pages=pages, total=total, complete=complete)

    @event(FetchFinished)
    def _fetch_finished(self, pages: int, total: int, complete: bool) -> None:
        self.fetch_finished = True
        self.fetch_complete = complete

    def fail_fetch(self, error: str) -> None:
        self._fetch_failed(next_page=self.next_page, error=error)

    @event(FetchFailed)
    def _fetch_failed(self, next_page: int, error: str) -> None:
        self.state = Q_FAILED

    def record_incident(self, activity_type: str, status: str, message: str, details: dict[str, Any]) -> None:
        self._store_incident(activity_type=activity_type, status=status, message=message, details=details)

    @event(StoreIncident)
    def _store_incident(self, activity_type: str, status: str, message: str, details: dict[str, Any]) -> None:
        pass

    def request_retry(self, requested_by: str) -> list[int]:
        """Put failed lines under max_retries back to draft; returns their ids."""
        self._check_open()
        ids = self.retryable_ids()
        if not ids:
            exhausted = len(self.exhausted_ids())
            raise NothingToRetryError(self.id, exhausted, self.queue_options.max_retries)
        self._retry_requested(ids=ids, requested_by=requested_by)
        return ids

    @event(RetryRequested)
    def _retry_requested(self, ids: list[int], requested_by: str) -> None:
        for cid in ids:
            self.lines.reopen(cid)
        self.state = Q_PROCESSING

    def require_action(self, reason: str) -> None:
        if self.is_action_required and self.action_required_reason == reason:
            return
        self._action_required(reason=reason)

    @event(ActionRequired)
    def _action_required(self, reason: str) -> None:
        self.is_action_required = True
        self.action_required_reason = reason

    def force_done(self, reason: str, forced_by: str) -> list[int]:
        self._check_open()
        if not reason.strip():
            raise ValueError("force-done needs a reason")
        cancelled = list(self.lines.ids_in_state(DRAFT)) + list(self.lines.ids_in_state(FAILED))
        self._forced_done(reason=reason, forced_by=forced_by, cancelled=cancelled)
        return cancelled

    @event(ForcedDone)
    def _forced_done(self, reason: str, forced_by: str, cancelled: list[int]) -> None:
        for cid in cancelled:
            self.lines.finish(cid, CANCELLED, error=f"forced done: {reason}")
        self.state = Q_DONE
        self.forced_done_reason = reason
        self.is_action_required = False

    def finish(self) -> str:
        """Close a processing run: done when nothing failed, else failed (and action-required when a line
        has used all its attempts)."""
        if self.lines.count(DRAFT):
            raise ValueError(f"{self.lines.count(DRAFT)} lines are still draft; process them first")
        exhausted = self.exhausted_ids()
        if exhausted:
            max_retries = self.queue_options.max_retries
            self.require_action(
                f"{len(exhausted)} line(s) failed {max_retries} times; fix the customers in WooCommerce "
                "and force-done the queue, or investigate the errors with `wcsync failed`"
            )
        state = Q_FAILED if self.lines.count(FAILED) else Q_DONE
        self._finished(state=state)
        return state

    @event(Finished)
    def _finished(self, state: str) -> None:
        self.state = state

    # ----- guards --------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state == Q_DONE:
            raise QueueFinishedError(self.id, self.state)

    def _check_unfinished(self, customer_id: int) -> Line:
        line = self.lines.get(customer_id)
        if line is None:
            raise UnknownLineError(self.id, customer_id)
        if line.state != DRAFT:
            raise LineAlreadyFinishedError(self.id, customer_id, line.state)
        return line

    # ----- status --------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {
            "total": self.lines.total,
            "draft": self.lines.count(DRAFT),
            "done": self.lines.count(DONE),
            "failed": self.lines.count(FAILED),
            "cancelled": self.lines.count(CANCELLED),
            "created": self.lines.result_count("created"),
            "updated": self.lines.result_count("updated"),
            "unchanged": self.lines.result_count("unchanged"),
        }
