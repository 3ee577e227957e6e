"""A registered store's three customer webhooks, in the store itself: install (create, or bring back to what
wcsync needs), status (as the store has them) and uninstall (issue 12, item 3).

WooCommerce pushes a change only to a webhook it has: wcsync installs one per customer topic, named
``wcsync <topic>``, active, delivering to ``<public-url>/api/v1/webhooks/woocommerce/<store_id>`` and
signing with the store's webhook secret (StoreRegistry.webhook_secret, sealed with its credentials). A
webhook is wcsync's when its topic is one of the three and its delivery URL is this store's receiver (at any
public URL, so a new --public-url updates the old ones) or its name is wcsync's and it delivers to no other
store's receiver (two orgs may register one site). A second match of a topic (a create the store received
twice) is deleted by the next install, so installing again never duplicates.

The webhook secret is sent to the store and never returned: what these use cases answer is built field by
field from the store's answers, and the store's ``secret`` is not one of those fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol
from urllib.parse import urlsplit
from uuid import UUID

import structlog

from infrastructure.adapters.woocommerce import StoreCredentials
from infrastructure.services.stores import StoreRegistry
from infrastructure.support.config import StoreSettings
from infrastructure.support.errors import ConfigurationError

log = structlog.get_logger("wcsync.webhooks")

TOPICS = ("customer.created", "customer.updated", "customer.deleted")
RECEIVER_ROOT = "/api/v1/webhooks/woocommerce/"  # + store id: `wcsync serve`'s receiver (item 1)
ACTIVE = "active"
MISSING = "missing"


class WebhookClient(Protocol):
    """What these use cases need of the WooCommerce client (infrastructure.adapters.woocommerce)."""

    async def webhooks(self) -> list[dict[str, Any]]: ...

    async def create_webhook(self, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def update_webhook(self, webhook_id: int, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def delete_webhook(self, webhook_id: int) -> bool: ...


# A client for one store (URL, credentials), used as ``async with``.
ClientFactory = Callable[[str, StoreCredentials], AbstractAsyncContextManager[WebhookClient]]


def webhook_name(topic: str) -> str:
    return f"wcsync {topic}"


def check_public_url(url: str) -> str:
    """The address WooCommerce reaches `wcsync serve` at: http(s), a host, no credentials, query or
    fragment (WooCommerce posts to it as given, and a secret in it would sit in the store's database).
    Returned without a trailing slash. A bad one: ConfigurationError (exit 2), one line."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (read to refuse a port that is not a number)
    except ValueError:
        raise ConfigurationError(f"--public-url {text[:200]!r} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError(
            "--public-url must start with http:// or https:// (the address the store posts webhooks to)"
        )
    if not parts.hostname:
        raise ConfigurationError("--public-url has no host name")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("--public-url must not hold a user name or password")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ConfigurationError("--public-url must not have a query or fragment (?… or #…)")
    return text.rstrip("/")


def delivery_url(public_url: str, store_id: UUID) -> str:
    """Where the store's webhooks deliver: the receiver of this store under ``public_url``."""
    return f"{check_public_url(public_url)}{RECEIVER_ROOT}{store_id}"


class StoreWebhooks:
    """`wcsync webhooks install | status | uninstall` for the org's registered stores."""

    def __init__(
        self,
        registry: StoreRegistry,
        client: ClientFactory,
        receiver: Callable[[str, UUID], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.client = client
        # What the receiving side recorded of the org's store (projections.queries.webhook_summary).
        self.receiver = receiver

    async def install(
        self, org_id: str, store_id: UUID, public_url: str, actor: str = "wcsync webhooks install"
    ) -> dict[str, Any]:
        """Create the three webhooks, or update the ones the store has to active, this delivery URL and
        the store's webhook secret (made on the first install); delete duplicates. Each webhook's
        ``action``: created | updated | unchanged. A key that cannot write: StoreRefused (exit 3)."""
        target = delivery_url(public_url, store_id)  # checked before anything is read or made
        settings = await asyncio.to_thread(self.registry.settings, org_id, store_id)
        secret = await asyncio.to_thread(self.registry.webhook_secret, org_id, store_id, True)
        assert secret is not None
        wanted = {"status": ACTIVE, "delivery_url": target, "secret": secret}
        rows: list[dict[str, Any]] = []
        removed: list[int] = []
        async with self.client(settings.url, _credentials(settings)) as client:
            hooks = await client.webhooks()
            for topic in TOPICS:
                found = _matches(hooks, topic, store_id)
                fields = {"name": webhook_name(topic), "topic": topic, **wanted}
                if not found:
                    hook, action = await client.create_webhook(fields), "created"
                elif _differs(found[0], fields):
                    hook, action = await client.update_webhook(found[0]["id"], fields), "updated"
                else:
                    hook, action = found[0], "unchanged"
                for duplicate in found[1:]:
                    await client.delete_webhook(duplicate["id"])
                    removed.append(duplicate["id"])
                rows.append({**_shown(topic, hook), "action": action})
        await asyncio.to_thread(self.registry.webhooks_installed, org_id, store_id, target, actor)
        log.info(
            "webhooks.installed",
            org_id=org_id,
            store_id=str(store_id),
            actions={row["topic"]: row["action"] for row in rows},
            duplicates_removed=len(removed),
        )
        return {
            "storeId": str(store_id),
            "deliveryUrl": target,
            "webhooks": rows,
            "duplicatesRemoved": removed,
        }

    async def status(
        self, org_id: str, store_id: UUID, actor: str = "wcsync webhooks status"
    ) -> dict[str, Any]:
        """Each topic's webhook as the store has it (status active | paused | disabled, or missing), with the
        last delivery of its topic the receiver recorded and the deliveries of it that failed; ``healthy``
        only when all three are active; ``receiver``: the store's deliveries by state and the requests
        refused for their signature. A status that changed since last recorded is recorded (an activity,
        the store's action-required reason)."""
        settings = await asyncio.to_thread(self.registry.settings, org_id, store_id)
        async with self.client(settings.url, _credentials(settings)) as client:
            hooks = await client.webhooks()
        rows = []
        for topic in TOPICS:
            found = _matches(hooks, topic, store_id)
            rows.append(_shown(topic, found[0]) if found else _missing(topic))
        seen = {row["topic"]: _status_word(row["status"]) for row in rows}
        await asyncio.to_thread(self.registry.webhook_statuses_seen, org_id, store_id, seen, actor)
        receiver = (
            await asyncio.to_thread(self.receiver, org_id, store_id) if self.receiver is not None else None
        )
        for row in rows:
            topic = (receiver or {}).get("byTopic", {}).get(row["topic"], {})
            row.update(lastDeliveryAt=topic.get("lastDeliveryAt"), failuresCounted=topic.get("failed", 0))
        return {
            "storeId": str(store_id),
            "healthy": all(row["status"] == ACTIVE for row in rows),
            "webhooks": rows,
            "receiver": receiver,
        }

    async def watch(self, stores: list[tuple[str, UUID]], actor: str) -> dict[UUID, bool]:
        """A worker's look at the installed webhooks of ``stores`` (org, store id): each store's status read
        and what changed recorded (``status``); whether each was healthy. A store that cannot be reached is
        logged and left for the next look."""
        healthy: dict[UUID, bool] = {}
        for org_id, store_id in stores:
            try:
                document = await self.status(org_id, store_id, actor)
            except Exception as error:  # one store down must not stop the look at the others
                log.warning(
                    "webhooks.watch_failed", org_id=org_id, store_id=str(store_id), error=str(error)[:200]
                )
                continue
            healthy[store_id] = bool(document["healthy"])
        return healthy

    async def uninstall(
        self, org_id: str, store_id: UUID, actor: str = "wcsync webhooks uninstall"
    ) -> dict[str, Any]:
        """Delete every webhook of this store's (force: WooCommerce does not trash them). Idempotent: none
        left is success, ``removed`` empty."""
        settings = await asyncio.to_thread(self.registry.settings, org_id, store_id)
        removed: list[dict[str, Any]] = []
        async with self.client(settings.url, _credentials(settings)) as client:
            hooks = await client.webhooks()
            for topic in TOPICS:
                for hook in _matches(hooks, topic, store_id):
                    if await client.delete_webhook(hook["id"]):
                        removed.append({"id": hook["id"], "topic": topic})
        await asyncio.to_thread(self.registry.webhooks_uninstalled, org_id, store_id, actor)
        log.info("webhooks.uninstalled", org_id=org_id, store_id=str(store_id), removed=len(removed))
        return {"storeId": str(store_id), "removed": removed}


# A webhook's status as recorded: WooCommerce's three, wcsync's "missing", else "unknown" (a store's answer
# is not trusted to be one of them: whatever it says must not become an event's text).
STATUS_WORDS = frozenset({ACTIVE, "paused", "disabled", MISSING})


def _status_word(status: Any) -> str:
    return status if isinstance(status, str) and status in STATUS_WORDS else "unknown"


def _credentials(settings: StoreSettings) -> StoreCredentials:
    return StoreCredentials(settings.consumer_key, settings.consumer_secret)


def _receiver_of(hook: dict[str, Any]) -> str | None:
    """The store id a webhook delivers to when its URL is a wcsync receiver's, else None."""
    url = hook.get("delivery_url")
    if not isinstance(url, str):
        return None
    path = urlsplit(url).path.rstrip("/")
    _, found, tail = path.rpartition(RECEIVER_ROOT)
    return tail if found and "/" not in tail else None


def _matches(hooks: list[dict[str, Any]], topic: str, store_id: UUID) -> list[dict[str, Any]]:
    """This store's webhooks of ``topic``, lowest id first (the one kept), those delivering to this
    store's receiver before those matched by name only."""
    ours = str(store_id)
    by_url, by_name = [], []
    for hook in sorted(hooks, key=lambda h: int(h["id"])):
        if hook.get("topic") != topic:
            continue
        receiver = _receiver_of(hook)
        if receiver == ours:
            by_url.append(hook)
        elif receiver is None and hook.get("name") == webhook_name(topic):
            by_name.append(hook)
    return by_url + by_name


def _differs(hook: dict[str, Any], fields: dict[str, Any]) -> bool:
    return any(hook.get(name) != value for name, value in fields.items())


def _shown(topic: str, hook: dict[str, Any]) -> dict[str, Any]:
    """A webhook as wcsync shows it: named fields only (the store's answer holds the secret)."""
    return {
        "topic": topic,
        "id": hook.get("id"),
        "name": hook.get("name"),
        "status": _status_word(hook.get("status")),
        "deliveryUrl": hook.get("delivery_url"),
        "lastDeliveryAt": None,
        "failuresCounted": None,
    }


def _missing(topic: str) -> dict[str, Any]:
    return {
        "topic": topic,
        "id": None,
        "name": None,
        "status": MISSING,
        "deliveryUrl": None,
        "lastDeliveryAt": None,
        "failuresCounted": None,
    }
