"""A plain loop, the way a user would write a mirror without wcsync (issue 13's yardstick).

    WOO_URL=... WOO_CONSUMER_KEY=... WOO_CONSUMER_SECRET=... PLAIN_DATABASE_URL=postgresql://... \
        .venv/bin/python bench/plain_loop.py

`requests` for the pages (one at a time, OAuth 1.0a query signing as the official `woocommerce` client does
over HTTP), psycopg for PostgreSQL: one upsert per customer, a commit per page. No history, no validation,
no resume: only the rows. Prints {"customers": N, "pages": P} as JSON.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlencode

import psycopg
import requests
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_QUERY
from oauthlib.oauth1 import Client as OAuth1Client

UPSERT = (
    "INSERT INTO plain_customers (id, email, record) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, record = EXCLUDED.record"
)


def main() -> None:
    url = os.environ["WOO_URL"].rstrip("/") + "/wp-json/wc/v3/customers"
    oauth = OAuth1Client(
        os.environ["WOO_CONSUMER_KEY"],
        client_secret=os.environ["WOO_CONSUMER_SECRET"],
        signature_method=SIGNATURE_HMAC_SHA256,
        signature_type=SIGNATURE_TYPE_QUERY,
    )
    session = requests.Session()
    customers = page = 0
    with psycopg.connect(os.environ["PLAIN_DATABASE_URL"]) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS plain_customers (id bigint PRIMARY KEY, email text, record jsonb)"
        )
        conn.commit()
        while True:
            page += 1
            query = urlencode({"page": page, "per_page": 100, "orderby": "id", "order": "asc"})
            signed, _, _ = oauth.sign(f"{url}?{query}", http_method="GET")
            reply = session.get(signed, timeout=60)
            reply.raise_for_status()
            records = reply.json()
            if not records:
                break
            with conn.cursor() as cur:
                for record in records:
                    cur.execute(UPSERT, (record["id"], record.get("email"), json.dumps(record)))
            conn.commit()
            customers += len(records)
            if page >= int(reply.headers.get("X-WP-TotalPages", page)):
                break
    print(json.dumps({"customers": customers, "pages": page}))


if __name__ == "__main__":
    main()
