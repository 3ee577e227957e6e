"""A WooCommerce store an org has registered, as an event-sourced aggregate: the registry's history.

Its id is derived from (org, URL), so registering one store twice writes version 1 of the same aggregate
twice: the event store lets one win, and a store removed then registered again is the same aggregate
(``Restored``), not a second one. The URL comes normalised by the caller.

The events say who registered, rotated or removed the store, when, its URL and a fingerprint of its key,
never the key or the secret themselves: those live encrypted in a table of their own, so that removing a
store really removes its secret (an event is never deleted).

Pure domain: stdlib and eventsourcing.domain only.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain import bounds
from domain.errors import StoreExistsError, StoreNotFoundError

STORE_NAMESPACE = UUID("3c1d9a6e-5b2f-4e8a-9d47-1f6b0c2e7a93")

# A key's fingerprint: a short caller-made digest (e.g. the first 12 hex digits of the consumer key's
# SHA-256), enough to tell which key a store was registered with, never enough to recover it.
MAX_FINGERPRINT_LENGTH = 64
# A store's base URL, as the caller normalised it.
MAX_URL_LENGTH = 2048


def store_key(org_id: str, url: str) -> UUID:
    """The id of the org's store at ``url`` (normalised by the caller): the same for every registration."""
    return uuid5(STORE_NAMESPACE, f"{org_id}\x1f{url}")


WEBHOOK_ACTIVE = "active"


def webhook_problem(statuses: dict[str, str]) -> str | None:
    """The action-required reason for installed webhooks not all active (topic -> status), else None."""
    if not statuses:
        return None
    listed = ", ".join(f"{topic} {status}" for topic, status in sorted(statuses.items()))
    disabled = (
        " (WooCommerce disables a webhook after more than 5 failed deliveries in a row)"
        if ("disabled" in statuses.values())
        else ""
    )
    return (
        f"webhooks not active in the store: {listed}{disabled}; changes are not pushed until they are: "
        "check that `wcsync serve` is reachable at the delivery URL, then run `wcsync webhooks install` "
        "again (scheduled scans still reconcile meanwhile)"
    )


def check_fingerprint(value: Any, field: str = "key_fingerprint") -> str:
    """A key fingerprint: a non-empty string of at most MAX_FINGERPRINT_LENGTH printable characters, no space."""
    text = bounds.check_identifier(value, field)
    if len(text) > MAX_FINGERPRINT_LENGTH:
        raise bounds.BoundError(
            field, f"must be at most {MAX_FINGERPRINT_LENGTH} characters, got {len(text)}"
        )
    if " " in text:
        raise bounds.BoundError(field, "must not contain a space")
    return text


class Store(Aggregate):
    """A registered store: ``Registered`` -> (``CredentialsRotated``)* -> ``Removed`` -> ``Restored`` -> ..."""

    class_version = 1

    class Event(Aggregate.Event):
        class_version = 1

    class Registered(Event, Aggregate.Created):
        org_id: str
        url: str
        name: str
        key_fingerprint: str
        actor: str  # who registered it

    class CredentialsRotated(Event):
        key_fingerprint: str
        actor: str

    class Removed(Event):
        actor: str

    class Restored(Event):
        """Registered again after it was removed (new credentials, perhaps a new name)."""

        name: str
        key_fingerprint: str
        actor: str

    class WebhooksInstalled(Event):
        """wcsync's customer webhooks were created (or brought back to active) in the store."""

        delivery_url: str
        actor: str

    class WebhooksUninstalled(Event):
        actor: str

    class WebhookStatusSeen(Event):
        """An installed webhook was seen in a status other than the last recorded (WooCommerce disables a
        webhook after more than 5 consecutive failed deliveries; someone may pause or delete it)."""

        org_id: str
        topic: str
        status: str  # active | paused | disabled | missing
        actor: str

    @staticmethod
    def create_id(org_id: str, url: str, **_: Any) -> UUID:
        return store_key(org_id, url)

    @classmethod
    def register(cls, org_id: str, url: str, name: str, key_fingerprint: str, actor: str) -> Store:
        """A new store of the org (each value checked against domain.bounds; a BoundError names the field)."""
        return cls(
            org_id=bounds.check_identifier(org_id, "org_id"),
            url=bounds.check_text(url, "url", MAX_URL_LENGTH),
            name=bounds.check_text(name, "name"),
            key_fingerprint=check_fingerprint(key_fingerprint),
            actor=bounds.check_text(actor, "actor"),
        )

    @event(Registered)
    def __init__(self, org_id: str, url: str, name: str, key_fingerprint: str, actor: str) -> None:
        self.org_id = org_id
        self.url = url
        self.name = name
        self.key_fingerprint = key_fingerprint
        self.registered_by = actor
        self.removed = False
        self.webhooks_installed = False
        self.webhook_status: dict[str, str] = {}

    # ----- commands ------------------------------------------------------------------------------------

    def rotate(self, key_fingerprint: str, actor: str) -> None:
        """New credentials for the store (recorded even when the key's fingerprint is the same: the secret
        may have changed)."""
        self._check_present()
        self._credentials_rotated(
            key_fingerprint=check_fingerprint(key_fingerprint), actor=bounds.check_text(actor, "actor")
        )

    @event(CredentialsRotated)
    def _credentials_rotated(self, key_fingerprint: str, actor: str) -> None:
        self.key_fingerprint = key_fingerprint

    def remove(self, actor: str) -> None:
        """Remove the store from the registry; a store already removed is no such store."""
        self._check_present()
        self._removed(actor=bounds.check_text(actor, "actor"))

    @event(Removed)
    def _removed(self, actor: str) -> None:
        self.removed = True
        # Its secrets go with it: webhooks installed before sign with a secret no longer kept.
        self.webhooks_installed = False
        self.webhook_status = {}

    def restore(self, name: str, key_fingerprint: str, actor: str) -> None:
        """Register a removed store again; one that is registered already is refused (StoreExistsError)."""
        if not self.removed:
            raise StoreExistsError(self.id, self.org_id, self.url)
        self._restored(
            name=bounds.check_text(name, "name"),
            key_fingerprint=check_fingerprint(key_fingerprint),
            actor=bounds.check_text(actor, "actor"),
        )

    @event(Restored)
    def _restored(self, name: str, key_fingerprint: str, actor: str) -> None:
        self.name = name
        self.key_fingerprint = key_fingerprint
        self.registered_by = actor
        self.removed = False

    def webhooks_installed_at(self, delivery_url: str, actor: str) -> None:
        """The store's webhooks were installed (all active, delivering to ``delivery_url``)."""
        self._check_present()
        self._webhooks_installed(
            delivery_url=bounds.check_text(delivery_url, "delivery_url", MAX_URL_LENGTH),
            actor=bounds.check_text(actor, "actor"),
        )

    @event(WebhooksInstalled)
    def _webhooks_installed(self, delivery_url: str, actor: str) -> None:
        self.webhooks_installed = True
        self.webhook_status = {}

    def webhooks_uninstalled(self, actor: str) -> None:
        self._check_present()
        if self.webhooks_installed:
            self._webhooks_uninstalled(actor=bounds.check_text(actor, "actor"))

    @event(WebhooksUninstalled)
    def _webhooks_uninstalled(self, actor: str) -> None:
        self.webhooks_installed = False
        self.webhook_status = {}

    def saw_webhook(self, topic: str, status: str, actor: str) -> bool:
        """Record an installed webhook's status when it is not the last recorded (active after an install);
        True when it was recorded. Nothing for a store without installed webhooks."""
        if self.removed or not self.webhooks_installed:
            return False
        if self.webhook_status.get(topic, WEBHOOK_ACTIVE) == status:
            return False
        self._webhook_status_seen(
            org_id=self.org_id,
            topic=bounds.check_text(topic, "topic"),
            status=bounds.check_text(status, "status"),
            actor=bounds.check_text(actor, "actor"),
        )
        return True

    @event(WebhookStatusSeen)
    def _webhook_status_seen(self, org_id: str, topic: str, status: str, actor: str) -> None:
        if status == WEBHOOK_ACTIVE:
            self.webhook_status.pop(topic, None)
        else:
            self.webhook_status[topic] = status

    def webhooks_action_required(self) -> str | None:
        """Why the store's webhooks need an operator (None: none, or none installed)."""
        return webhook_problem(self.webhook_status)

    def _check_present(self) -> None:
        if self.removed:
            raise StoreNotFoundError(self.id, self.org_id)
