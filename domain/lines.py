"""The lines of a queue, kept compact: a queue of 100,000 lines must load (from a snapshot) in well under
a second and stay small in memory, so a line holds its state and outcome, never the customer record (that
lives in the ``LinesAdded`` events and is read back only for the lines still to process)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

DRAFT = "draft"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
LINE_STATES = (DRAFT, DONE, FAILED, CANCELLED)


class Line:
    __slots__ = ("attempts", "error", "error_at", "result", "state")

    def __init__(
        self,
        state: str = DRAFT,
        result: str | None = None,
        attempts: int = 0,
        error: str | None = None,
        error_at: datetime | None = None,
    ) -> None:
        self.state = state
        self.result = result
        self.attempts = attempts
        self.error = error
        self.error_at = error_at

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Line) and self.as_row() == other.as_row()

    def __hash__(self) -> int:  # pragma: no cover - lines are not used as keys
        return hash(self.as_row())

    def __repr__(self) -> str:
        return f"Line({self.state!r}, result={self.result!r}, attempts={self.attempts}, error={self.error!r})"

    def as_row(self) -> tuple[Any, ...]:
        return (self.state, self.result, self.attempts, self.error, self.error_at)


class LineBook:
    """Lines by WooCommerce customer id, with counts kept as lines change state."""

    def __init__(self) -> None:
        self._lines: dict[int, Line] = {}
        self._states: Counter[str] = Counter()
        self._results: Counter[str] = Counter()

    def __contains__(self, customer_id: object) -> bool:
        return customer_id in self._lines

    def __len__(self) -> int:
        return len(self._lines)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineBook) and self._lines == other._lines

    def __hash__(self) -> int:  # pragma: no cover
        return id(self)

    @property
    def total(self) -> int:
        return len(self._lines)

    def count(self, state: str) -> int:
        return self._states[state]

    def result_count(self, result: str) -> int:
        return self._results[result]

    def get(self, customer_id: int) -> Line | None:
        return self._lines.get(customer_id)

    def add(self, customer_id: int) -> None:
        self._lines[customer_id] = Line()
        self._states[DRAFT] += 1

    def finish(
        self, customer_id: int, state: str, result: str | None = None, error: str | None = None
    ) -> None:
        line = self._lines[customer_id]
        self._states[line.state] -= 1
        self._states[state] += 1
        line.state = state
        if result is not None:
            line.result = result
            self._results[result] += 1
        if error is not None:
            line.error = error

    def fail(self, customer_id: int, error: str, attempt: int, at: datetime) -> None:
        line = self._lines[customer_id]
        self._states[line.state] -= 1
        self._states[FAILED] += 1
        line.state = FAILED
        line.error = error
        line.attempts = attempt
        line.error_at = at

    def reopen(self, customer_id: int) -> None:
        line = self._lines[customer_id]
        self._states[line.state] -= 1
        self._states[DRAFT] += 1
        line.state = DRAFT

    def ids_in_state(self, state: str) -> Iterator[int]:
        return (cid for cid, line in self._lines.items() if line.state == state)

    def items_in_state(self, state: str) -> Iterator[tuple[int, Line]]:
        return ((cid, line) for cid, line in self._lines.items() if line.state == state)

    def items(self) -> Iterator[tuple[int, Line]]:
        return iter(self._lines.items())

    # Snapshots: a flat list of rows of plain values (JSON has no integer keys, and no dates).
    def to_rows(self) -> list[list[Any]]:
        return [
            [
                cid,
                line.state,
                line.result,
                line.attempts,
                line.error,
                line.error_at and line.error_at.isoformat(),
            ]
            for cid, line in self._lines.items()
        ]

    @classmethod
    def from_rows(cls, rows: list[list[Any]]) -> LineBook:
        book = cls()
        for cid, state, result, attempts, error, error_at in rows:
            at = datetime.fromisoformat(error_at) if error_at else None
            book._lines[cid] = Line(state, result, attempts, error, at)
            book._states[state] += 1
            if result is not None:
                book._results[result] += 1
        return book
