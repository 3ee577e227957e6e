"""The two shapes of answer a WordPress site gives: WooCommerce's JSON error, and an HTML page."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def wc_error(status: int, code: str, message: str, **data: Any) -> web.Response:
    body = {"code": code, "message": message, "data": {"status": status, **data}}
    return web.json_response(body, status=status)


def html(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="UTF-8")
