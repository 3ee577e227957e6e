"""Audit and compliance: what the sync did, when, to whom, and whether anyone changed the record since.

Everything here reads the event log itself (never the reporting tables, except as an index to find a
customer's queues):

- ``queue_timeline``: a queue's events as a timeline, or its state as it stood at an instant (replay of the
  events up to it, snapshots ignored);
- ``customer_history``: one customer's registration, changes (old -> new values, recomputed by replaying its
  records), deletion, and its lines' failures in every queue;
- ``export_log``: every event of an org in log order as JSON lines, each linked to the one before by a
  SHA-256 chain, closed by a digest line; ``verify_export`` checks such a file offline;
- ``verify_log``: recomputes the ledger's chain (projections/ledger.py) from the events table and names the
  first position where an event was edited, deleted, inserted or swapped.

The log is streamed (server-side cursors on PostgreSQL, a cursor in one read transaction on SQLite): memory
stays flat however long it is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from hashlib import sha256
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from domain import narrative, status
from domain.customer import Customer, customer_key
from domain.errors import EXIT_USAGE, WcsyncError
from domain.queue import SyncQueue
from domain.store import Store
from domain.webhook import RefusedDeliveries, WebhookDelivery
from infrastructure.adapters.cipher import KeyCheckingMapper, decrypt_error
from infrastructure.adapters.eventlog import LogReader
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.adapters.schema import iso as utc_iso
from infrastructure.support.config import DatabaseConfig, check_output_file
from infrastructure.support.errors import QueueNotFoundError
from projections import queries
from projections.ledger import (
    GENESIS,
    audit_key,
    chain_hash,
    event_hash,
    event_hash_of_bytes,
    sign_checkpoint,
    state_hash,
)

MAX_PROBLEMS = 1_000  # problems kept in memory (verify reports the first ones)
EXPORT_FORMAT = "wcsync-audit-export/1"
_LINK_PREFIX = b',"link":"'
_LINK_SUFFIX_LEN = len(_LINK_PREFIX) + 64 + 2  # ,"link":"<64 hex>"}

QUEUE_CREATED_TOPIC = get_topic(SyncQueue.Created)
CUSTOMER_REGISTERED_TOPIC = get_topic(Customer.Registered)
# The first events of the aggregates an org's export holds (each names its org): queues, customers,
# registered stores, webhook deliveries and refused-delivery incidents.
ORG_TOPICS = frozenset(
    {
        QUEUE_CREATED_TOPIC,
        CUSTOMER_REGISTERED_TOPIC,
        get_topic(Store.Registered),
        get_topic(WebhookDelivery.Received),
        get_topic(RefusedDeliveries.Recorded),
    }
)


class AuditError(WcsyncError):
    """The audit could not be done as asked."""

    exit_code = EXIT_USAGE


# ----- time ----------------------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """A time of the audit's output: UTC, with microseconds only when there are some."""
    return None if value is None else utc_iso(value, timespec="auto")


def _now() -> datetime:
    return datetime.now(UTC)


# ----- verify the stored log -----------------------------------------------------------------------------


@dataclass
class Problem:
    position: int
    kind: str  # edited | swapped | deleted | inserted | unledgered | ledger | checkpoint | export
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "kind": self.kind, "message": self.message}


@dataclass
class VerifyReport:
    source: str
    events: int = 0
    ledger_rows: int = 0
    ledger_head: int = 0
    chain_hash: str = GENESIS.hex()
    checkpoints: int = 0
    signed_checkpoints: int = 0
    unledgered: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.problem_count

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.position) if self.problems else None

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "ok": self.ok,
            "source": self.source,
            "events": self.events,
            "ledgerRows": self.ledger_rows,
            "ledgerHead": self.ledger_head,
            "chainHash": self.chain_hash,
            "checkpoints": self.checkpoints,
            "signedCheckpoints": self.signed_checkpoints,
            "unledgered": self.unledgered,
            "firstBadPosition": first.position if first else None,
            "problem": first.message if first else None,
            "problemCount": self.problem_count,
            "problems": [p.as_dict() for p in sorted(self.problems, key=lambda p: p.position)[:100]],
            "notes": self.notes,
        }


@dataclass
class _Mismatch:
    position: int
    differences: list[str]
    event_state_hash: str
    ledger_state_hash: str
    event_topic: str
    ledger_topic: str


def _name(topic: str) -> str:
    """domain.queue:SyncQueue.LinesDone -> SyncQueue.LinesDone"""
    return topic.rpartition(":")[2]


def verify_log(database: DatabaseConfig) -> VerifyReport:
    """Recompute every event's hash from the events table and compare with the ledger, check the ledger's
    chain and its checkpoints (and their HMAC when WCSYNC_AUDIT_KEY is set). Streams both tables."""
    report = VerifyReport(source=database.display)
    key = audit_key()
    mismatches: list[_Mismatch] = []
    with LogReader(database).snapshot() as reader:
        checkpoints: dict[int, list[tuple[str, int, str, str | None]]] = {}
        for position, checkpoint_chain, count, recorded_at, signature in reader.checkpoints():
            checkpoints.setdefault(position, []).append((checkpoint_chain, count, recorded_at, signature))
        report.checkpoints = sum(len(v) for v in checkpoints.values())
        head = reader.ledger_head()
        report.ledger_head = head[0] if head else 0
        events = reader.events()
        ledger = reader.ledger()
        event = next(events, None)
        row = next(ledger, None)
        chain = GENESIS
        seq = 0
        while event is not None or row is not None:
            if row is None or (event is not None and event[0] < row[0]):
                assert event is not None
                if event[0] < report.ledger_head:
                    report.add(
                        Problem(
                            event[0],
                            "inserted",
                            f"position {event[0]}: event inserted: {_name(event[3])} of aggregate {event[1]} "
                            f"version {event[2]} is not in the ledger, which records positions past it",
                        )
                    )
                else:
                    if not report.unledgered:
                        report.add(
                            Problem(
                                event[0],
                                "unledgered",
                                f"position {event[0]}: event not in the ledger (its last position is "
                                f"{report.ledger_head}): inserted, or appended since the ledger last caught up "
                                "(`wcsync projections catch-up` records legitimate new events)",
                            )
                        )
                    report.unledgered += 1
                report.events += 1
                event = next(events, None)
                continue
            position, row_seq, oid, version, topic, s_hash, e_hash, c_hash = row
            seq += 1
            report.ledger_rows += 1
            chain = chain_hash(chain, bytes.fromhex(e_hash))
            if chain.hex() != c_hash or row_seq != seq:
                report.add(
                    Problem(
                        position,
                        "ledger",
                        f"position {position}: the ledger's chain is broken here (a ledger row was edited, "
                        "or one before it removed)",
                    )
                )
                chain = bytes.fromhex(c_hash)  # resynchronise: report each break once
                seq = row_seq
            for cp_chain, cp_count, recorded_at, signature in checkpoints.pop(position, []):
                _check_checkpoint(
                    report, key, position, c_hash, row_seq, cp_chain, cp_count, recorded_at, signature
                )
            if event is None or row[0] < event[0]:
                report.add(
                    Problem(
                        position,
                        "deleted",
                        f"position {position}: event deleted: the ledger recorded {_name(topic)} of aggregate "
                        f"{oid} version {version} there",
                    )
                )
                row = next(ledger, None)
                continue
            _, e_oid, e_version, e_topic, state = event
            e_state_hash = state_hash(state)
            recomputed = event_hash(position, e_oid, e_version, e_topic, e_state_hash).hex()
            report.events += 1
            if recomputed != e_hash:
                differences = [
                    name
                    for name, differs in (
                        ("aggregate id", e_oid != oid),
                        ("version", e_version != version),
                        ("topic", e_topic != topic),
                        ("data", e_state_hash.hex() != s_hash),
                    )
                    if differs
                ] or ["hash"]
                if len(mismatches) < MAX_PROBLEMS:
                    mismatches.append(
                        _Mismatch(position, differences, e_state_hash.hex(), s_hash, e_topic, topic)
                    )
                report.problem_count += 1
            event = next(events, None)
            row = next(ledger, None)
        report.chain_hash = chain.hex()
        for position, remaining in checkpoints.items():
            for _ in remaining:
                report.add(
                    Problem(
                        position,
                        "checkpoint",
                        f"position {position}: a checkpoint names this position but the ledger has no row "
                        "there (ledger rows removed)",
                    )
                )
    _classify(report, mismatches)
    if report.checkpoints and not key:
        report.notes.append("checkpoint signatures not checked: WCSYNC_AUDIT_KEY is not set")
    if not report.ledger_rows and report.events:
        report.notes.append("the ledger is empty: run `wcsync projections catch-up` to record the log")
    return report


def _check_checkpoint(
    report: VerifyReport,
    key: bytes | None,
    position: int,
    ledger_chain: str,
    ledger_seq: int,
    chain: str,
    count: int,
    recorded_at: str,
    signature: str | None,
) -> None:
    if signature:
        report.signed_checkpoints += 1
    if chain != ledger_chain or count != ledger_seq:
        report.add(
            Problem(
                position,
                "checkpoint",
                f"position {position}: the chain differs from the checkpoint recorded at {recorded_at}: the log "
                "up to here was changed after that checkpoint (and the ledger rebuilt or rewritten)",
            )
        )
    elif (
        key
        and signature
        and not hmac.compare_digest(signature, sign_checkpoint(key, position, chain, count, recorded_at))
    ):
        report.add(
            Problem(
                position,
                "checkpoint",
                f"position {position}: the checkpoint's signature does not match WCSYNC_AUDIT_KEY "
                "(checkpoint forged, or another key)",
            )
        )


def _classify(report: VerifyReport, mismatches: list[_Mismatch]) -> None:
    """An event whose bytes are another mismatched position's recorded bytes was swapped (or moved)."""
    by_ledger_state = {m.ledger_state_hash: m.position for m in mismatches}
    report.problem_count -= len(mismatches)  # counted once during the scan, added properly below
    for m in mismatches:
        other = by_ledger_state.get(m.event_state_hash)
        if other is not None and other != m.position:
            report.add(
                Problem(
                    m.position,
                    "swapped",
                    f"position {m.position}: event swapped with position {other}: it holds the "
                    f"{'data' if m.event_topic == m.ledger_topic else 'data and topic'} the ledger recorded "
                    f"at position {other}",
                )
            )
        else:
            report.add(
                Problem(
                    m.position,
                    "edited",
                    f"position {m.position}: event edited: its {', '.join(m.differences)} no longer match "
                    f"what the ledger recorded ({_name(m.ledger_topic)})",
                )
            )


# ----- export --------------------------------------------------------------------------------------------


@dataclass
class ExportSummary:
    path: str
    events: int
    first_position: int | None
    last_position: int | None
    chain: str
    signed: bool
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.path,
            "events": self.events,
            "firstPosition": self.first_position,
            "lastPosition": self.last_position,
            "chain": self.chain,
            "signed": self.signed,
            "seconds": round(self.seconds, 3),
        }


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_json_default)
    except (orjson.JSONEncodeError, TypeError):  # integers beyond 64 bits: the stdlib writes them
        return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":")).encode()


@lru_cache(maxsize=256)
def _split_topic(topic: str) -> tuple[str, str]:
    path = topic.rpartition(":")[2]
    aggregate, _, event = path.rpartition(".")
    return aggregate or path, event or path


def _link(previous: bytes, content: bytes) -> bytes:
    return hashlib.sha256(previous + content).digest()


def _digest_signature(key: bytes, digest: dict[str, Any]) -> str:
    return hmac.new(key, orjson.dumps(digest, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()


def export_log(
    app: SyncApplication, org_id: str, output: Path, since: datetime | None = None
) -> ExportSummary:
    """Write every event of ``org_id`` (from ``since``) in log order to ``output`` as JSON lines."""
    started = _now()
    mapper = app.mapper
    cipher = mapper.cipher
    decrypt = mapper.decrypt if isinstance(mapper, KeyCheckingMapper) else (lambda state: state)
    output = check_output_file(str(output))  # never a directory, a device or a FIFO (never replaced)
    tmp = output.with_name(output.name + ".partial")
    try:
        handle: IO[bytes] = tmp.open("wb")
    except OSError as error:
        raise AuditError(f"cannot write {output}: {error.strerror}") from None
    try:
        return _write_export(app, org_id, output, since, tmp, handle, started, decrypt, cipher)
    finally:
        # Whatever failed (the database, the disk, an interrupt): no partial export, decrypted, is left.
        tmp.unlink(missing_ok=True)


def _write_export(
    app: SyncApplication,
    org_id: str,
    output: Path,
    since: datetime | None,
    tmp: Path,
    handle: IO[bytes],
    started: datetime,
    decrypt: Any,
    cipher: Any,
) -> ExportSummary:
    members: set[Any] = set()  # aggregates of this org (learned from their first event, in log order)
    link = GENESIS
    count = 0
    first: int | None = None
    last: int | None = None
    write = handle.write
    with handle, LogReader(app.database).snapshot() as reader:
        for position, oid, version, topic, raw_state in reader.raw_events():
            # The export's hot loop (1M events): ids stay raw unless exported, states are parsed in C and
            # only the few typed values at the top level are unwrapped (see _plain).
            in_org_topic = topic in ORG_TOPICS
            if not in_org_topic and oid not in members:
                continue
            state = bytes(raw_state)
            data = _plain(state if cipher is None else decrypt(state), app)
            if in_org_topic:
                if data.get("org_id") == org_id:
                    members.add(oid)
                elif oid not in members:
                    continue
            time_text = data.pop("timestamp", None)
            if time_text is not None and not time_text.endswith("+00:00"):
                time_text = iso(datetime.fromisoformat(time_text))
            if since is not None and (time_text is None or datetime.fromisoformat(time_text) < since):
                continue
            class_version = data.pop("class_version", 1)
            oid_bytes, oid_text = _uuid_parts(oid)
            aggregate_type, event_type = _split_topic(topic)
            content = _dumps(
                {
                    "position": position,
                    "time": time_text,
                    "aggregateId": oid_text,
                    "aggregateType": aggregate_type,
                    "eventType": event_type,
                    "version": version,
                    "classVersion": class_version,
                    "topic": topic,
                    "eventHash": event_hash_of_bytes(
                        position, oid_bytes, version, topic, sha256(state).digest()
                    ).hex(),
                    "data": data,
                }
            )
            link = sha256(link + content).digest()
            write(content[:-1] + _LINK_PREFIX + link.hex().encode() + b'"}\n')
            count += 1
            first = position if first is None else first
            last = position
        ledger_chain = reader.ledger_chain_at(last) if last is not None else None
        ledger_head = reader.ledger_head()
        digest: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "org": org_id,
            "since": iso(since),
            "events": count,
            "firstPosition": first,
            "lastPosition": last,
            "chain": link.hex(),
            "ledgerChainAtLastPosition": ledger_chain,
            "ledgerHead": ledger_head[0] if ledger_head else None,
            "exportedAt": iso(_now()),
        }
        key = audit_key()
        line: dict[str, Any] = {"digest": digest}
        if key:
            line["hmac"] = _digest_signature(key, digest)
        handle.write(orjson.dumps(line) + b"\n")
    check_output_file(str(output))  # again at the last moment: nothing else took the name meanwhile
    try:
        tmp.replace(output)
    except OSError as error:
        raise AuditError(f"cannot write {output}: {error.strerror}") from None
    return ExportSummary(
        path=str(output),
        events=count,
        first_position=first,
        last_position=last,
        chain=link.hex(),
        signed=key is not None,
        seconds=(_now() - started).total_seconds(),
    )


def _plain(state: bytes, app: SyncApplication) -> dict[str, Any]:
    """An event's stored state as plain JSON values: typed values (``{"_type_": ..., "_data_": ...}``, which
    wcsync's events hold only at the top level: the timestamp) become their text."""
    try:
        data: dict[str, Any] = orjson.loads(state)
    except orjson.JSONDecodeError as error:
        raise decrypt_error(app.mapper) from error
    for key, value in data.items():
        if type(value) is dict and "_type_" in value and "_data_" in value:
            inner = value["_data_"]
            data[key] = str(UUID(inner)) if value["_type_"] == "uuid_hex" else inner
    return data


def _uuid_parts(value: Any) -> tuple[bytes, str]:
    """(16 bytes, canonical text) of an aggregate id as the database returned it."""
    if isinstance(value, UUID):
        return value.bytes, str(value)
    text = str(value)
    if len(text) == 32:
        return bytes.fromhex(text), f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    parsed = UUID(text)
    return parsed.bytes, str(parsed)


def verify_export(path: Path) -> VerifyReport:
    """Check an export offline: each line's link, log order, and the closing digest (and its HMAC when
    WCSYNC_AUDIT_KEY is set). Streams the file."""
    report = VerifyReport(source=str(path))
    key = audit_key()
    link = GENESIS
    previous_position = 0
    digest_line: bytes | None = None
    try:
        handle = path.open("rb")
    except OSError as error:
        raise AuditError(f"cannot read {path}: {error.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n")
            if digest_line is not None:
                report.add(
                    Problem(previous_position, "export", f"line {number}: lines after the digest line")
                )
                break
            if line.startswith(b'{"digest"'):
                digest_line = line
                continue
            position = _line_position(line)
            if (
                position is None
                or len(line) < _LINK_SUFFIX_LEN
                or line[-_LINK_SUFFIX_LEN:][:9] != _LINK_PREFIX
            ):
                report.add(Problem(previous_position + 1, "export", f"line {number}: not an exported event"))
                break
            content = line[:-_LINK_SUFFIX_LEN] + b"}"
            stored_link = line[-_LINK_SUFFIX_LEN + 9 : -2].decode("ascii", "replace")
            link = _link(link, content)
            report.events += 1
            if position <= previous_position:
                report.add(
                    Problem(
                        position,
                        "export",
                        f"position {position} (line {number}): out of log order after position "
                        f"{previous_position} (lines swapped or moved)",
                    )
                )
                break
            if link.hex() != stored_link:
                report.add(
                    Problem(
                        position,
                        "export",
                        f"position {position} (line {number}): the line does not match its link: edited, "
                        "moved, or a line before it removed or inserted",
                    )
                )
                break
            previous_position = position
    report.ledger_head = previous_position
    report.chain_hash = link.hex()
    if report.ok:
        _check_digest(report, digest_line, link, key, previous_position)
    return report


def _check_digest(
    report: VerifyReport, digest_line: bytes | None, link: bytes, key: bytes | None, last_position: int
) -> None:
    if digest_line is None:
        report.add(Problem(last_position + 1, "export", "no digest line: the export is truncated"))
        return
    try:
        document = orjson.loads(digest_line)
        digest = document["digest"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        report.add(Problem(last_position + 1, "export", "the digest line is damaged"))
        return
    if digest.get("events") != report.events or digest.get("chain") != link.hex():
        report.add(
            Problem(
                last_position + 1,
                "export",
                f"the digest names {digest.get('events')} events ending in chain {str(digest.get('chain'))[:12]}…, "
                f"the file holds {report.events} ending in {link.hex()[:12]}…: lines removed at the end, "
                "or the digest edited",
            )
        )
        return
    signature = document.get("hmac")
    if signature:
        report.signed_checkpoints = 1
        if not key:
            report.notes.append("the digest is signed: set WCSYNC_AUDIT_KEY to check its signature")
        elif not hmac.compare_digest(str(signature), _digest_signature(key, digest)):
            report.add(
                Problem(
                    last_position + 1,
                    "export",
                    "the digest's signature does not match WCSYNC_AUDIT_KEY: the file was rewritten, "
                    "or signed with another key",
                )
            )
    elif key:
        report.notes.append("the digest is not signed (exported without WCSYNC_AUDIT_KEY)")


def _line_position(line: bytes) -> int | None:
    prefix = b'{"position":'
    if not line.startswith(prefix):
        return None
    end = line.find(b",", len(prefix))
    try:
        return int(line[len(prefix) : end])
    except ValueError:
        return None


# ----- a queue's timeline --------------------------------------------------------------------------------


def _load_queue_events(app: SyncApplication, org_id: str, queue_id: UUID) -> Iterator[Any]:
    events = app.queue_events(queue_id)
    first = next(events, None)
    if not isinstance(first, SyncQueue.Created) or first.org_id != org_id:
        raise QueueNotFoundError(
            f"no queue {queue_id} in org {org_id!r}; `wcsync queues` lists the org's queues"
        )
    yield first
    yield from events


def timeline_rows(event: Any) -> list[dict[str, Any]]:
    """What one queue event did, as timeline rows: time, event, lines, outcome, message (domain.narrative's
    words)."""
    return [_timeline_row(event, entry.step) for entry in narrative.describe(event) if entry.step is not None]


def _timeline_row(event: Any, step: narrative.Step) -> dict[str, Any]:
    row = {
        "time": iso(event.timestamp),
        "event": type(event).__name__,
        "version": event.originator_version,
        "lines": list(step.lines),
        "outcome": step.outcome,
        "message": step.message,
    }
    if step.details:
        row["details"] = dict(step.details)
    return row


def queue_state(queue: SyncQueue) -> dict[str, Any]:
    """A queue's status with the seed API's keys (as `wcsync status --json`), from the aggregate."""
    return status.queue_status(
        queue_id=str(queue.id),
        queue_name=queue.queue_name,
        org_id=queue.org_id,
        store_url=queue.store_url,
        state=queue.state,
        counts=queue.counts(),
        progress=queue.progress,
        process_count=queue.process_count,
        is_action_required=queue.is_action_required,
        action_required_reason=queue.action_required_reason,
        last_process_date=iso(queue.last_process_date),
        created_at=iso(queue.created_on),
        version=queue.version,
    )


def queue_timeline(
    app: SyncApplication, org_id: str, queue_id: UUID, as_of: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """The queue's timeline rows in order (up to ``as_of``); with ``as_of`` a last row {"asOf", "status"}
    gives its state then, replayed from its events (snapshots ignored)."""
    aggregate: Any = None
    for event in _load_queue_events(app, org_id, queue_id):
        if as_of is not None and event.timestamp > as_of:
            break
        if as_of is not None:
            aggregate = event.mutate(aggregate)
        yield from timeline_rows(event)
    if as_of is not None:
        if aggregate is None:
            raise AuditError(f"queue {queue_id} did not exist yet at {iso(as_of)}")
        yield {"asOf": iso(as_of), "status": queue_state(aggregate)}


# ----- a customer's history ------------------------------------------------------------------------------


# The events a customer's line can be named in (domain.narrative says which): the others are not decoded.
_LINE_TOPICS = frozenset(get_topic(cls) for cls in narrative.LINE_EVENTS)


def _queue_line_history(app: SyncApplication, queue_id: UUID, woo_id: int) -> list[dict[str, Any]]:
    """This customer's line in one queue: every event that named it (only those events are decoded), in
    domain.narrative's words for one line."""
    entries: list[dict[str, Any]] = []
    position = 0
    while True:
        stored: Sequence[StoredEvent] = app.recorder.select_events(queue_id, gt=position, limit=500)
        if not stored:
            return entries
        for item in stored:
            if item.topic not in _LINE_TOPICS:
                continue
            event = app.mapper.to_domain_event(item)
            for step in narrative.line_steps(event, woo_id):
                entries.append(_timeline_row(event, step) | {"queueId": str(queue_id)})
        position = stored[-1].originator_version


_RECEIVED_TOPIC = get_topic(WebhookDelivery.Received)


def _delivery_of(app: SyncApplication, writer: str) -> dict[str, Any] | None:
    """The webhook delivery a customer event's writer id names (its key, topic, WooCommerce's delivery and
    webhook ids, when it was received), or None when the writer is a queue."""
    try:
        first = app.recorder.select_events(UUID(writer), limit=1)
    except ValueError:
        return None
    if not first or first[0].topic != _RECEIVED_TOPIC:
        return None
    received: Any = app.mapper.to_domain_event(first[0])
    return {
        "deliveryKey": writer,
        "topic": received.topic,
        "deliveryId": received.delivery_id,
        "webhookId": received.webhook_id,
        "receivedAt": iso(received.timestamp),
    }


def customer_history(services: Any, org_id: str, woo_id: int, store_url: str | None) -> dict[str, Any]:
    app: SyncApplication = services.app
    services.catch_up()
    if store_url is None:
        stores = queries.org_stores(services.projections, org_id)
        if len(stores) != 1:
            raise AuditError(
                f"org {org_id!r} has {'no stores' if not stores else str(len(stores)) + ' stores'}"
                + (f" ({', '.join(stores)})" if stores else "")
                + ": pass --store URL"
            )
        store_url = stores[0]
    key = customer_key(org_id, store_url, woo_id)
    history: list[dict[str, Any]] = []
    record: dict[str, Any] | None = None
    summary: dict[str, Any] = {
        "wooId": woo_id,
        "orgId": org_id,
        "storeUrl": store_url,
        "customerKey": str(key),
        "firstSyncedAt": None,
        "firstQueueId": None,
        "lastChangedAt": None,
        "deleted": False,
        "deletedAt": None,
        "version": 0,
    }
    writers: dict[str, dict[str, Any] | None] = {}
    for stored in app.recorder.select_events(key):
        event: Any = app.mapper.to_domain_event(stored)
        entry: dict[str, Any] = {
            "time": iso(event.timestamp),
            "event": type(event).__name__,
            "version": event.originator_version,
            "queueId": str(event.queue_id),
        }
        if event.queue_id not in writers:
            writers[event.queue_id] = _delivery_of(app, event.queue_id)
        delivery = writers[event.queue_id]
        if delivery is not None:
            # A webhook delivery wrote this change, not a queue: the entry names the delivery instead.
            entry["queueId"] = None
            entry["webhookDelivery"] = delivery
        if isinstance(event, Customer.Registered):
            record = dict(event.record)
            entry["record"] = record
            summary.update(
                firstSyncedAt=entry["time"], firstQueueId=entry["queueId"], lastChangedAt=entry["time"]
            )
        elif isinstance(event, Customer.Changed):
            old = record or {}
            new = dict(event.record)
            fields = sorted(
                set(event.fields)
                | {k for k in set(old) | set(new) if k != "_links" and old.get(k) != new.get(k)}
            )
            entry["fields"] = fields
            entry["changes"] = {name: {"old": old.get(name), "new": new.get(name)} for name in fields}
            record = new
            summary.update(lastChangedAt=entry["time"], deleted=False, deletedAt=None)
        elif isinstance(event, Customer.Deleted):
            entry["reason"] = event.reason
            summary.update(deleted=True, deletedAt=entry["time"])
        summary["version"] = event.originator_version
        history.append(entry)
    lines = [
        row
        for queue_id in queries.queues_with_line(services.projections, org_id, store_url, woo_id)
        for row in _queue_line_history(app, queue_id, woo_id)
    ]
    lines.sort(key=lambda r: r["time"])
    if not history and not lines:
        raise AuditError(f"customer {woo_id} of {store_url} was never synced in org {org_id!r}")
    return {
        "customer": summary,
        "history": history,
        "failures": [row for row in lines if row["outcome"] == "failed"],
        "lines": lines,
    }
