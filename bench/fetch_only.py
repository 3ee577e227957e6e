"""The fetch-only floor: read every page of a store with wcsync's own client and throw the pages away.

    .venv/bin/python bench/fetch_only.py        # the store of WOO_URL / WOO_CONSUMER_KEY / WOO_CONSUMER_SECRET

What a sync cannot do less than: the same requests, OAuth signing, concurrency (4 pages in flight) and
JSON parsing as `wcsync start`, and nothing else (no database, no events). bench/side_by_side.py runs it
as the floor the re-syncs are measured against. Prints {"customers": N, "pages": P} as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infrastructure.adapters.woocommerce import (  # noqa: E402
    ClientOptions,
    StoreCredentials,
    WooCommerceClient,
)
from infrastructure.support.config import check_store_url  # noqa: E402
from infrastructure.support.logging import configure_logging  # noqa: E402


async def fetch_all(url: str, credentials: StoreCredentials) -> dict[str, int]:
    customers = pages = 0
    async with WooCommerceClient(check_store_url(url), credentials, ClientOptions()) as client:
        async for page in client.pages():
            customers += len(page.records) + len(page.rejected)
            pages += 1
    return {"customers": customers, "pages": pages}


def main() -> None:
    configure_logging(os.environ.get("WCSYNC_LOG_LEVEL", "error"))  # as `wcsync` does: nothing on stdout
    credentials = StoreCredentials(os.environ["WOO_CONSUMER_KEY"], os.environ["WOO_CONSUMER_SECRET"])
    print(json.dumps(asyncio.run(fetch_all(os.environ["WOO_URL"], credentials))))


if __name__ == "__main__":
    main()
