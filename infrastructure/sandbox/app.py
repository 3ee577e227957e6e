"""The sandbox's aiohttp application: the store front (WooCommerce's customers and webhooks routes behind the
faulty host and the REST authentication), the admin routes under /_sandbox (no auth, no faults: loopback only)
and the webhook sender's lifetime."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from infrastructure.sandbox.auth import ApiKey, Authenticator, AuthRefused
from infrastructure.sandbox.config import SandboxConfig
from infrastructure.sandbox.deliveries import Deliveries
from infrastructure.sandbox.faults import Churn, FaultyHost
from infrastructure.sandbox.queries import (
    InvalidParams,
    csv_values,
    filter_fields,
    page_window,
    parse_list_query,
)
from infrastructure.sandbox.responses import html, wc_error
from infrastructure.sandbox.store import SandboxStore
from infrastructure.sandbox.webhooks import Webhooks, WebhooksResource
from infrastructure.support.woocommerce_api import CUSTOMERS_PATH, REST_ROOT

logger = structlog.get_logger("wcsync.sandbox")

_NOT_FOUND_HTML = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="UTF-8"><title>Page not found &#8211; Sandbox Store</title>'
    "</head><body><h1>Oops! That page can&#8217;t be found.</h1></body></html>"
)


class _StoreFront:
    def __init__(self, store: SandboxStore, config: SandboxConfig, webhooks: WebhooksResource) -> None:
        self.store = store
        self.host = FaultyHost(config.faults, config.seed)
        self.auth = Authenticator(_keys(config), tls=config.tls)
        self.webhooks = webhooks
        self.churn = Churn(store, config.faults.churn_every, config.seed + 1)
        self.repeat_last_page = config.faults.repeat_last_page

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await request.read() if request.body_exists else b""
        response, in_window = await self.host.respond(lambda: self._dispatch(request, body))
        self.store.note_request(response.status, in_window)
        # The path only: the query carries oauth_consumer_key and, over TLS, possibly the secret.
        logger.debug(
            "sandbox request served",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response

    def _dispatch(self, request: web.Request, body: bytes) -> web.Response:
        path = request.path
        if not (path == REST_ROOT or path.startswith(f"{REST_ROOT}/")):
            return html(404, _NOT_FOUND_HTML)
        try:
            key = self.auth.check(request)
        except AuthRefused as refused:
            return wc_error(401, "woocommerce_rest_authentication_error", refused.message)
        answer = self.webhooks.dispatch(request, body, key)
        if answer is not None:
            return answer
        authenticated = key is not None
        if request.method in ("GET", "HEAD"):
            if path.rstrip("/") == CUSTOMERS_PATH:
                return self._list(request, authenticated)
            match = re.fullmatch(re.escape(CUSTOMERS_PATH) + r"/(\d+)/?", path)
            if match:
                return self._item(request, int(match.group(1)), authenticated)
        return wc_error(404, "rest_no_route", "No route was found matching the URL and request method.")

    def _list(self, request: web.Request, authenticated: bool) -> web.Response:
        try:
            query = parse_list_query(request.query)
        except InvalidParams as error:
            return wc_error(
                400,
                "rest_invalid_param",
                f"Invalid parameter(s): {', '.join(error.problems)}",
                params=error.problems,
                details=error.details,
            )
        if not authenticated:
            return wc_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        ordered = self.store.select(query)
        total = len(ordered)
        repeating = self.repeat_last_page
        window = page_window(ordered, query, repeating)
        if query.fields is None:
            body = self.store.encoded_list(window)
        else:
            objects = [self.store.api_object(i) for i in window]
            body = json.dumps([filter_fields(o, query.fields) for o in objects if o is not None]).encode()
        total_pages = math.ceil(total / query.per_page)
        headers: dict[str, str] = {}
        if not repeating:
            headers["X-WP-Total"] = str(total)
            headers["X-WP-TotalPages"] = str(total_pages)
        links = []
        if query.page > 1:
            links.append(f'<{self._page_url(request, min(query.page - 1, max(total_pages, 1)))}>; rel="prev"')
        if repeating or total_pages > query.page:
            links.append(f'<{self._page_url(request, query.page + 1)}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        self.churn.count_list_request()
        return web.Response(body=body, headers=headers, content_type="application/json", charset="UTF-8")

    def _item(self, request: web.Request, customer_id: int, authenticated: bool) -> web.Response:
        if not authenticated:
            return wc_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")
        fields = csv_values(request.query, "_fields")
        if fields:
            obj = self.store.api_object(customer_id)
            body = None if obj is None else json.dumps(filter_fields(obj, tuple(fields))).encode()
        else:
            body = self.store.encoded_one(customer_id)
        if body is None:
            return wc_error(404, "wc_user_invalid_id", "Invalid user ID.")
        return web.Response(body=body, content_type="application/json", charset="UTF-8")

    def _page_url(self, request: web.Request, page: int) -> str:
        # Credentials stay out of links: a client re-signs every request anyway.
        kept = [
            (k, v)
            for k, v in request.query.items()
            if not k.startswith("oauth_") and k not in ("consumer_key", "consumer_secret", "page")
        ]
        kept.append(("page", str(page)))
        return f"{request.scheme}://{request.host}{request.path}?{urlencode(kept)}"


def _keys(config: SandboxConfig) -> list[ApiKey]:
    keys = [ApiKey(config.consumer_key, config.consumer_secret, write=True)]
    if config.read_only_key is not None and config.read_only_secret is not None:
        keys.append(ApiKey(config.read_only_key, config.read_only_secret, write=False))
    return keys


def _admin_routes(store: SandboxStore, deliveries: Deliveries) -> web.RouteTableDef:
    """The admin routes: changes to customers (each queues the webhooks' deliveries, as an edit in
    wp-admin would), the stats, and the webhook sender's log and knobs."""
    routes = web.RouteTableDef()

    async def body_object(request: web.Request) -> dict[str, Any] | None:
        if not request.can_read_body:
            return {}
        try:
            value = await request.json()
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    @routes.post("/_sandbox/fix-invalid")
    async def fix_invalid(request: web.Request) -> web.Response:
        return web.json_response({"fixed": store.fix_invalid()})

    @routes.post("/_sandbox/customers")
    async def create(request: web.Request) -> web.Response:
        record = await body_object(request)
        if record is None:
            return wc_error(400, "rest_invalid_json", "Expected a JSON object.")
        created = store.create(record)
        deliveries.customer_changed("created", created["id"])
        return web.json_response(store.api_object(created["id"]), status=201)

    @routes.put(r"/_sandbox/customers/{customer_id:\d+}")
    async def update(request: web.Request) -> web.Response:
        changes = await body_object(request)
        if changes is None:
            return wc_error(400, "rest_invalid_json", "Expected a JSON object.")
        try:
            updated = store.update(int(request.match_info["customer_id"]), changes)
        except KeyError:
            return wc_error(404, "wc_user_invalid_id", "Invalid user ID.")
        deliveries.customer_changed("updated", updated["id"])
        return web.json_response(store.api_object(updated["id"]))

    @routes.delete(r"/_sandbox/customers/{customer_id:\d+}")
    async def delete(request: web.Request) -> web.Response:
        customer_id = int(request.match_info["customer_id"])
        try:
            store.delete(customer_id)
        except KeyError:
            return wc_error(404, "wc_user_invalid_id", "Invalid user ID.")
        deliveries.customer_changed("deleted", customer_id)
        return web.json_response({"id": customer_id, "deleted": True})

    @routes.post("/_sandbox/customers/edit-random")
    async def edit_random(request: web.Request) -> web.Response:
        """{"count": N, "seed": S}: N customers picked at random (seeded) each edited once, as PUT would."""
        fields = await body_object(request)
        count = None if fields is None else fields.get("count")
        seed = 0 if fields is None else fields.get("seed", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (count, seed)):
            return wc_error(
                400, "rest_invalid_param", 'Expected {"count": N, "seed": S}, whole numbers >= 0.'
            )
        assert isinstance(count, int) and isinstance(seed, int)
        edited = store.edit_random(count, seed)
        for customer_id in edited:
            deliveries.customer_changed("updated", customer_id)
        return web.json_response({"edited": len(edited), "ids": edited})

    @routes.get("/_sandbox/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(store.stats.as_dict())

    @routes.get("/_sandbox/deliveries")
    async def delivery_log(request: web.Request) -> web.Response:
        """Every attempt (newest last): webhook, kind (delivery / ping), topic, customer, delivery id,
        status answered, ok, outcome (delivered / failed / dropped), error, at; never a body or a secret."""
        return web.json_response({"deliveries": list(deliveries.log), "pending": deliveries.pending})

    @routes.post("/_sandbox/deliveries/drop-next")
    async def drop_next(request: web.Request) -> web.Response:
        fields = await body_object(request)
        count = None if fields is None else fields.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return wc_error(400, "rest_invalid_param", 'Expected {"count": N}, N a whole number >= 0.')
        deliveries.drop_next = count
        return web.json_response({"drop_next": count})

    @routes.post("/_sandbox/deliveries/hold")
    async def hold(request: web.Request) -> web.Response:
        fields = await body_object(request)
        held = None if fields is None else fields.get("hold")
        if not isinstance(held, bool):
            return wc_error(400, "rest_invalid_param", 'Expected {"hold": true} or {"hold": false}.')
        deliveries.hold(held)
        return web.json_response({"held": held, "pending": deliveries.pending})

    return routes


def build_app(store: SandboxStore, config: SandboxConfig, hooks: Webhooks) -> web.Application:
    deliveries = Deliveries(
        hooks,
        store,
        timeout_s=config.delivery_timeout_s,
        drop_share=config.faults.drop_deliveries,
        seed=config.seed,
    )

    async def sender(app: web.Application) -> AsyncIterator[None]:
        await deliveries.start()
        yield
        await deliveries.stop()

    app = web.Application()
    app.cleanup_ctx.append(sender)
    app.add_routes(_admin_routes(store, deliveries))
    front = _StoreFront(store, config, WebhooksResource(hooks, deliveries.ping))
    app.router.add_route("*", "/{tail:.*}", front.handle)
    return app
