"""The lines of a queue, kept compact: a queue of 100,000 lines must load (from a snapshot) in well under
a second and stay small in memory, so a line holds its state and outcome, never the customer record (that
lives in the ``LinesAdded`` events and is read back only for the lines still to process)."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Iterator
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
    """Lines by WooCommerce customer id, with counts kept as lines change state.

    Compact on purpose: a line that carries nothing but its state and result (nearly all of them) is one
    small integer in a dict, ~70 bytes; only lines with attempts or an error keep a Line. A 100,000-line
    queue measured 36 MB as Line objects; ``get`` and the iterators hand out Line views either way.
    """

    def __init__(self) -> None:
        self._codes: dict[int, int] = {}  # id -> state code * 4 + result code
        self._details: dict[int, Line] = {}  # lines with attempts or an error: the whole line
        self._states: Counter[str] = Counter()
        self._results: Counter[str] = Counter()

    def __iter__(self) -> Iterator[int]:
        """The line ids."""
        return iter(self._codes)

    def __contains__(self, customer_id: object) -> bool:
        return customer_id in self._codes

    def __len__(self) -> int:
        return len(self._codes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineBook) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:  # pragma: no cover
        return id(self)

    @property
    def total(self) -> int:
        return len(self._codes)

    def count(self, state: str) -> int:
        return self._states[state]

    def result_count(self, result: str) -> int:
        return self._results[result]

    def get(self, customer_id: int) -> Line | None:
        code = self._codes.get(customer_id)
        return None if code is None else self._line(customer_id, code)

    def add(self, customer_id: int) -> None:
        self._codes[customer_id] = _DRAFT_CODE
        self._states[DRAFT] += 1

    def finish(
        self, customer_id: int, state: str, result: str | None = None, error: str | None = None
    ) -> None:
        code = self._codes[customer_id]
        self._states[_STATES[code >> 2]] -= 1
        self._states[state] += 1
        if result is not None:
            self._results[result] += 1
        result_code = _RESULT_CODES[result] if result is not None else code & 3
        self._codes[customer_id] = _STATE_CODES[state] << 2 | result_code
        detail = self._details.get(customer_id)
        if detail is not None or error is not None:
            line = detail or Line()
            line.state, line.result = state, _RESULTS[result_code]
            if error is not None:
                line.error = error
            self._details[customer_id] = line

    def fail(self, customer_id: int, error: str, attempt: int, at: datetime) -> None:
        code = self._codes[customer_id]
        self._states[_STATES[code >> 2]] -= 1
        self._states[FAILED] += 1
        self._codes[customer_id] = _STATE_CODES[FAILED] << 2 | (code & 3)
        self._details[customer_id] = Line(FAILED, _RESULTS[code & 3], attempt, error, at)

    def reopen(self, customer_id: int) -> None:
        code = self._codes[customer_id]
        self._states[_STATES[code >> 2]] -= 1
        self._states[DRAFT] += 1
        self._codes[customer_id] = _DRAFT_CODE | (code & 3)
        detail = self._details.get(customer_id)
        if detail is not None:
            detail.state = DRAFT

    def ids_in_state(self, state: str) -> Iterator[int]:
        wanted = _STATE_CODES[state]
        return (cid for cid, code in self._codes.items() if code >> 2 == wanted)

    def items_in_state(self, state: str) -> Iterator[tuple[int, Line]]:
        return ((cid, self._line(cid, self._codes[cid])) for cid in self.ids_in_state(state))

    def items(self) -> Iterator[tuple[int, Line]]:
        return ((cid, self._line(cid, code)) for cid, code in self._codes.items())

    def _line(self, customer_id: int, code: int) -> Line:
        detail = self._details.get(customer_id)
        if detail is not None:
            return detail
        return Line(_STATES[code >> 2], _RESULTS[code & 3])

    # Snapshots. Compact form: the ids as one base64 string of zigzag varint deltas (ids arrive mostly in
    # order: a 100,000-line queue is ~150 KB), the codes as one of bytes, and rows only for the lines with
    # attempts or an error. A list of 200,000 small ints made orjson reserve 32 MB to write 0.8 MB.
    def to_compact(self) -> dict[str, Any]:
        details = [
            [
                cid,
                line.state,
                line.result,
                line.attempts,
                line.error,
                line.error_at and line.error_at.isoformat(),
            ]
            for cid, line in self._details.items()
        ]
        return {
            "ids": base64.b64encode(_varint_deltas(self._codes.keys())).decode("ascii"),
            "codes": base64.b64encode(bytes(self._codes.values())).decode("ascii"),
            "details": details,
        }

    @classmethod
    def from_compact(cls, data: dict[str, Any]) -> LineBook:
        book = cls()
        codes = base64.b64decode(data["codes"])
        book._codes = dict(zip(_from_varint_deltas(base64.b64decode(data["ids"])), codes, strict=True))
        for code, count in Counter(codes).items():
            book._states[_STATES[code >> 2]] += count
            if code & 3:
                book._results[_RESULTS[code & 3]] += count  # type: ignore[index]
        for cid, state, result, attempts, error, error_at in data["details"]:
            at = datetime.fromisoformat(error_at) if error_at else None
            book._details[cid] = Line(state, result, attempts, error, at)
        return book

    # Rows: one list of plain values per line (the first snapshot format; still read, no longer written).
    @classmethod
    def from_rows(cls, rows: list[list[Any]]) -> LineBook:
        book = cls()
        for cid, state, result, attempts, error, error_at in rows:
            book._codes[cid] = _STATE_CODES[state] << 2 | _RESULT_CODES[result]
            if attempts or error is not None:
                at = datetime.fromisoformat(error_at) if error_at else None
                book._details[cid] = Line(state, result, attempts, error, at)
            book._states[state] += 1
            if result is not None:
                book._results[result] += 1
        return book


def _varint_deltas(ids: Iterable[int]) -> bytes:
    out = bytearray()
    previous = 0
    for cid in ids:
        delta = cid - previous
        previous = cid
        value = delta << 1 if delta >= 0 else (-delta << 1) - 1  # zigzag: small either way
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def _from_varint_deltas(data: bytes) -> Iterator[int]:
    previous = value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        previous += value >> 1 if not value & 1 else -((value + 1) >> 1)
        yield previous
        value = shift = 0


_STATES = LINE_STATES  # code -> state
_STATE_CODES = {state: code for code, state in enumerate(LINE_STATES)}
_RESULTS: tuple[str | None, ...] = (None, "created", "updated", "unchanged")
_RESULT_CODES = {result: code for code, result in enumerate(_RESULTS)}
_DRAFT_CODE = _STATE_CODES[DRAFT] << 2
