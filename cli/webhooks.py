"""`wcsync webhooks install | status | uninstall | deliveries`: a registered store's customer webhooks, in the store
(infrastructure.services.webhooks). Each needs WCSYNC_SECRET_KEY (the store's credentials, and for install
its webhook secret, are sealed under it); changing webhooks needs a Read/Write key (a read-only one: exit 3,
saying what to change).

`status` exits 1 (action required) when a webhook is disabled, paused or missing, 0 when all three are
active, so a monitor can run it as it is. The webhook secret is never printed. `deliveries` lists what the
receiver recorded (read from the projections: it needs no key and asks the store nothing).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cli import common
from cli.arguments import UsageError
from cli.output import print_json
from domain.errors import EXIT_OK, EXIT_UNFINISHED, StoreNotFoundError
from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.services.webhooks import ACTIVE, check_public_url
from infrastructure.support.config import check_ca_file
from projections import queries


def run(args: argparse.Namespace) -> int:
    handlers = {"install": _install, "status": _status, "uninstall": _uninstall, "deliveries": _deliveries}
    return handlers[args.webhooks_command](args)


def _client_options(args: argparse.Namespace) -> ClientOptions:
    ca_file = check_ca_file(args.ca_file) if args.ca_file is not None else None
    try:
        return ClientOptions(ca_file=ca_file, timeout_s=args.timeout)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _install(args: argparse.Namespace) -> int:
    org = common.org(args)
    check_public_url(args.public_url)  # before the database or the key: a typo is one line, exit 2
    key = SecretKey.from_environment()
    with common.services(args) as services:
        webhooks = services.store_webhooks(key, _client_options(args))
        document = asyncio.run(webhooks.install(org, args.store, args.public_url))
    if args.json:
        print_json(document)
        return EXIT_OK
    print(f"webhooks of store {document['storeId']} deliver to {document['deliveryUrl']}")
    for row in document["webhooks"]:
        print(f"  {row['action']:<9}  {row['topic']:<16}  #{row['id']}  {row['status']}")
    if document["duplicatesRemoved"]:
        print(f"  removed duplicate webhook(s) {', '.join(f'#{i}' for i in document['duplicatesRemoved'])}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    org = common.org(args)
    key = SecretKey.from_environment()
    with common.services(args) as services:
        document = asyncio.run(services.store_webhooks(key, _client_options(args)).status(org, args.store))
    if args.json:
        print_json(document)
    else:
        print(f"webhooks of store {document['storeId']}:")
        for row in document["webhooks"]:
            print(f"  {row['topic']:<16}  {_line(row)}")
            last = row.get("lastDeliveryAt") or "none yet"
            print(
                f"  {'':<16}  last delivery received {last}, {row.get('failuresCounted') or 0} failed to apply"
            )
        receiver = document.get("receiver")
        if receiver:
            counts = receiver["deliveries"]
            print(
                f"receiver: {counts['applied']} applied, {counts['pending']} pending, {counts['failed']} failed; "
                f"{receiver['refused']} request(s) refused for their signature"
            )
        if not document["healthy"]:
            print(
                "action required: `wcsync webhooks install --store STORE_ID --public-url URL` makes them active"
            )
    return EXIT_OK if document["healthy"] else EXIT_UNFINISHED


def _line(row: dict[str, Any]) -> str:
    if row["id"] is None:
        return "MISSING (the store has no such webhook)"
    status = row["status"]
    if status == "disabled":
        shown = "DISABLED (WooCommerce switched it off after repeated failed deliveries, or someone did)"
    elif status != ACTIVE:
        shown = f"{str(status).upper()} (it delivers nothing)"
    else:
        shown = ACTIVE
    return f"#{row['id']}  {shown}  {row['deliveryUrl']}"


def _deliveries(args: argparse.Namespace) -> int:
    """The store's recorded deliveries (read from the projections: no key, no store request)."""
    org = common.org(args)
    with common.services(args, read_only=True) as services:
        services.catch_up()
        if queries.store(services.projections, org, args.store) is None:
            raise StoreNotFoundError(args.store, org)
        rows = queries.webhook_deliveries(services.projections, org, args.store, args.limit)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no webhook delivery recorded for store {args.store}")
    for row in rows:
        customer = row["wooCustomerId"] if row["wooCustomerId"] is not None else "?"
        outcome = row["result"] or row["error"] or ""
        print(
            f"{row['receivedAt']}  {row['topic']:<16}  customer {customer:<8}  {row['state']:<7}  {outcome}"
            f"  (delivery {row['deliveryId'] or '-'})"
        )
    return EXIT_OK


def _uninstall(args: argparse.Namespace) -> int:
    org = common.org(args)
    key = SecretKey.from_environment()
    with common.services(args) as services:
        document = asyncio.run(services.store_webhooks(key, _client_options(args)).uninstall(org, args.store))
    if args.json:
        print_json(document)
    elif document["removed"]:
        removed = ", ".join(f"#{row['id']} {row['topic']}" for row in document["removed"])
        print(f"removed the webhooks of store {document['storeId']}: {removed}")
    else:
        print(f"store {document['storeId']} has no wcsync webhooks; nothing removed")
    return EXIT_OK
