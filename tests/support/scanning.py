"""Reading a store through the WooCommerce client's scan, for the client's tests."""

from __future__ import annotations

from typing import Any

from infrastructure.adapters.woocommerce import Page, WooCommerceClient


async def scan(client: WooCommerceClient, **kwargs: Any) -> tuple[list[int], list[Page]]:
    """Every page of ``client.pages(**kwargs)``, and the ids on them in order (a known page's too)."""
    ids: list[int] = []
    pages: list[Page] = []
    async for page in client.pages(**kwargs):
        pages.append(page)
        ids.extend(record["id"] for record in page.records)
        ids.extend(page.known_ids or ())
    return ids, pages
