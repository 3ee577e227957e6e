"""The lines of a queue, kept compact: a queue of a million lines must load (from a snapshot) in well under
a second and stay a few megabytes in memory, so a line holds its state and outcome, never the customer
record (that lives in the ``LinesAdded`` events and is read back only for the lines still to process).
Also the compact set of ids a scan has seen (IdSet)."""

from __future__ import annotations

import base64
import re
import zlib
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, MutableSequence, MutableSet
from datetime import datetime
from itertools import accumulate, chain, compress, islice
from operator import lt, sub
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

    Flat on purpose: a million-line queue lives in one process beside everything else a sync holds, so
    a line is its id in an ``array('q')``, one byte of state and result in a ``bytearray`` and about a
    byte of its id's snapshot encoding (~10 bytes, where a dict of small ints cost ~75 and a Line each
    ~360). Only lines with attempts or an error keep a Line (``_details``); ``get`` and the iterators
    hand out Line views either way.

    Both arrays keep the order lines were added in: iteration is in that order, as the dict's was (a
    retry's and a forced done's ids are written to events in it). Ids are found by binary search: while
    the ids were added in ascending order (a first sync adds them page by page, in id order) the ids
    array is its own index (a page's lines go in in id order, add_page); once not (a page out of order, a
    retry's), a sorted copy with each id's position (12 more bytes a line) is the index, and ids added since
    its last merge wait in a small dict merged in batches (usually at its end: pages come in id order).
    """

    def __init__(self) -> None:
        # In the order added; a list once an id does not fit in 64 bits (_widen).
        self._ids: MutableSequence[int] = array("q")
        self._codes = bytearray()  # state code * 4 + result code, at the same positions
        # The index of positions [0, _merged): None while those ids ascend (they are their own index),
        # else the ids sorted (_keys) with their positions (_slots). Positions from _merged on: _pending.
        self._keys: MutableSequence[int] | None = None
        self._slots = array("I")
        self._merged = 0
        self._next = 0  # where in the index the next lookup looks first
        self._pending: dict[int, int] = {}  # id -> position, added since the last merge
        self._details: dict[int, Line] = {}  # lines with attempts or an error: the whole line
        self._states: Counter[str] = Counter()
        self._results: Counter[str] = Counter()
        # The varint deltas of the first _encoded ids, kept: lines never move, so a snapshot encodes only
        # the ids added since the last (a sync of a million snapshots its queue every 200 events).
        self._varints = bytearray()
        self._encoded = 0

    def __iter__(self) -> Iterator[int]:
        """The line ids, in the order they were added."""
        return iter(self._ids)

    def __contains__(self, customer_id: object) -> bool:
        return isinstance(customer_id, int) and self._find(customer_id) >= 0

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineBook) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:  # pragma: no cover
        return id(self)

    @property
    def total(self) -> int:
        return len(self._ids)

    def count(self, state: str) -> int:
        return self._states[state]

    def result_count(self, result: str) -> int:
        return self._results[result]

    def get(self, customer_id: int) -> Line | None:
        position = self._find(customer_id)
        return None if position < 0 else self._line(customer_id, self._codes[position])

    def add(self, customer_id: int) -> None:
        if not _INT64_MIN <= customer_id <= _INT64_MAX and isinstance(self._ids, array):
            self._widen()
        ids = self._ids
        if self._keys is None and not self._pending and (not ids or customer_id > ids[-1]):
            ids.append(customer_id)  # the fast path: ids ascending, the array its own index
            self._codes.append(_DRAFT_CODE)
            self._merged += 1
        else:
            position = self._find(customer_id)
            if position >= 0:  # added again: back to draft where it stands, as a dict's key would
                self._codes[position] = _DRAFT_CODE
            else:
                self._pending[customer_id] = len(ids)
                ids.append(customer_id)
                self._codes.append(_DRAFT_CODE)
                if len(self._pending) >= _merge_size(len(ids)):
                    self._merge()
        self._states[DRAFT] += 1

    def add_ascending(self, customer_ids: list[int], state: str = DRAFT, result: str | None = None) -> bool:
        """Add these lines in ``state`` (with ``result``) at C speed when they ascend, strictly, above
        every line so far and the book is its own index (a page of a first sync, or of an unchanged
        re-sync): True. Otherwise nothing is added and False (the caller adds them one by one)."""
        ids = self._ids
        if (
            not customer_ids
            or self._keys is not None
            or self._pending
            or not isinstance(ids, array)
            or (ids and customer_ids[0] <= ids[-1])
            or not _strictly_ascending(customer_ids)
        ):
            return False
        try:
            added = array("q", customer_ids)
        except (OverflowError, TypeError):
            return False
        count = len(added)
        ids.extend(added)
        result_code = _RESULT_CODES[result] if result is not None else 0
        self._codes.extend(bytes([_STATE_CODES[state] << 2 | result_code]) * count)
        self._merged += count
        self._states[state] += count
        if result is not None:
            self._results[result] += count
        return True

    def add_page(self, drafts: list[int], done: list[int], result: str | None = None) -> bool:
        """Add a page's lines, ``drafts`` draft and ``done`` done with ``result``, in id order (a re-sync's
        page names its changed customers before its unchanged ones), at C speed when together they ascend
        above every line so far (add_ascending): True. Otherwise nothing is added and False."""
        if not done:
            return self.add_ascending(drafts)
        if not drafts:
            return self.add_ascending(done, DONE, result)
        merged = sorted([*drafts, *done])
        if not self.add_ascending(merged):
            return False
        # Added draft: the done ones' codes, states and results set as finish() would have.
        done_code = _STATE_CODES[DONE] << 2 | (_RESULT_CODES[result] if result is not None else 0)
        first = len(self._ids) - len(merged)
        codes = self._codes
        draft = set(drafts)
        for offset, cid in enumerate(merged):
            if cid not in draft:
                codes[first + offset] = done_code
        self._states[DRAFT] -= len(done)
        self._states[DONE] += len(done)
        if result is not None:
            self._results[result] += len(done)
        return True

    def has_any(self, customer_ids: list[int]) -> bool:
        """Whether any of these ids is a line: at once when all are above every line of an ascending book,
        else one lookup each."""
        ids = self._ids
        if not customer_ids or not ids:
            return False
        if self._keys is None and not self._pending and isinstance(ids, array):
            try:
                if min(customer_ids) > ids[-1]:
                    return False
            except TypeError:
                pass
        return any(cid in self for cid in customer_ids)

    def finish(
        self, customer_id: int, state: str, result: str | None = None, error: str | None = None
    ) -> None:
        position = self._position(customer_id)
        code = self._codes[position]
        self._states[_STATES[code >> 2]] -= 1
        self._states[state] += 1
        if result is not None:
            self._results[result] += 1
        result_code = _RESULT_CODES[result] if result is not None else code & 3
        self._codes[position] = _STATE_CODES[state] << 2 | result_code
        detail = self._details.get(customer_id) if self._details else None
        if detail is not None or error is not None:
            line = detail or Line()
            line.state, line.result = state, _RESULTS[result_code]
            if error is not None:
                line.error = error
            self._details[customer_id] = line

    def fail(self, customer_id: int, error: str, attempt: int, at: datetime) -> None:
        position = self._position(customer_id)
        code = self._codes[position]
        self._states[_STATES[code >> 2]] -= 1
        self._states[FAILED] += 1
        self._codes[position] = _STATE_CODES[FAILED] << 2 | (code & 3)
        self._details[customer_id] = Line(FAILED, _RESULTS[code & 3], attempt, error, at)

    def reopen(self, customer_id: int) -> None:
        position = self._position(customer_id)
        code = self._codes[position]
        self._states[_STATES[code >> 2]] -= 1
        self._states[DRAFT] += 1
        self._codes[position] = _DRAFT_CODE | (code & 3)
        detail = self._details.get(customer_id)
        if detail is not None:
            detail.state = DRAFT

    def ids_in_state(self, state: str) -> Iterator[int]:
        return compress(self._ids, self._codes.translate(_IN_STATE[_STATE_CODES[state]]))

    def items_in_state(self, state: str) -> Iterator[tuple[int, Line]]:
        mask = self._codes.translate(_IN_STATE[_STATE_CODES[state]])
        return self._items(compress(range(len(mask)), mask))

    def items(self) -> Iterator[tuple[int, Line]]:
        return self._items(range(len(self._ids)))

    def _items(self, positions: Iterable[int]) -> Iterator[tuple[int, Line]]:
        ids, codes = self._ids, self._codes
        for position in positions:
            customer_id = ids[position]
            yield customer_id, self._line(customer_id, codes[position])

    def _line(self, customer_id: int, code: int) -> Line:
        detail = self._details.get(customer_id) if self._details else None
        if detail is not None:
            return detail
        return Line(_STATES[code >> 2], _RESULTS[code & 3])

    def _widen(self) -> None:
        """Hold the ids in lists from now on: an id outside 64 bits (one an older wcsync could store, which
        validation now refuses) does not fit an ``array('q')``. Slower and ~8x larger, for such a log only."""
        self._ids = list(self._ids)
        if self._keys is not None:
            self._keys = list(self._keys)

    # ----- finding an id ---------------------------------------------------------------------------------

    def _position(self, customer_id: int) -> int:
        position = self._find(customer_id)
        if position < 0:
            raise KeyError(customer_id)
        return position

    def _find(self, customer_id: int) -> int:
        """The position of a line, -1 when there is none."""
        if self._pending:
            position = self._pending.get(customer_id)
            if position is not None:
                return position
        keys = self._keys
        index = self._ids if keys is None else keys
        size = self._merged
        at = self._next  # lines are mostly looked up in the order added: try the one after the last first
        if at < size and index[at] == customer_id:
            self._next = at + 1
        elif not size or customer_id > index[size - 1]:
            return -1  # above every indexed id: a new line (the common case of add_lines' check)
        else:
            at = bisect_left(index, customer_id, 0, size)
            if index[at] != customer_id:
                return -1
            self._next = at + 1
        return at if keys is None else self._slots[at]

    def _merge(self) -> None:
        """Move the pending ids into the index. Pages come in id order, so the pending ids are usually
        above, or among the last of, the indexed ones: only the index's tail from the lowest pending id on
        is merged (sorted again), not the whole index."""
        added = sorted(self._pending.items())
        self._pending = {}
        ids, merged = self._ids, self._merged
        self._merged = len(ids)
        if self._keys is None:
            if (not merged or added[0][0] > ids[merged - 1]) and all(
                position == merged + i for i, (_, position) in enumerate(added)
            ):
                return  # still ascending in the order added: the ids stay their own index
            self._keys = ids[:merged]
            self._slots = array("I", range(merged))
        keys, slots = self._keys, self._slots
        start = bisect_left(keys, added[0][0])
        if start < len(keys):
            added = sorted([*zip(keys[start:], slots[start:], strict=True), *added])
            del keys[start:], slots[start:]
        keys.extend([key for key, _ in added])
        slots.extend([slot for _, slot in added])

    # Snapshots. Compact form: the ids as zigzag varint deltas (ids arrive mostly in order: about a byte
    # an id), the codes as bytes, each compressed (zlib, fastest level: a first sync's million codes are
    # one repeated byte, its ids mostly deltas of 1) and written "z" + base64, and rows only for the
    # lines with attempts or an error. A million-line queue's snapshot is ~0.4 MB instead of 2.7: each of
    # its snapshots is that much written, and a transient of the syncing process, whose heap grew by
    # ~27 MB more over a million lines with the uncompressed ones. A list of 200,000 small ints made
    # orjson reserve 32 MB to write 0.8 MB.
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
        return {"ids": _packed(self._encoded_ids()), "codes": _packed(self._codes), "details": details}

    @classmethod
    def from_compact(cls, data: dict[str, Any]) -> LineBook:
        """A book from its snapshot, compressed or as snapshots were written before (base64 only)."""
        varints, codes = _unpacked(data["ids"]), bytearray(_unpacked(data["codes"]))
        ids = _from_varint_deltas(varints)
        if len(ids) != len(codes):
            raise ValueError(f"a line book of {len(ids)} ids and {len(codes)} codes")
        book = cls._of(ids, codes)
        if not varints or varints[-1] < 0x80:  # whole varints only: they are the ids' encoding as is
            book._varints, book._encoded = bytearray(varints), len(ids)
        for cid, state, result, attempts, error, error_at in data["details"]:
            at = datetime.fromisoformat(error_at) if error_at else None
            book._details[cid] = Line(state, result, attempts, error, at)
        return book

    def _encoded_ids(self) -> bytearray:
        """The varint deltas of every id, encoding only those added since the last call."""
        ids, encoded = self._ids, self._encoded
        if encoded < len(ids):
            self._varints += _varint_deltas(ids[encoded:], ids[encoded - 1] if encoded else 0)
            self._encoded = len(ids)
        return self._varints

    # Rows: one list of plain values per line (the first snapshot format; still read, no longer written).
    @classmethod
    def from_rows(cls, rows: list[list[Any]]) -> LineBook:
        book = cls._of(_id_array([row[0] for row in rows]), bytearray())
        for cid, state, result, attempts, error, error_at in rows:
            book._codes.append(_STATE_CODES[state] << 2 | _RESULT_CODES[result])
            if attempts or error is not None:
                at = datetime.fromisoformat(error_at) if error_at else None
                book._details[cid] = Line(state, result, attempts, error, at)
        book._count_codes()
        return book

    @classmethod
    def _of(cls, ids: array[int], codes: bytearray) -> LineBook:
        """A book of these lines (distinct ids, in the order added), its index and counts made at once."""
        book = cls()
        book._ids, book._codes, book._merged = ids, codes, len(ids)
        if not all(map(lt, ids, islice(ids, 1, None))):
            order = sorted(range(len(ids)), key=ids.__getitem__)
            book._keys = _id_array(list(map(ids.__getitem__, order)))
            book._slots = array("I", order)
        book._count_codes()
        return book

    def _count_codes(self) -> None:
        self._states.clear()
        self._results.clear()
        for code in range(len(LINE_STATES) << 2):
            count = self._codes.count(code)
            if count:
                self._states[_STATES[code >> 2]] += count
                if code & 3:
                    self._results[_RESULTS[code & 3]] += count  # type: ignore[index]


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _id_array(ids: list[int]) -> Any:
    """Ids as an ``array('q')``, or the list itself when one does not fit in 64 bits (LineBook._widen)."""
    try:
        return array("q", ids)
    except OverflowError:
        return ids


def _packed(data: bytes | bytearray) -> str:
    """Bytes of a snapshot compressed, as "z" + base64. The compressed bytes are padded with zeros to a
    multiple of 3, so their base64 has no "=" and is a multiple of 4 characters long: the "z" tells the
    two forms apart, and a version of wcsync that wrote base64 only refuses this one ("cannot be 1 more
    than a multiple of 4") instead of reading it as wrong ids."""
    packed = zlib.compress(data, 1)
    return "z" + base64.b64encode(packed + bytes(-len(packed) % 3)).decode("ascii")


def _unpacked(text: str) -> bytes:
    if len(text) % 4 == 1 and text.startswith("z"):
        return zlib.decompressobj().decompress(base64.b64decode(text[1:]))  # the padding: unused_data
    return base64.b64decode(text)  # written before snapshots were compressed


def _strictly_ascending(values: list[int]) -> bool:
    """Whether the ids ascend with no repeat (at C speed: sorted and set, not a loop)."""
    try:
        return values == sorted(values) and len(set(values)) == len(values)
    except TypeError:
        return False


def _merge_size(lines: int) -> int:
    """How many ids may wait unindexed: a sixteenth of the lines (merges stay rare however the ids come),
    between 1,024 and 65,536 (a waiting id costs a dict entry, ~100 bytes)."""
    return min(max(lines >> 4, 1024), 65_536)


class IdSet(MutableSet[int]):
    """A set of customer ids at ~8 bytes an id (a set of ints costs ~30-60): the ids a scan has seen, for
    a million-customer store. Sorted in an ``array('q')``, ids added since the last merge in a small set;
    ids come page by page in ascending order, so adding one above all the others is an append. Iterates
    in ascending order. The operators of a set come from MutableSet (``store_ids - seen`` works with a
    set on the left: the result is an IdSet)."""

    __slots__ = ("_keys", "_pending", "_wide")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._keys = array("q")  # sorted, distinct from _pending
        self._pending: set[int] = set()
        self._wide: set[int] = set()  # ids outside 64 bits (an older wcsync's log may hold them)
        self.update(ids)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        if value in self._pending or value in self._wide:
            return True
        if not _INT64_MIN <= value <= _INT64_MAX:
            return False
        keys = self._keys
        at = bisect_left(keys, value)
        return at < len(keys) and keys[at] == value

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending) + len(self._wide)

    def __iter__(self) -> Iterator[int]:
        self._merge()
        if self._wide:
            return iter(sorted([*self._keys, *self._wide]))
        return iter(self._keys)

    def __repr__(self) -> str:
        return f"IdSet({len(self)} ids)"

    def add(self, value: int) -> None:
        if not _INT64_MIN <= value <= _INT64_MAX:
            self._wide.add(value)
            return
        keys = self._keys
        if not self._pending and (not keys or value > keys[-1]):
            keys.append(value)
        elif value not in self:
            self._pending.add(value)
            if len(self._pending) >= _merge_size(len(keys)):
                self._merge()

    def discard(self, value: int) -> None:
        if value in self._pending or value in self._wide:
            self._pending.discard(value)
            self._wide.discard(value)
            return
        if not _INT64_MIN <= value <= _INT64_MAX:
            return
        keys = self._keys
        at = bisect_left(keys, value)
        if at < len(keys) and keys[at] == value:
            del keys[at]

    def update(self, ids: Iterable[int]) -> None:
        values = ids if isinstance(ids, list) else list(ids)
        keys = self._keys
        # A page of a scan: ascending ids above all the others, appended at C speed.
        if (
            values
            and not self._pending
            and (not keys or values[0] > keys[-1])
            and _strictly_ascending(values)
        ):
            try:
                keys.extend(array("q", values))
                return
            except (OverflowError, TypeError):
                pass  # an id outside 64 bits: one by one
        add = self.add
        for value in values:
            add(value)

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        """No id of ``other`` is in the set: at once when all are above every id of it (a page of a scan)."""
        values = other if isinstance(other, list) else list(other)
        keys = self._keys
        if not self._pending and not self._wide and values:
            try:
                if not keys or min(values) > keys[-1]:
                    return True
            except TypeError:
                pass
        return not any(value in self for value in values)

    def _merge(self) -> None:
        if not self._pending:
            return
        added = sorted(self._pending)
        self._pending = set()
        keys = self._keys
        start = bisect_left(keys, added[0])
        if start < len(keys):
            added = sorted([*keys[start:], *added])
            del keys[start:]
        keys.extend(added)


_MULTI_BYTE = re.compile(rb"[\x80-\xff]+[\x00-\x7f]")  # a varint of two bytes or more
_CHUNK = 4096  # deltas encoded at C speed together, when each fits in one byte


def _zigzag(signed: int) -> int:
    return signed << 1 if signed >= 0 else (-signed << 1) - 1


# One-byte varints in bulk: a delta in [-64, 63] as a signed byte (its two's complement) -> its zigzag
# byte, and back. bytes.translate runs at C speed; deltas outside the range go one by one.
_TO_ZIGZAG = bytes(_zigzag(u - 256 if u > 127 else u) if u < 64 or u >= 192 else 0 for u in range(256))
_FROM_ZIGZAG = bytes(((z >> 1) if not z & 1 else 256 - ((z + 1) >> 1)) if z < 128 else 0 for z in range(256))


def _varint_deltas(ids: Any, previous: int = 0) -> bytearray:
    """The ids' zigzag varint deltas (_fast_varint_deltas; one by one when an id or a delta passes 64
    bits, as only a widened book's can)."""
    try:
        return _fast_varint_deltas(ids, previous)
    except OverflowError:
        out = bytearray()
        for cid in ids:
            value = _zigzag(cid - previous)
            previous = cid
            while value >= 0x80:
                out.append(value & 0x7F | 0x80)
                value >>= 7
            out.append(value)
        return out


def _fast_varint_deltas(ids: Any, previous: int = 0) -> bytearray:
    """The ids' zigzag varint deltas. Chunk by chunk: a chunk whose deltas all fit in one byte (ids
    nearly consecutive, as most of any store's are) is translated at C speed, a snapshot of a million
    lines in milliseconds; others are written one delta at a time. Only a chunk's deltas are made at a
    time: all of a million at once (8 MB, for each snapshot) left the heap of a sync tens of MB larger.
    ``previous``: the id before the first (0 for the first of all)."""
    out = bytearray()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        deltas = array("q", map(sub, chunk, chain((previous,), chunk)))
        previous = chunk[-1]
        if min(deltas) >= -64 and max(deltas) <= 63:
            out += array("b", deltas).tobytes().translate(_TO_ZIGZAG)
            continue
        for delta in deltas:
            value = _zigzag(delta)
            while value >= 0x80:
                out.append(value & 0x7F | 0x80)
                value >>= 7
            out.append(value)
    return out


def _from_varint_deltas(data: bytes) -> Any:
    """The ids back (_fast_from_varint_deltas; as a list, one by one, when one passes 64 bits)."""
    try:
        return _fast_from_varint_deltas(data)
    except OverflowError:
        ids: list[int] = []
        previous = value = shift = 0
        for byte in data:
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                previous += value >> 1 if not value & 1 else -((value + 1) >> 1)
                ids.append(previous)
                value = shift = 0
        return ids  # an unfinished varint at the end is ignored, as before


def _fast_from_varint_deltas(data: bytes) -> array[int]:
    """The ids back: the runs of one-byte varints between the longer ones at C speed (translate, then
    accumulate), the longer ones one by one. An unfinished varint at the end is ignored, as before."""
    ids = array("q")
    previous = at = 0
    for match in _MULTI_BYTE.finditer(data):
        previous = _one_byte_run(data[at : match.start()], previous, ids)
        value = shift = 0
        for byte in match.group():
            value |= (byte & 0x7F) << shift
            shift += 7
        previous += value >> 1 if not value & 1 else -((value + 1) >> 1)
        ids.append(previous)
        at = match.end()
    _one_byte_run(data[at:].rstrip(_HIGH_BYTES), previous, ids)
    return ids


_HIGH_BYTES = bytes(range(0x80, 0x100))


def _one_byte_run(run: bytes, previous: int, ids: array[int]) -> int:
    if not run:
        return previous
    deltas = array("b")
    deltas.frombytes(run.translate(_FROM_ZIGZAG))
    sums = accumulate(deltas, initial=previous)
    next(sums)
    ids.extend(sums)
    return ids[-1]


_STATES = LINE_STATES  # code -> state
_STATE_CODES = {state: code for code, state in enumerate(LINE_STATES)}
_RESULTS: tuple[str | None, ...] = (None, "created", "updated", "unchanged")
_RESULT_CODES = {result: code for code, result in enumerate(_RESULTS)}
_DRAFT_CODE = _STATE_CODES[DRAFT] << 2
# code -> 1 where the code's state is the one wanted (for bytes.translate, then itertools.compress)
_IN_STATE = tuple(bytes(int(c >> 2 == s) for c in range(256)) for s in range(len(LINE_STATES)))
