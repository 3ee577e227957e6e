"""`wcsync stores add | list | remove | rekey`: the org's registered stores (infrastructure.services.stores).

A store's key and secret come from WOO_CONSUMER_KEY / WOO_CONSUMER_SECRET, or are asked for on a terminal;
they are checked against the store (one request) and kept encrypted under WCSYNC_SECRET_KEY. Nothing
prints them back, ever.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from cli import common
from cli.output import print_json
from domain.errors import EXIT_OK
from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE, SecretKey
from infrastructure.support.errors import ConfigurationError


def run(args: argparse.Namespace) -> int:
    return {"add": _add, "list": _list, "remove": _remove, "rekey": _rekey}[args.stores_command](args)


def _credential(variable: str, prompt: str) -> str:
    value = os.environ.get(variable, "")
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass(f"{prompt}: ")
    raise ConfigurationError(f"{variable} is not set; export it (or run on a terminal to be asked)")


def _add(args: argparse.Namespace) -> int:
    actor = common.actor()
    org = common.org(args)
    key = _credential("WOO_CONSUMER_KEY", "consumer key (ck_...)")
    secret = _credential("WOO_CONSUMER_SECRET", "consumer secret (cs_...)")
    with common.services(args) as services:
        registry = services.store_registry(SecretKey.from_environment(), common.client_options(args))
        document = asyncio.run(registry.add(org, args.url, key, secret, args.name, actor))
    if args.json:
        print_json(document)
    else:
        print(
            f"{document['action']} store {document['storeId']}  {document['url']}  key …{document.get('keyFingerprint', '')}"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    org = common.org(args)
    with common.services(args, read_only=True) as services:
        rows = services.store_registry(None, None).list(org)
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"org {org!r} has no registered stores; `wcsync stores add --url URL` registers one")
    else:
        for row in rows:
            print(
                f"{row['storeId']}  {row['url']}  {row['name']}  key {row['keyFingerprint']}  since {row['registeredAt']}"
            )
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    actor = common.actor()
    org = common.org(args)
    # No key needed: a removal deletes the sealed secret unread (a lost key must not keep a store registered).
    key = SecretKey.from_environment() if os.environ.get(SECRET_KEY_VARIABLE) else None
    with common.services(args) as services:
        services.store_registry(key, None).remove(org, args.store_id, actor)
    print(f"removed store {args.store_id}; its secret is deleted")
    return EXIT_OK


def _rekey(args: argparse.Namespace) -> int:
    old = SecretKey.from_environment("WCSYNC_SECRET_KEY_OLD")
    new = SecretKey.from_environment()
    with common.services(args) as services:
        count = services.store_registry(new, None).rekey(old, new)
    print(f"re-encrypted {count} store secret(s) under the key in WCSYNC_SECRET_KEY")
    return EXIT_OK
