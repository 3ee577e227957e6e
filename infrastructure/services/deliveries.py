"""WooCommerce webhook deliveries: receiving them (`wcsync serve`'s receiver) and applying them (a worker).

Receiving (``WebhookReceiver.receive``): the delivery's signature is its only authentication (WooCommerce
sends no token), so it is checked first, in constant time, against the store's own webhook secret; a
missing or wrong one is refused (401), counted, and recorded as a store incident that names the reason,
never the body. A good delivery is checked like a fetched record and made durable (a
``WebhookDelivery.Received`` event) before the answer: WooCommerce never sends it again, so what was
answered 200 must not be lost. A delivery recorded before (same topic, customer and body) is answered
200 and recorded once. Nothing else happens in the request: applying is a worker's job.

Applying (``DeliveryApplier.step``): the deliveries not yet applied, in the order they were recorded (the
log's), each applied to its ``Customer`` with the same checks and digest as a sync, the customer's events
and the delivery's outcome saved in one transaction. Saved together, a delivery is applied once: a second
applier (another worker, the same one after a crash) finds it applied, or loses the race to save.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import orjson
import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from domain.customer import Customer, customer_key
from domain.errors import WcsyncError
from domain.validation import MAX_RECORD_BYTES, RejectedRecord, check_record, customer_id_of, describe_id
from domain.webhook import DELETED, TOPICS, RefusedDeliveries, WebhookDelivery
from infrastructure.adapters.eventstore import ConcurrentWriteError, SyncApplication
from infrastructure.adapters.schema import iso
from infrastructure.adapters.transcoder import canonical_bytes
from infrastructure.services.stores import WebhookTarget
from infrastructure.support.errors import storage_failures
from infrastructure.support.metrics import PROCESS

log = structlog.get_logger("wcsync.webhooks")

SIGNATURE_HEADER = "X-WC-Webhook-Signature"
TOPIC_HEADER = "X-WC-Webhook-Topic"
DELIVERY_ID_HEADER = "X-WC-Webhook-Delivery-ID"
WEBHOOK_ID_HEADER = "X-WC-Webhook-ID"
# A customer record is at most MAX_RECORD_BYTES canonical; its JSON as WooCommerce writes it (escaped
# slashes, indentation of none) stays well within twice that. Anything larger is not a customer delivery.
MAX_DELIVERY_BYTES = 2 * MAX_RECORD_BYTES
# WooCommerce's ping (WC_Webhook::deliver_ping): a form body naming the webhook, nothing else.
_PING = re.compile(rb"webhook_id=\d{1,20}")
# At most one incident event per store this often; the requests refused meanwhile are counted into it.
REFUSAL_PERIOD_S = 60.0
_MAX_HEADER_CHARS = 200
MAX_APPLY_ATTEMPTS = 5
# The applier's turn (one of all workers) is claimed again this often; a holder silent for
# APPLIER_STALE_S is taken over (at once when it was a process of this host that died).
CLAIM_EVERY_S = 2.0
APPLIER_STALE_S = 10.0
POSITION_EVERY_S = 5.0
# A delivery whose apply failed this many times (not a conflict, not the database) is failed with the
# error, so one delivery cannot hold up every later one of every org.
MAX_DELIVERY_ERRORS = 3
# What every customer record WooCommerce sends has besides its id (a created/updated body lacking one is
# not a customer record: a deletion's body replayed, say).
_RECORD_FIELDS = ("email", "billing", "shipping")
_RECEIVED_TOPIC = get_topic(WebhookDelivery.Received)


class UnknownStoreError(WcsyncError):
    """A delivery for a store id no org has registered (or one removed)."""

    http_status = 404
    error_code = "not_found"

    def __init__(self, store_id: UUID) -> None:
        super().__init__(f"no registered store {store_id}")


class SignatureRefused(WcsyncError):
    """A delivery whose signature is missing or is not the store's: 401, the reason in general words."""

    http_status = 401
    error_code = "bad_signature"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class DeliveryTooLarge(WcsyncError):
    http_status = 413
    error_code = "body_too_large"

    def __init__(self) -> None:
        super().__init__(f"a webhook delivery is at most {MAX_DELIVERY_BYTES} bytes")


class DeliveryConflict(WcsyncError):
    """Other writers kept changing a delivery's customer while it was applied: tried again next step."""

    def __init__(self, delivery_id: UUID) -> None:
        super().__init__(
            f"webhook delivery {delivery_id}: its customer kept changing under {MAX_APPLY_ATTEMPTS} attempts"
        )


def not_the_deliverys() -> tuple[type[BaseException], ...]:
    """Failures no delivery is to blame for, for an except clause: never counted towards
    MAX_DELIVERY_ERRORS."""
    return (*storage_failures(), DeliveryConflict)


@dataclass(frozen=True)
class Receipt:
    """What the receiver did: ``outcome`` recorded | duplicate | ping; the delivery's id when recorded."""

    outcome: str
    delivery: UUID | None = None


def signature_of(secret: str, body: bytes) -> str:
    """WooCommerce's signature of a body: base64 of the raw HMAC-SHA256 keyed with the webhook secret."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value as recorded: printable ASCII only (anything else, e.g. the lone surrogates aiohttp
    makes of bytes that are not UTF-8, would not even store), trimmed, at most _MAX_HEADER_CHARS."""
    value = headers.get(name)
    if not isinstance(value, str):
        return ""
    return "".join(c if " " <= c <= "~" else "?" for c in value.strip()[:_MAX_HEADER_CHARS])


def _webhook_id(headers: Mapping[str, str]) -> int | None:
    text = _header(headers, WEBHOOK_ID_HEADER)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


class _Refusals:
    """The requests refused per store, turned into at most one incident event per REFUSAL_PERIOD_S."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # store id -> (time the last incident was recorded, requests refused since, first of them)
        self._stores: dict[UUID, tuple[float, int, float]] = {}

    def refused(self, store_id: UUID) -> tuple[int, float] | None:
        """Count one refusal; (count, first refusal time) when an incident is due now, else None."""
        now = self.clock()
        with self._lock:
            recorded_at, count, first = self._stores.get(store_id, (float("-inf"), 0, now))
            count += 1
            if now - recorded_at >= REFUSAL_PERIOD_S:
                self._stores[store_id] = (now, 0, now)
                return count, first
            self._stores[store_id] = (recorded_at, count, first if count > 1 else now)
            return None


class WebhookReceiver:
    """`wcsync serve`'s side of the deliveries: check, record, answer. ``target``: a store by id as the
    registry knows it (None: no such store)."""

    def __init__(
        self,
        app: SyncApplication,
        target: Callable[[UUID], WebhookTarget | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.target = target
        self._refusals = _Refusals(clock)

    def receive(self, store_id: UUID, headers: Mapping[str, str], body: bytes) -> Receipt:
        """Check one request to the store's receiver and record the delivery it carries. Raises
        UnknownStoreError (404), SignatureRefused (401), DeliveryTooLarge (413); a storage error
        propagates (the store counts a failure: nothing was acknowledged)."""
        store = self.target(store_id)
        if store is None:
            PROCESS.webhook_request("unknown_store")
            raise UnknownStoreError(store_id)
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature and not _header(headers, TOPIC_HEADER) and _PING.fullmatch(body.strip()):
            PROCESS.webhook_request("ping")
            log.info("webhooks.ping", store_id=str(store_id), webhook_id=body.strip()[11:].decode())
            return Receipt("ping")
        if not signature:
            self._refuse(store, "the request has no X-WC-Webhook-Signature")
        if store.secret is None:
            self._refuse(store, "no webhook of this store was installed by wcsync (it has no webhook secret)")
        assert store.secret is not None
        if not hmac.compare_digest(
            signature.encode("ascii", "replace"), signature_of(store.secret, body).encode()
        ):
            self._refuse(store, "the signature is not the store's webhook secret's for this body")
        if len(body) > MAX_DELIVERY_BYTES:
            raise DeliveryTooLarge()
        delivery = self._delivery(store, headers, body)
        try:
            self.app.save_batch(delivery)
        except ConcurrentWriteError:
            PROCESS.webhook_request("duplicate")
            log.info("webhooks.duplicate", store_id=str(store_id), delivery=str(delivery.id))
            return Receipt("duplicate", delivery.id)
        PROCESS.webhook_request("recorded")
        log.info(
            "webhooks.recorded",
            store_id=str(store_id),
            delivery=str(delivery.id),
            topic=delivery.topic,
            customer_id=delivery.woo_id,
        )
        return Receipt("recorded", delivery.id)

    def _refuse(self, store: WebhookTarget, reason: str) -> None:
        PROCESS.webhook_request("refused")
        log.warning("webhooks.refused", store_id=str(store.store_id), reason=reason)
        due = self._refusals.refused(store.store_id)
        if due is not None:
            count, first = due
            incident = RefusedDeliveries(
                org_id=store.org_id,
                store_id=str(store.store_id),
                reason=reason,
                count=count,
                first_at=iso(datetime.fromtimestamp(first, UTC)),
            )
            try:
                self.app.save_batch(incident)
            except Exception as error:  # the refusal is answered either way; its record is best effort
                log.warning("webhooks.incident_not_recorded", store_id=str(store.store_id), error=str(error))
        raise SignatureRefused(reason)

    def _delivery(self, store: WebhookTarget, headers: Mapping[str, str], body: bytes) -> WebhookDelivery:
        topic = _header(headers, TOPIC_HEADER)
        checked = _checked(topic, body)
        return WebhookDelivery(
            org_id=store.org_id,
            store_id=str(store.store_id),
            store_url=store.url,
            topic=topic,
            woo_id=checked.woo_id,
            record=checked.record,
            problem=checked.problem,
            excerpt=checked.excerpt,
            body_digest=hashlib.sha256(body).hexdigest(),
            delivery_id=_header(headers, DELIVERY_ID_HEADER),
            webhook_id=_webhook_id(headers),
        )


class _Checked(NamedTuple):
    """A delivery's body as checked: its customer's id (None: no usable one), the record as it may be stored,
    or why it cannot be applied and a bounded excerpt of it."""

    woo_id: int | None
    record: dict[str, Any] | None
    problem: str | None = None
    excerpt: str | None = None


def _checked(topic: str, body: bytes) -> _Checked:
    """A delivery's body parsed once and checked as a fetched record is."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _Checked(None, None, "the body is not JSON", body[:300].decode("utf-8", "replace"))
    woo_id = customer_id_of(raw)
    if topic not in TOPICS:
        return _Checked(woo_id, None, f"topic {topic!r} is not one of {', '.join(TOPICS)}")
    if woo_id is None:
        return _Checked(None, None, f"id: {describe_id(raw)}")
    # The signature covers the body, not the topic header: a body must be what its topic sends, so a
    # signed body replayed under another topic does nothing (a deletion's is {"id": N} and only that).
    if topic == DELETED:
        if set(raw) != {"id"}:
            return _Checked(woo_id, None, 'a customer.deleted body is {"id": N} and nothing else')
        return _Checked(woo_id, {"id": woo_id})
    missing = [name for name in _RECORD_FIELDS if name not in raw]
    if missing:
        return _Checked(
            woo_id, None, f"a {topic} body is a whole customer record; it has no {', '.join(missing)}"
        )
    checked = check_record(raw, canonical_bytes)
    if isinstance(checked, RejectedRecord):
        return _Checked(woo_id, None, checked.error, checked.excerpt)
    return _Checked(woo_id, checked)


class DeliveryApplier:
    """A worker's step that applies the recorded deliveries, in order, from a position it keeps."""

    def __init__(
        self,
        app: SyncApplication,
        load_position: Callable[[], int],
        save_position: Callable[[int], object],
        on_applied: Callable[[], None] | None = None,
        batch: int = 100,
        claim: Callable[[], bool] | None = None,
        release: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.load_position = load_position
        self.save_position = save_position
        self.on_applied = on_applied
        self.batch = batch
        # One applier at a time of all workers (``claim``: take or keep the turn, refreshing its heartbeat),
        # looked at every CLAIM_EVERY_S; None: this one always applies (a test, the demo).
        self.claim = claim
        self.release = release
        self.clock = clock
        self._position: int | None = None
        self._turn_until = float("-inf")  # this applier's turn is known to be its own until then
        self._saved_at = float("-inf")
        self._failures: dict[UUID, int] = {}

    def _my_turn(self) -> bool:
        if self.claim is None:
            return True
        now = self.clock()
        if now < self._turn_until:
            return True
        if self.claim():
            self._turn_until = now + CLAIM_EVERY_S
            return True
        self._position = None  # another applier moves the position meanwhile: read it again on our turn
        self._turn_until = float("-inf")
        return False

    def _still_my_turn(self) -> bool:
        """Between two batches of one step: the turn's heartbeat renewed (a step longer than
        APPLIER_STALE_S would look stale to the others); False when another applier took it."""
        if self.claim is None:
            return True
        self._turn_until = float("-inf")
        return self._my_turn()

    def close(self) -> None:
        """Give the turn up (a worker stopping): another applier takes it at its next look."""
        if self.release is not None and self._turn_until > float("-inf"):
            try:
                self.release()
            except Exception as error:  # its heartbeat goes stale anyway
                log.warning("webhooks.release_failed", error=str(error)[:200])

    def step(self) -> int:
        """Apply what was recorded since the last step, when it is this applier's turn; how many deliveries
        it applied or failed. A storage error propagates, the position kept at the last delivery done: the
        next step starts there."""
        if not self._my_turn():
            return 0
        if self._position is None:
            self._position = self.load_position()
        head = int(self.app.recorder.max_notification_id() or 0)
        done = 0
        start = self._position
        try:
            while start < head:
                found = self.app.recorder.select_notifications(
                    start, self.batch, stop=head, topics=[_RECEIVED_TOPIC], inclusive_of_start=False
                )
                together = self._apply_together([UUID(str(n.originator_id)) for n in found])
                if together is not None:
                    done += together
                    start = found[-1].id if found else start
                else:  # another writer changed one of their customers meanwhile: one at a time
                    for notification in found:
                        if self._apply_alone(UUID(str(notification.originator_id))):
                            done += 1
                        start = notification.id
                if len(found) < self.batch:
                    start = head
                elif not self._still_my_turn():  # a long backlog: the turn renewed between batches
                    break
        finally:
            # Saved when a delivery was applied, else at most every POSITION_EVERY_S: a busy log moves it
            # every step, and a position a little behind only means a few notifications read again.
            if start != self._position:
                self._position = start
                if done or self.clock() - self._saved_at >= POSITION_EVERY_S:
                    self.save_position(start)
                    self._saved_at = self.clock()
            if done and self.on_applied is not None:
                self.on_applied()
        return done

    def _apply_together(self, delivery_ids: list[UUID]) -> int | None:
        """Apply these deliveries in order in one transaction (a burst of them costs one commit, not one
        each: the event store's insert lock is taken once); how many it applied, or None when another
        writer got there first or one of them fails (nothing of it is saved: the caller applies them one
        at a time)."""
        try:
            return self._together(delivery_ids)
        except storage_failures():  # the database's own: the next step tries again
            raise
        except Exception as error:  # one delivery that cannot be applied: found one at a time
            log.warning("webhooks.apply_together_failed", error=type(error).__name__)
            return None

    def _together(self, delivery_ids: list[UUID]) -> int | None:
        deliveries: list[WebhookDelivery] = []
        for delivery_id in delivery_ids:
            try:
                delivery: WebhookDelivery = self.app.repository.get(delivery_id)
            except AggregateNotFoundError:
                continue
            if delivery.pending:
                deliveries.append(delivery)
        if not deliveries:
            return 0
        keys = {d.id: self._key(d) for d in deliveries}
        wanted = sorted({key for key in keys.values() if key is not None})
        customers: dict[UUID, Customer | None] = dict.fromkeys(wanted)
        customers.update(self.app.load_customers(wanted))
        changed: dict[UUID, Customer] = {}
        for delivery in deliveries:
            key = keys[delivery.id]
            customer = delivery.apply_to(None if key is None else customers.get(key), _digest_of(delivery))
            if customer is not None and key is not None:
                customers[key] = changed[key] = customer  # the next delivery of it applies on top
        try:
            self.app.save_batch(*deliveries, *(c for c in changed.values() if c.pending_events))
        except ConcurrentWriteError:
            log.info("webhooks.apply_conflict", deliveries=len(deliveries))
            return None
        for delivery in deliveries:
            log.info(
                "webhooks.applied",
                delivery=str(delivery.id),
                topic=delivery.topic,
                customer_id=delivery.woo_id,
                outcome=delivery.outcome,
            )
        return len(deliveries)

    def _apply_alone(self, delivery_id: UUID) -> bool:
        """``_apply``, and a delivery that keeps failing for a reason of its own (not the database's) is
        failed with the error after MAX_DELIVERY_ERRORS attempts, so it holds up no later delivery."""
        try:
            applied = self._apply(delivery_id)
        except not_the_deliverys():  # the database's, or other writers': tried again next step
            raise
        except Exception as error:
            count = self._failures[delivery_id] = self._failures.get(delivery_id, 0) + 1
            log.warning(
                "webhooks.apply_failed", delivery=str(delivery_id), attempt=count, error=type(error).__name__
            )
            if count < MAX_DELIVERY_ERRORS:
                raise
            delivery: WebhookDelivery = self.app.repository.get(delivery_id)
            delivery.fail(f"could not be applied: {type(error).__name__}: {str(error)[:200]}")
            self.app.save_batch(delivery)
            applied = True
        self._failures.pop(delivery_id, None)
        return applied

    def _apply(self, delivery_id: UUID) -> bool:
        """Apply one delivery (True) unless it was already (False). A customer another writer changed
        meanwhile (a sync's batch) is reloaded and the delivery applied again on top of it."""
        for attempt in range(1, MAX_APPLY_ATTEMPTS + 1):
            applied = self._together([delivery_id])
            if applied is not None:
                return applied > 0
            log.info("webhooks.apply_conflict", delivery=str(delivery_id), attempt=attempt)
        raise DeliveryConflict(delivery_id)

    @staticmethod
    def _key(delivery: WebhookDelivery) -> UUID | None:
        if delivery.woo_id is None:
            return None
        return customer_key(delivery.org_id, delivery.store_url, delivery.woo_id)


def _digest_of(delivery: WebhookDelivery) -> str | None:
    """The SHA-256 of a created/updated delivery's record in canonical form (as a sync digests one)."""
    if delivery.record is None or delivery.topic == DELETED:
        return None
    return hashlib.sha256(canonical_bytes(delivery.record)).hexdigest()
