"""WooCommerce's webhooks resource, `/wp-json/wc/v3/webhooks`, as its WC_REST_Webhooks_Controller answers it:
list, create, read, update and delete, a read/write key for every change. The webhooks live here (Webhooks);
what they send lives in deliveries.py, told through ``on_activated`` when one must be pinged."""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from infrastructure.sandbox.auth import ApiKey
from infrastructure.sandbox.data import format_gmt, format_local
from infrastructure.sandbox.responses import wc_error
from infrastructure.support.woocommerce_api import API_ROOT

WEBHOOKS_PATH = f"{API_ROOT}/webhooks"
STATUSES = ("active", "paused", "disabled")
# wc_get_webhook_topics' resources and events; the sandbox has customers only, so only their topics deliver.
_RESOURCES = ("coupon", "customer", "order", "product")
_EVENTS = ("created", "updated", "deleted", "restored")
# WC_Webhook::get_topic_hooks: the WordPress actions behind each customer topic.
_HOOKS = {
    "customer.created": ["user_register", "woocommerce_created_customer", "woocommerce_new_customer"],
    "customer.updated": ["woocommerce_update_customer"],
    "customer.deleted": ["delete_user"],
}
_DEFAULT_PER_PAGE = 10
_MAX_PER_PAGE = 100


@dataclass
class Webhook:
    """One webhook, as WooCommerce stores it (its failure count is WC_Webhook's too, never in an answer)."""

    id: int
    name: str
    status: str
    topic: str
    delivery_url: str
    secret: str
    created: int
    modified: int
    failures: int = 0

    def __repr__(self) -> str:
        # The secret stays out of logs and tracebacks.
        return f"Webhook(id={self.id}, status={self.status!r}, topic={self.topic!r})"

    @property
    def resource(self) -> str:
        return self.topic.partition(".")[0]

    @property
    def event(self) -> str:
        return self.topic.partition(".")[2]

    def api_object(self, base_url: str) -> dict[str, Any]:
        collection = f"{base_url}{WEBHOOKS_PATH}"
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "topic": self.topic,
            "resource": self.resource,
            "event": self.event,
            "hooks": list(_HOOKS.get(self.topic, [f"woocommerce_{self.resource}_{self.event}"])),
            "delivery_url": self.delivery_url,
            # WooCommerce returns the secret to whoever may manage webhooks (a shop manager's key).
            "secret": self.secret,
            "date_created": format_local(self.created),
            "date_created_gmt": format_gmt(self.created),
            "date_modified": format_local(self.modified),
            "date_modified_gmt": format_gmt(self.modified),
            "_links": {
                "self": [{"href": f"{collection}/{self.id}"}],
                "collection": [{"href": collection}],
            },
        }


class Webhooks:
    """The store's webhooks, in memory; used only on the sandbox's event loop (the REST routes and the
    sender), so it needs no lock."""

    def __init__(self) -> None:
        self._hooks: dict[int, Webhook] = {}
        self._next_id = 1
        self.base_url = "http://127.0.0.1"

    def get(self, webhook_id: int) -> Webhook | None:
        return self._hooks.get(webhook_id)

    def all(self) -> list[Webhook]:
        return [self._hooks[i] for i in sorted(self._hooks)]

    def active_for(self, topic: str) -> list[Webhook]:
        return [hook for hook in self.all() if hook.status == "active" and hook.topic == topic]

    def add(self, *, name: str, status: str, topic: str, delivery_url: str, secret: str) -> Webhook:
        now = int(time.time())
        hook = Webhook(self._next_id, name, status, topic, delivery_url, secret, now, now)
        self._hooks[hook.id] = hook
        self._next_id += 1
        return hook

    def remove(self, webhook_id: int) -> Webhook | None:
        return self._hooks.pop(webhook_id, None)

    def set_status(self, hook: Webhook, status: str) -> bool:
        """Change the status; True when the webhook became active (WooCommerce then pings it and counts its
        failures afresh)."""
        activated = status == "active" and hook.status != "active"
        hook.status = status
        if activated:
            hook.failures = 0
        hook.modified = max(int(time.time()), hook.modified)
        return activated


class _Invalid(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class WebhooksResource:
    """The REST routes of /webhooks; ``on_activated(webhook_id)`` is called when a webhook is created active
    or re-activated (the ping)."""

    def __init__(self, hooks: Webhooks, on_activated: Callable[[int], None]) -> None:
        self.hooks = hooks
        self.on_activated = on_activated

    def dispatch(self, request: web.Request, body: bytes, key: ApiKey | None) -> web.Response | None:
        """The answer for a /webhooks route, or None when the path is not one (the caller answers 404)."""
        path = request.path.rstrip("/")
        if path == WEBHOOKS_PATH:
            if request.method in ("GET", "HEAD"):
                return self._guarded(key, "view_list", lambda: self._list(request))
            if request.method == "POST":
                return self._guarded(key, "create", lambda: self._create(request, body))
            return None
        match = re.fullmatch(re.escape(WEBHOOKS_PATH) + r"/(\d+)", path)
        if match is None:
            return None
        webhook_id = int(match.group(1))
        if request.method in ("GET", "HEAD"):
            return self._guarded(key, "view", lambda: self._read(webhook_id))
        if request.method in ("POST", "PUT", "PATCH"):
            return self._guarded(key, "edit", lambda: self._update(webhook_id, request, body))
        if request.method == "DELETE":
            return self._guarded(key, "delete", lambda: self._delete(webhook_id, request))
        return None

    # -- permissions (WC_REST_Webhooks_Controller's *_permissions_check; a read-only key writes nothing)

    def _guarded(self, key: ApiKey | None, action: str, answer: Callable[[], web.Response]) -> web.Response:
        writing = action in ("create", "edit", "delete")
        if key is None or (writing and not key.write):
            return _refused(action)
        try:
            return answer()
        except _Invalid as invalid:
            return invalid.response

    # -- the routes

    def _list(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "all")
        page = _whole(request.query, "page", 1, 1, None)
        per_page = _whole(request.query, "per_page", _DEFAULT_PER_PAGE, 1, _MAX_PER_PAGE)
        if status not in (*STATUSES, "all"):
            raise _Invalid(_invalid_param("status", f"status is not one of all, {', '.join(STATUSES)}."))
        listed = [hook for hook in self.hooks.all() if status in ("all", hook.status)]
        window = listed[(page - 1) * per_page : page * per_page]
        headers = {"X-WP-Total": str(len(listed)), "X-WP-TotalPages": str(math.ceil(len(listed) / per_page))}
        body = [hook.api_object(self.hooks.base_url) for hook in window]
        return web.json_response(body, headers=headers)

    def _create(self, request: web.Request, body: bytes) -> web.Response:
        fields = _fields(request, body)
        if "id" in fields:
            raise _Invalid(
                wc_error(400, "woocommerce_rest_shop_webhook_exists", "Cannot create existing webhook.")
            )
        topic = _topic(fields.get("topic"))
        delivery_url = _delivery_url(fields.get("delivery_url"))
        status = _status(fields.get("status", "active"))
        name = _text(fields, "name") or f"Webhook created on {time.strftime('%b %d, %Y @ %I:%M %p')}"
        secret = _text(fields, "secret") or secrets.token_urlsafe(36)
        hook = self.hooks.add(name=name, status=status, topic=topic, delivery_url=delivery_url, secret=secret)
        if hook.status == "active":
            self.on_activated(hook.id)
        return web.json_response(hook.api_object(self.hooks.base_url), status=201)

    def _read(self, webhook_id: int) -> web.Response:
        return web.json_response(self._existing(webhook_id).api_object(self.hooks.base_url))

    def _update(self, webhook_id: int, request: web.Request, body: bytes) -> web.Response:
        hook = self._existing(webhook_id)
        fields = _fields(request, body)
        # Every field is checked before any is changed: a refused update leaves the webhook as it was.
        topic = _topic(fields["topic"]) if "topic" in fields else hook.topic
        delivery_url = (
            _delivery_url(fields["delivery_url"]) if "delivery_url" in fields else hook.delivery_url
        )
        status = _status(fields["status"]) if "status" in fields else hook.status
        hook.topic, hook.delivery_url = topic, delivery_url
        if _text(fields, "name"):
            hook.name = _text(fields, "name")
        if _text(fields, "secret"):
            hook.secret = _text(fields, "secret")
        if self.hooks.set_status(hook, status):
            self.on_activated(hook.id)
        return web.json_response(hook.api_object(self.hooks.base_url))

    def _delete(self, webhook_id: int, request: web.Request) -> web.Response:
        hook = self._existing(webhook_id)
        if request.query.get("force", "").lower() not in ("true", "1"):
            raise _Invalid(
                wc_error(501, "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing.")
            )
        answer = hook.api_object(self.hooks.base_url)
        self.hooks.remove(webhook_id)
        return web.json_response(answer)

    def _existing(self, webhook_id: int) -> Webhook:
        hook = self.hooks.get(webhook_id)
        if hook is None:
            raise _Invalid(wc_error(404, "woocommerce_rest_shop_webhook_invalid_id", "Invalid ID."))
        return hook


_REFUSALS = {
    "view_list": ("woocommerce_rest_cannot_view", "Sorry, you cannot list resources."),
    "view": ("woocommerce_rest_cannot_view", "Sorry, you cannot view this resource."),
    "create": ("woocommerce_rest_cannot_create", "Sorry, you are not allowed to create resources."),
    "edit": ("woocommerce_rest_cannot_edit", "Sorry, you are not allowed to edit this resource."),
    "delete": ("woocommerce_rest_cannot_delete", "Sorry, you are not allowed to delete this resource."),
}


def _refused(action: str) -> web.Response:
    code, message = _REFUSALS[action]
    return wc_error(401, code, message)


def _invalid_param(name: str, detail: str) -> web.Response:
    return wc_error(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: detail})


def _fields(request: web.Request, body: bytes) -> dict[str, Any]:
    """The request's parameters as WordPress merges them: the query, then a JSON body's object on top."""
    fields: dict[str, Any] = dict(request.query)
    if body.strip():
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Invalid(wc_error(400, "rest_invalid_json", "Invalid JSON body passed.")) from None
        if not isinstance(value, dict):
            raise _Invalid(wc_error(400, "rest_invalid_json", "Invalid JSON body passed."))
        fields.update(value)
    return fields


def _topic(value: Any) -> str:
    topic = value.strip().lower() if isinstance(value, str) else ""
    resource, _, event = topic.partition(".")
    if resource not in _RESOURCES or event not in _EVENTS:
        raise _Invalid(
            wc_error(
                400,
                "woocommerce_rest_shop_webhook_invalid_topic",
                "Webhook topic is required and must be valid.",
            )
        )
    return topic


def _delivery_url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^\s/?#]+", value):
        raise _Invalid(
            wc_error(
                400,
                "woocommerce_rest_shop_webhook_invalid_delivery_url",
                "Webhook delivery URL must be a valid URL starting with http:// or https://.",
            )
        )
    return value


def _status(value: Any) -> str:
    if value not in STATUSES:
        raise _Invalid(_invalid_param("status", f"status is not one of {', '.join(STATUSES)}."))
    return str(value)


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    return value if isinstance(value, str) else ""


def _whole(query: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _Invalid(_invalid_param(name, f"{name} is not of type integer.")) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} ({low}) and {high} ({high})" if high is not None else f"at least {low}"
        raise _Invalid(_invalid_param(name, f"{name} must be {bound}."))
    return value
