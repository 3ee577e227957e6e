"""LineBook and IdSet, the flat containers a million-customer sync keeps: compared, operation by operation,
with the plain dict and set they replaced (random sequences from hypothesis), their snapshots with the
format earlier versions wrote, their memory per line. No I/O."""

from __future__ import annotations

import base64
import binascii
import tracemalloc
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import lines
from domain.lines import DONE, DRAFT, FAILED, LINE_STATES, IdSet, Line, LineBook

RESULTS = ("created", "updated", "unchanged")
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class DictLineBook:
    """The reference: LineBook as it was before it went flat, one dict entry a line (id -> state code * 4
    + result code) in the order added, whole Lines for lines with attempts or an error, counts kept as
    lines change (so an id added twice counts twice, as it did). Its snapshot is the same format."""

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.details: dict[int, Line] = {}
        self.states: Counter[str] = Counter()
        self.results: Counter[str] = Counter()

    def add(self, cid: int) -> None:
        self.codes[cid] = 0
        self.states["draft"] += 1

    def finish(self, cid: int, state: str, result: str | None = None, error: str | None = None) -> None:
        code = self.codes[cid]
        self.states[LINE_STATES[code >> 2]] -= 1
        self.states[state] += 1
        if result is not None:
            self.results[result] += 1
        result_code = RESULT_CODES[result] if result is not None else code & 3
        self.codes[cid] = LINE_STATES.index(state) << 2 | result_code
        detail = self.details.get(cid)
        if detail is not None or error is not None:
            line = detail or Line()
            line.state, line.result = state, RESULT_NAMES[result_code]
            if error is not None:
                line.error = error
            self.details[cid] = line

    def fail(self, cid: int, error: str, attempt: int, at: datetime) -> None:
        code = self.codes[cid]
        self.states[LINE_STATES[code >> 2]] -= 1
        self.states["failed"] += 1
        self.codes[cid] = 2 << 2 | (code & 3)
        self.details[cid] = Line("failed", RESULT_NAMES[code & 3], attempt, error, at)

    def reopen(self, cid: int) -> None:
        code = self.codes[cid]
        self.states[LINE_STATES[code >> 2]] -= 1
        self.states["draft"] += 1
        self.codes[cid] = code & 3
        detail = self.details.get(cid)
        if detail is not None:
            detail.state = "draft"

    def get(self, cid: int) -> tuple[Any, ...] | None:
        code = self.codes.get(cid)
        return None if code is None else self.line(cid, code).as_row()

    def line(self, cid: int, code: int) -> Line:
        return self.details.get(cid) or Line(LINE_STATES[code >> 2], RESULT_NAMES[code & 3])

    def rows(self) -> list[tuple[int, tuple[Any, ...]]]:
        return [(cid, self.line(cid, code).as_row()) for cid, code in self.codes.items()]

    def to_compact(self) -> dict[str, Any]:
        out = bytearray()
        previous = 0
        for cid in self.codes:
            delta, previous = cid - previous, cid
            value = delta << 1 if delta >= 0 else (-delta << 1) - 1
            while value >= 0x80:
                out.append(value & 0x7F | 0x80)
                value >>= 7
            out.append(value)
        details = [
            [cid, d.state, d.result, d.attempts, d.error, d.error_at and d.error_at.isoformat()]
            for cid, d in self.details.items()
        ]
        return {
            "ids": base64.b64encode(bytes(out)).decode("ascii"),
            "codes": base64.b64encode(bytes(self.codes.values())).decode("ascii"),
            "details": details,
        }

    def recounted(self) -> DictLineBook:
        """What a snapshot's loading makes of it: the counts recounted from the lines' codes."""
        again = DictLineBook()
        again.codes, again.details = dict(self.codes), self.details
        for code in self.codes.values():
            again.states[LINE_STATES[code >> 2]] += 1
            if code & 3:
                again.results[RESULTS[(code & 3) - 1]] += 1
        return again


RESULT_NAMES: tuple[str | None, ...] = (None, *RESULTS)
RESULT_CODES = {name: code for code, name in enumerate(RESULT_NAMES)}


def assert_same(book: LineBook, model: DictLineBook, probes: list[int]) -> None:
    rows = model.rows()
    assert [(cid, line.as_row()) for cid, line in book.items()] == rows
    assert list(book) == [cid for cid, _ in rows]
    assert len(book) == book.total == len(rows)
    for code, state in enumerate(LINE_STATES):
        assert book.count(state) == model.states[state], state
        # By the line's code: an id added again is draft there while its Line still says failed.
        wanted = [cid for cid, line_code in model.codes.items() if line_code >> 2 == code]
        assert list(book.ids_in_state(state)) == wanted
        in_state = [(cid, line.as_row()) for cid, line in book.items_in_state(state)]
        assert in_state == [(cid, row) for cid, row in rows if cid in set(wanted)]
    for result in RESULTS:
        assert book.result_count(result) == model.results[result], result
    for cid in probes:
        assert (cid in book) == (cid in model.codes)
        line = book.get(cid)
        assert (line and line.as_row()) == model.get(cid)
    # Its snapshot holds the reference's bytes, compressed; either loads as the same lines.
    snapshot, reference = book.to_compact(), model.to_compact()
    assert unpacked(snapshot, "ids") == base64.b64decode(reference["ids"])
    assert unpacked(snapshot, "codes") == base64.b64decode(reference["codes"])
    assert snapshot["details"] == reference["details"]
    for key in ("ids", "codes"):  # what a wcsync that wrote base64 only would do with them: refuse
        with pytest.raises(binascii.Error):
            base64.b64decode(snapshot[key])
    for loaded in (LineBook.from_compact(snapshot), LineBook.from_compact(reference)):
        assert [(cid, line.as_row()) for cid, line in loaded.items()] == rows


def unpacked(snapshot: dict[str, Any], key: str) -> bytes:
    """A compressed snapshot's bytes: "z", then zlib's in base64."""
    text = snapshot[key]
    assert text.startswith("z") and len(text) % 4 == 1 and "=" not in text
    return zlib.decompress(base64.b64decode(text[1:]))


ids = st.one_of(st.integers(1, 60), st.integers(1, 2**63 - 1), st.just(2**63 - 1))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), ids),
        # a page: ascending ids from a base, as a scan adds them (the fast path, then merges)
        st.tuples(st.just("page"), st.integers(1, 5_000), st.integers(1, 40), st.integers(1, 3)),
        # a re-sync's page: its changed customers draft, the rest done unchanged (add_page, in id order)
        st.tuples(st.just("mixed"), st.integers(1, 5_000), st.lists(st.booleans(), max_size=30)),
        # a page added at once (add_ascending, as LinesAdded applies one), draft or done unchanged
        st.tuples(
            st.just("bulk"),
            st.integers(1, 5_000),
            st.integers(0, 40),
            st.integers(1, 3),
            st.sampled_from([("draft", None), ("done", "unchanged")]),
        ),
        st.tuples(
            st.just("finish"),
            ids,
            st.sampled_from(["done", "cancelled", "draft"]),
            st.sampled_from([None, *RESULTS]),
            st.sampled_from([None, "forced done: gone"]),
        ),
        st.tuples(st.just("fail"), ids, st.sampled_from(["email: bad", "late"]), st.integers(1, 4)),
        st.tuples(st.just("reopen"), ids),
        st.tuples(st.just("snapshot")),
    ),
    max_size=60,
)


def apply(book: LineBook, model: DictLineBook, operation: tuple[Any, ...], known: list[int]) -> LineBook:
    kind, *args = operation
    if kind == "snapshot":
        model.__dict__.update(model.recounted().__dict__)
        return LineBook.from_compact(book.to_compact())
    if kind == "page":
        base, size, step = args
        for cid in range(base, base + size * step, step):
            book.add(cid)
            model.add(cid)
            known.append(cid)
        return book
    if kind == "mixed":
        base, drafted = args
        page = [base + 2 * i for i in range(len(drafted))]
        drafts = [cid for cid, is_draft in zip(page, drafted, strict=True) if is_draft]
        done = [cid for cid, is_draft in zip(page, drafted, strict=True) if not is_draft]
        at_once = book.add_page(drafts, done, "unchanged")
        for cid in sorted(page) if at_once else [*drafts, *done]:
            if not at_once:
                book.add(cid)
            model.add(cid)
            if cid in done:
                if not at_once:
                    book.finish(cid, "done", result="unchanged")
                model.finish(cid, "done", "unchanged", None)
        known.extend(page)
        return book
    if kind == "bulk":
        base, size, step, (state, result) = args
        page = list(range(base, base + size * step, step))
        assert book.has_any(page) == any(cid in model.codes for cid in page)
        if not book.add_ascending(page, state, result):
            for cid in page:
                book.add(cid)
                if state != "draft":
                    book.finish(cid, state, result=result)
        for cid in page:
            model.add(cid)
            if state != "draft":
                model.finish(cid, state, result, None)
        known.extend(page)
        return book
    cid = args[0]
    known.append(cid)
    if kind == "add":
        book.add(cid)
        model.add(cid)
        return book
    extra: list[Any] = list(args[1:])
    if kind == "fail":
        extra.append(AT + timedelta(seconds=len(known)))
    if cid not in model.codes:
        with pytest.raises(KeyError):
            getattr(book, kind)(cid, *extra)
        return book
    getattr(book, kind)(cid, *extra)
    getattr(model, kind)(cid, *extra)
    return book


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from([2, 3, 1024]))
def test_line_book_does_what_the_dict_did(operations: list[tuple[Any, ...]], merge_size: int) -> None:
    # A small merge size merges the ids that wait unindexed after a few out of order, as a million would.
    with mock.patch.object(lines, "_merge_size", lambda _lines: merge_size):
        book, model, known = LineBook(), DictLineBook(), [0, 1, 2**62]
        for operation in operations:
            book = apply(book, model, operation, known)
            assert_same(book, model, [*known[-8:], 0, 2**62, 2**64])
        assert_same(book, model, known)
        assert LineBook.from_compact(book.to_compact()) == book


def test_a_snapshot_written_before_the_book_went_flat_loads_the_same() -> None:
    # Written by the dict-based LineBook: gaps, ids of 41 and 63 bits (varints of several bytes), ids
    # added out of order (7 and 1 after larger ones), a failed line, a cancelled one, one failed then
    # reopened.
    snapshot: dict[str, Any] = {
        "ids": "BgICqgECyv7///8/8f////8/8P//////////Afv//////////wE=",
        "codes": "BQYIBwAADAAA",
        "details": [
            [5, "failed", None, 2, "email: bad", "2026-01-02T03:04:05+00:00"],
            [7, "cancelled", None, 0, "forced done: gone", None],
            [1, "draft", None, 1, "late", "2026-01-02T03:04:06+00:00"],
        ],
    }
    book = LineBook.from_compact(snapshot)
    assert [(cid, line.as_row()) for cid, line in book.items()] == [
        (3, ("done", "created", 0, None, None)),
        (4, ("done", "updated", 0, None, None)),
        (5, ("failed", None, 2, "email: bad", AT)),
        (90, ("done", "unchanged", 0, None, None)),
        (91, ("draft", None, 0, None, None)),
        (2**40, ("draft", None, 0, None, None)),
        (7, ("cancelled", None, 0, "forced done: gone", None)),
        (2**63 - 1, ("draft", None, 0, None, None)),
        (1, ("draft", None, 1, "late", AT + timedelta(seconds=1))),
    ]
    assert {s: book.count(s) for s in LINE_STATES} == {"draft": 4, "done": 3, "failed": 1, "cancelled": 1}
    assert [book.result_count(r) for r in RESULTS] == [1, 1, 1]
    assert 7 in book and 6 not in book and book.get(2**40) == Line("draft")
    # Written again compressed: the same bytes inside.
    again = book.to_compact()
    assert unpacked(again, "ids") == base64.b64decode(snapshot["ids"])
    assert unpacked(again, "codes") == base64.b64decode(snapshot["codes"])
    assert again["details"] == snapshot["details"] and LineBook.from_compact(again) == book
    # A wcsync that wrote base64 only refuses the compressed form rather than read wrong ids from it.
    with pytest.raises(binascii.Error, match="1 more than a multiple of 4"):
        base64.b64decode(again["ids"])


def test_a_snapshot_whose_ids_and_codes_disagree_is_refused() -> None:
    with pytest.raises(ValueError, match="3 ids and 2 codes"):
        LineBook.from_compact(
            {"ids": base64.b64encode(b"\x02\x02\x02").decode(), "codes": "AAA=", "details": []}
        )


def test_a_line_costs_bytes_not_a_dict_entry() -> None:
    # 200,000 lines as a first sync adds them (ascending, with the sandbox's gaps) then finishes them;
    # the dict-based book took ~75 bytes a line, a set of the ids ~30.
    tracemalloc.start()
    try:
        book = LineBook()
        for cid in range(10, 10 + 200_000 * 3, 3):
            book.add(cid)
            book.finish(cid, "done", result="created")
        seen = IdSet(book)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size / 200_000 < 20, size / 200_000
    assert len(seen) == 200_000 and 10 in seen and 11 not in seen


set_operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), ids),
        st.tuples(st.just("discard"), ids),
        st.tuples(st.just("update"), st.lists(ids, max_size=8)),
        st.tuples(st.just("page"), st.integers(1, 3_000), st.integers(1, 60)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(set_operations, st.sampled_from([2, 1024]))
def test_id_set_does_what_the_set_did(operations: list[tuple[Any, ...]], merge_size: int) -> None:
    with mock.patch.object(lines, "_merge_size", lambda _size: merge_size):
        seen, model = IdSet(), set[int]()
        for kind, *args in operations:
            if kind == "page":
                values = list(range(args[0], args[0] + args[1]))
                seen.update(values)
                model.update(values)
            elif kind == "update":
                seen.update(args[0])
                model.update(args[0])
            else:
                getattr(seen, kind)(args[0])
                getattr(model, kind)(args[0])
            assert len(seen) == len(model)
            for probe in (*model, 0, 61, 2**62, "7"):
                assert (probe in seen) == (probe in model)
            for probes in ([0, 61], [2**62, 2**63 - 1], list(model)[:3], [max(model, default=0) + 1]):
                assert seen.isdisjoint(probes) == model.isdisjoint(probes)
        assert list(seen) == sorted(model)
        assert seen == IdSet(model) and set(seen) == model
        others = {1, 2, 3, 2**63 - 1}
        assert others - seen == others - model  # a set on the left, as a scan's reconciliation has it
        assert set(seen - others) == model - others


def test_snapshot_ids_every_delta_width_and_chunk_boundary() -> None:
    # Deltas around the one-byte limit ([-64, 63] written in bulk) and beyond, on both sides of a chunk
    # boundary (4,096 deltas), each id once: the bytes are the reference's, and they load back.
    book, model = LineBook(), DictLineBook()
    cid = 10_000
    deltas = [
        *([1] * 6_000),
        64,  # alone in its chunk of ones
        *([1] * 2_191),
        *(63, 63, -64, 63),  # the limits, in a chunk written in bulk
        *([1] * 4_093),
        *(63, 63, -65),  # one beyond, in a chunk of ones
        *([1] * 4_200),
        2**40,
        *range(-130, 131),
    ]
    for delta in deltas:
        cid += delta if delta else 1
        if cid in model.codes:
            continue
        book.add(cid)
        model.add(cid)
    assert unpacked(book.to_compact(), "ids") == base64.b64decode(model.to_compact()["ids"])
    assert [cid for cid, _ in LineBook.from_compact(book.to_compact()).items()] == list(model.codes)


def test_ids_beyond_64_bits_an_older_log_may_hold_still_replay() -> None:
    """Validation refuses ids past 2^63-1, but a log an older wcsync wrote may hold one: the book and the
    id set then keep their ids in lists (LineBook._widen), with the same answers and snapshots."""
    big = 2**64 + 5
    book = LineBook()
    for cid in (3, 7, big, 5):
        book.add(cid)
    book.finish(7, DONE, result="created")
    book.fail(big, "too big", 1, datetime(2026, 1, 1, tzinfo=UTC))
    assert list(book) == [3, 7, big, 5] and big in book and 2**70 not in book
    assert book.get(big) == Line(FAILED, None, 1, "too big", datetime(2026, 1, 1, tzinfo=UTC))
    assert (book.count(DRAFT), book.count(DONE), book.count(FAILED)) == (2, 1, 1)
    again = LineBook.from_compact(book.to_compact())
    assert again == book and list(again) == [3, 7, big, 5]
    seen = IdSet([1, big, 2])
    assert big in seen and 2**70 not in seen and len(seen) == 3 and list(seen) == [1, 2, big]
    seen.discard(big)
    assert big not in seen and list(seen) == [1, 2]
