"""What the store's webhooks send, as WC_Webhook does: a customer change queues one delivery per active
webhook of its topic, merged while one is pending for the same webhook and customer (the body is taken when it
is sent, so a burst of edits arrives once, as the latest state); each is signed and POSTed once (no retries,
no redirects followed); more than MAX_FAILURES failures in a row disable the webhook; a webhook created active
or re-activated is pinged. The drop fault loses deliveries on purpose, and every attempt is logged for
`GET /_sandbox/deliveries`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from infrastructure.sandbox.data import format_gmt
from infrastructure.sandbox.store import SandboxStore
from infrastructure.sandbox.webhooks import Webhook, Webhooks
from infrastructure.support.config import is_loopback

logger = structlog.get_logger("wcsync.sandbox")

# WC_Webhook::failed_delivery: above this many consecutive failures the webhook is disabled.
MAX_FAILURES = 5
USER_AGENT = "WooCommerce/9.4.2 Hookshot (WordPress/6.7.1)"
# The delivery log keeps the latest attempts only, so a long demo stays small.
MAX_LOGGED = 10_000
# wp_hash's salt, the sandbox's own: the delivery id only has to be WooCommerce-shaped.
_DELIVERY_SALT = b"wcsync-sandbox-delivery"


@dataclass(frozen=True)
class _Pending:
    webhook_id: int
    customer_id: int
    topic: str


class Deliveries:
    """The queue of pending deliveries and the one sender that empties it, on the sandbox's event loop."""

    def __init__(
        self, hooks: Webhooks, store: SandboxStore, *, timeout_s: float, drop_share: float, seed: int
    ) -> None:
        self.hooks = hooks
        self.store = store
        self.timeout_s = timeout_s
        self.drop_share = drop_share
        self.drop_next = 0
        self.held = False
        self.rng = random.Random(seed ^ 0xD809)
        self.log: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED)
        self._pending: OrderedDict[tuple[int, int], _Pending] = OrderedDict()
        self._pings: deque[int] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- what queues work (called by the routes, on the loop)

    def customer_changed(self, event: str, customer_id: int) -> None:
        """Queue `customer.<event>` for every active webhook of that topic, unless one is already pending."""
        topic = f"customer.{event}"
        for hook in self.hooks.active_for(topic):
            key = (hook.id, customer_id)
            if key in self._pending:
                continue  # WooCommerce's queue holds one per webhook and customer: this change rides along
            self._pending[key] = _Pending(hook.id, customer_id, topic)
        self._wake.set()

    def ping(self, webhook_id: int) -> None:
        self._pings.append(webhook_id)
        self._wake.set()

    def hold(self, held: bool) -> None:
        """Hold (or release) the sender: while held, changes queue and merge but nothing is sent."""
        self.held = held
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pings)

    # -- the sender

    async def start(self) -> None:
        # No redirects are followed (allow_redirects=False per request); cookies are never kept.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._task = asyncio.create_task(self._run(), name="sandbox webhook sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            if self.held or not (self._pings or self._pending):
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._pings:
                await self._ping(self._pings.popleft())
            else:
                _, pending = self._pending.popitem(last=False)
                await self._deliver(pending)

    async def _ping(self, webhook_id: int) -> None:
        hook = self.hooks.get(webhook_id)
        if hook is None:
            return
        # WC_Webhook::deliver_ping: a form body, no X-WC-Webhook-* headers, no signature; only 200 is success.
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/x-www-form-urlencoded"}
        status, error = await self._post(hook.delivery_url, f"webhook_id={hook.id}".encode(), headers)
        self._record(hook, "ping", None, None, status, error, ok=status == 200)

    async def _deliver(self, pending: _Pending) -> None:
        hook = self.hooks.get(pending.webhook_id)
        if hook is None or hook.status != "active" or hook.topic != pending.topic:
            return  # deleted, paused, disabled or re-pointed since: nothing is sent
        delivery_id = _delivery_id(hook.id)
        if self._dropping():
            self._record(hook, "delivery", pending, delivery_id, None, None, ok=False, dropped=True)
            return
        body = self._body(pending)
        signature = base64.b64encode(hmac.new(hook.secret.encode(), body, hashlib.sha256).digest()).decode()
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": f"{self.hooks.base_url}/",
            "X-WC-Webhook-Topic": hook.topic,
            "X-WC-Webhook-Resource": hook.resource,
            "X-WC-Webhook-Event": hook.event,
            "X-WC-Webhook-Signature": signature,
            "X-WC-Webhook-ID": str(hook.id),
            "X-WC-Webhook-Delivery-ID": delivery_id,
        }
        status, error = await self._post(hook.delivery_url, body, headers)
        ok = status is not None and 200 <= status <= 302
        self._record(hook, "delivery", pending, delivery_id, status, error, ok=ok)
        self._count(hook, ok)

    def _body(self, pending: _Pending) -> bytes:
        """The customer as `GET /customers/<id>` shows it now (its 404 error if it is gone since);
        a deletion sends only its id."""
        if pending.topic == "customer.deleted":
            return json.dumps({"id": pending.customer_id}, separators=(",", ":")).encode()
        encoded = self.store.encoded_one(pending.customer_id)
        if encoded is not None:
            return encoded
        gone = {"code": "wc_user_invalid_id", "message": "Invalid user ID.", "data": {"status": 404}}
        return json.dumps(gone, separators=(",", ":")).encode()

    def _dropping(self) -> bool:
        if self.drop_next > 0:
            self.drop_next -= 1
            return True
        return self.drop_share > 0 and self.rng.random() < self.drop_share

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """(the status answered, None) or (None, why nothing was answered: a timeout counts as a failure).
        Only this machine is posted to: the sandbox is a test double, and WordPress's wp_safe_remote_request
        refuses some hosts too (a refusal is a failure, as there)."""
        assert self._session is not None
        if not is_loopback(urlsplit(url).hostname or ""):
            return None, "not a loopback address"
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                await response.read()
                return response.status, None
        except TimeoutError:
            return None, "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as error:
            return None, type(error).__name__

    def _count(self, hook: Webhook, ok: bool) -> None:
        """WC_Webhook::deliver's tracking: a success resets the count; past MAX_FAILURES it is disabled."""
        if ok:
            hook.failures = 0
            return
        hook.failures += 1
        if hook.failures > MAX_FAILURES and hook.status == "active":
            self.hooks.set_status(hook, "disabled")
            logger.warning("sandbox webhook disabled after failed deliveries", webhook_id=hook.id)

    def _record(
        self,
        hook: Webhook,
        kind: str,
        pending: _Pending | None,
        delivery_id: str | None,
        status: int | None,
        error: str | None,
        *,
        ok: bool,
        dropped: bool = False,
    ) -> None:
        outcome = "dropped" if dropped else ("delivered" if ok else "failed")
        self.log.append(
            {
                "webhook_id": hook.id,
                "kind": kind,
                "topic": None if pending is None else pending.topic,
                "customer_id": None if pending is None else pending.customer_id,
                "delivery_id": delivery_id,
                "status": status,
                "ok": ok,
                "outcome": outcome,
                "error": error,
                "at": format_gmt(time.time()) + "Z",
            }
        )
        logger.debug("sandbox webhook sent", webhook_id=hook.id, kind=kind, outcome=outcome, status=status)


def _delivery_id(webhook_id: int) -> str:
    """WC_Webhook::get_new_delivery_id: wp_hash of the webhook id and the current second."""
    message = f"{webhook_id}{int(time.time())}".encode()
    return hmac.new(_DELIVERY_SALT, message, hashlib.md5).hexdigest()
