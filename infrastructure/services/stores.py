"""The store registry's use cases: register a store (checked against the store first), list, remove,
rotate the secrets' key, and the credentials a sync of a registered store runs with.

Two things are kept, each where it belongs: the ``Store`` aggregate's events (who registered, rotated or
removed which URL when, and the consumer key's fingerprint: never a secret), and the credentials
themselves, encrypted under WCSYNC_SECRET_KEY in a table of their own (infrastructure.adapters.secrets),
so removing a store really removes its secret. The secret is written first and the event second; if the
event cannot be saved the secret is deleted again, so nothing is left half-registered.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
import structlog
from eventsourcing.application import AggregateNotFoundError

from domain.errors import StoreNotFoundError
from domain.store import Store, store_key
from infrastructure.adapters.eventstore import ConcurrentWriteError, SyncApplication
from infrastructure.adapters.secrets import SecretKey, StoreSecrets
from infrastructure.support.config import StoreSettings, check_store_url
from infrastructure.support.errors import ConfigurationError
from projections import queries
from projections.runner import ProjectionRunner

if TYPE_CHECKING:
    from infrastructure.adapters.woocommerce import StoreCredentials

log = structlog.get_logger("wcsync.stores")

# One request to the store with the given credentials (read access), raising StoreError when refused.
StoreCheck = Callable[[str, "StoreCredentials"], Awaitable[None]]


def key_fingerprint(consumer_key: str) -> str:
    """What the registry shows and records of a consumer key: enough to tell two keys apart, nothing to
    use (the first 12 hex digits of its SHA-256)."""
    return hashlib.sha256(consumer_key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class WebhookTarget:
    """A registered store as its webhook receiver sees it. The secret is never shown (repr)."""

    org_id: str
    store_id: UUID
    url: str
    secret: str | None = field(repr=False)


class StoreRegistry:
    """The registered stores of every org (each call names its org; another org's store is not found)."""

    def __init__(
        self,
        app: SyncApplication,
        projections: ProjectionRunner,
        secrets: StoreSecrets | None,
        check_store: StoreCheck | None,
        catch_up: Callable[[], None],
    ) -> None:
        self.app = app
        self.projections = projections
        self.secrets = secrets
        self.check_store = check_store
        self.catch_up = catch_up

    async def add(
        self, org_id: str, url: str, consumer_key: str, consumer_secret: str, name: str | None, actor: str
    ) -> dict[str, Any]:
        """Register a store (or give a registered one new credentials, or bring back a removed one) after
        one request to it with those credentials. Returns the store as ``list`` shows it, plus ``action``:
        registered | rotated | restored."""
        url = check_store_url(url)
        if not consumer_key or not consumer_secret:
            raise ConfigurationError(
                "the store's consumer key and secret are both needed (WOO_CONSUMER_KEY, WOO_CONSUMER_SECRET)"
            )
        if self.check_store is None:
            raise ConfigurationError("this command cannot check a store (no store client)")
        from infrastructure.adapters.woocommerce import (
            StoreCredentials,  # the HTTP client: only to add a store
        )

        await self.check_store(url, StoreCredentials(consumer_key, consumer_secret))
        store_id = store_key(org_id, url)
        fingerprint = key_fingerprint(consumer_key)
        store = self._get(store_id)
        if store is None:
            store, action = Store.register(org_id, url, name or url, fingerprint, actor), "registered"
        elif store.removed:
            store.restore(name or store.name, fingerprint, actor)
            action = "restored"
        else:
            store.rotate(fingerprint, actor)
            action = "rotated"
        previous = self._secrets().get(org_id, str(store_id))
        # New credentials keep the webhook secret: the store's installed webhooks sign with it.
        webhook = _webhook_secret_of(previous)
        self._secrets().put(org_id, str(store_id), _credentials_bytes(consumer_key, consumer_secret, webhook))
        try:
            self.app.save(store)
        except BaseException:
            # The event is what makes the store registered: without it, its secret must not stay either.
            if previous is None:
                self._secrets().delete(org_id, str(store_id))
            else:
                self._secrets().put(org_id, str(store_id), previous)
            raise
        log.info("stores.saved", org_id=org_id, store_id=str(store_id), action=action, key=fingerprint)
        self.catch_up()
        shown = queries.store(self.projections, org_id, store_id)
        return {**(shown or {"storeId": str(store_id), "url": url}), "action": action}

    def list(self, org_id: str, include_removed: bool = False) -> list[dict[str, Any]]:
        self.catch_up()
        return queries.list_stores(self.projections, org_id, include_removed=include_removed)

    def remove(self, org_id: str, store_id: UUID, actor: str) -> None:
        """Remove a store: the event says who and when; the secret is deleted."""
        store = self._of_org(org_id, store_id)
        store.remove(actor)
        self.app.save(store)
        if self.secrets is not None:  # deleting needs no key (StoreSecrets)
            self.secrets.delete(org_id, str(store_id))
        log.info("stores.removed", org_id=org_id, store_id=str(store_id))
        self.catch_up()

    def settings(self, org_id: str, store_id: UUID) -> StoreSettings:
        """The URL and credentials a sync of a registered store runs with."""
        return self._settings_of(self._of_org(org_id, store_id))

    def registered_id(self, org_id: str, url: str) -> UUID | None:
        """The id of the org's registered store of this URL, None when it has none (no secret is read)."""
        store = self._get(store_key(org_id, check_store_url(url)))
        return None if store is None or store.removed else store.id

    def settings_for_url(self, org_id: str, url: str) -> StoreSettings | None:
        """A registered store's settings by its URL, or None when the org has not registered it."""
        # The id is derived from the org and the URL: the store found is the org's own.
        store = self._get(store_key(org_id, check_store_url(url)))
        if store is None or store.removed:
            return None
        return self._settings_of(store)

    def _settings_of(self, store: Store) -> StoreSettings:
        raw = self._secrets().get(store.org_id, str(store.id))
        if raw is None:
            raise ConfigurationError(
                f"store {store.id} has no stored credentials; register it again with `wcsync stores add`"
            )
        document = orjson.loads(raw)
        return StoreSettings(store.url, document["consumer_key"], document["consumer_secret"])

    def webhook_secret(self, org_id: str, store_id: UUID, create: bool = False) -> str | None:
        """The secret the store's webhooks sign their deliveries with (HMAC-SHA256), sealed with its
        credentials in the same document: one row, so rekeying re-encrypts it and removing the store deletes
        it. None when no webhook was ever installed, unless ``create``: then one is made (32 random bytes,
        URL-safe) and kept, so every later install and the receiver use the same."""
        store = self._of_org(org_id, store_id)
        raw = self._secrets().get(store.org_id, str(store.id))
        if raw is None:
            raise ConfigurationError(
                f"store {store.id} has no stored credentials; register it again with `wcsync stores add`"
            )
        document = orjson.loads(raw)
        secret = document.get("webhook_secret")
        if isinstance(secret, str) and secret:
            return secret
        if not create:
            return None
        document["webhook_secret"] = secrets.token_urlsafe(32)
        self._secrets().put(store.org_id, str(store.id), orjson.dumps(document))
        log.info("stores.webhook_secret_created", org_id=org_id, store_id=str(store.id))
        return str(document["webhook_secret"])

    def webhook_target(self, store_id: UUID) -> WebhookTarget | None:
        """What the webhook receiver needs of a store it knows only by id (a delivery names no org): its
        org, URL and webhook secret (None: no webhook was ever installed). None for no registered store
        of that id (never registered, or removed)."""
        store = self._get(store_id)
        if store is None or store.removed:
            return None
        return WebhookTarget(
            store.org_id,
            store.id,
            store.url,
            _webhook_secret_of(self._secrets().get(store.org_id, str(store.id))),
        )

    def webhooks_installed(self, org_id: str, store_id: UUID, delivery_url: str, actor: str) -> None:
        """Record that the store's webhooks were installed (all active, delivering to ``delivery_url``)."""
        self._change(org_id, store_id, lambda store: store.webhooks_installed_at(delivery_url, actor))

    def webhooks_uninstalled(self, org_id: str, store_id: UUID, actor: str) -> None:
        self._change(org_id, store_id, lambda store: store.webhooks_uninstalled(actor))

    def webhook_statuses_seen(
        self, org_id: str, store_id: UUID, statuses: dict[str, str], actor: str
    ) -> tuple[str, ...]:
        """Record the installed webhooks' statuses that changed since last recorded (a webhook WooCommerce
        disabled becomes an activity and the store's action-required reason); the topics recorded."""
        recorded: dict[str, str] = {}

        def see(store: Store) -> None:
            recorded.clear()
            recorded.update({t: s for t, s in statuses.items() if store.saw_webhook(t, s, actor)})

        self._change(org_id, store_id, see)
        if recorded:
            log.warning("stores.webhook_status", org_id=org_id, store_id=str(store_id), statuses=recorded)
        return tuple(recorded)

    def _change(
        self, org_id: str, store_id: UUID, change: Callable[[Store], None], attempts: int = 3
    ) -> None:
        """Apply ``change`` to the org's store and save it; another writer first (a concurrent `stores add`,
        a second worker seeing the same status): reloaded and applied again."""
        for attempt in range(1, attempts + 1):
            store = self._of_org(org_id, store_id)
            change(store)
            if not store.pending_events:
                return
            try:
                self.app.save_batch(store)
            except ConcurrentWriteError:
                if attempt == attempts:
                    raise
                continue
            self.catch_up()
            return

    def rekey(self, old: SecretKey, new: SecretKey) -> int:
        """Re-encrypt every stored secret under ``new``, given ``old``: all or nothing."""
        return self._secrets().rekey(old, new)

    def _secrets(self) -> StoreSecrets:
        if self.secrets is None:  # the interface opened the registry to read only
            raise ConfigurationError("this command needs WCSYNC_SECRET_KEY to reach the stores' secrets")
        return self.secrets

    def _get(self, store_id: UUID) -> Store | None:
        try:
            store: Store = self.app.repository.get(store_id)
        except AggregateNotFoundError:
            return None
        return store

    def _of_org(self, org_id: str, store_id: UUID) -> Store:
        store = self._get(store_id)
        if store is None or store.org_id != org_id or store.removed:
            # Another org's store is the same answer as none at all.
            raise StoreNotFoundError(store_id, org_id)
        return store


def _credentials_bytes(consumer_key: str, consumer_secret: str, webhook_secret: str | None = None) -> bytes:
    document = {"consumer_key": consumer_key, "consumer_secret": consumer_secret}
    if webhook_secret:
        document["webhook_secret"] = webhook_secret
    return orjson.dumps(document)


def _webhook_secret_of(raw: bytes | None) -> str | None:
    """The webhook secret of a sealed document (None: none, or no document)."""
    if raw is None:
        return None
    secret = orjson.loads(raw).get("webhook_secret")
    return secret if isinstance(secret, str) and secret else None
