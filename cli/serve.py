"""`wcsync serve`: the seed's HTTP endpoint (infrastructure/api/http.py) until SIGINT/SIGTERM.

Prints one JSON line with its URL on stdout once it accepts connections; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from cli import common
from domain.errors import EXIT_OK
from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE, SecretKey
from infrastructure.api.http import ApiSettings, serve
from infrastructure.support.config import check_listen_address, is_loopback, listen_error
from infrastructure.support.errors import ConfigurationError
from infrastructure.wiring import open_services


def run(args: argparse.Namespace) -> int:
    check_listen_address(args.host, args.port)  # before any work: exit 2, one line
    if args.no_auth and not is_loopback(args.host):
        raise ConfigurationError(
            f"--no-auth answers anyone without a token, so it only listens on loopback, not on {args.host}; "
            "use --host 127.0.0.1, or create tokens with `wcsync tokens create` and drop --no-auth"
        )
    # The stores' secrets (store_id in a sync, POST /api/v1/stores): a key that is set must be valid.
    secret_key = SecretKey.from_environment() if os.environ.get(SECRET_KEY_VARIABLE) else None
    settings = ApiSettings(no_auth=args.no_auth, secret_key=secret_key)
    listened = False

    def listening(url: str) -> None:
        nonlocal listened
        listened = True
        sys.stdout.write(json.dumps({"url": url, "database": services.database.display}) + "\n")
        sys.stdout.flush()

    with open_services(common.database(args)) as services:
        try:
            asyncio.run(serve(services, args.host, args.port, listening, settings))
        except OSError as error:
            if listened:
                raise
            raise listen_error(error, args.host, args.port) from None  # the port taken meanwhile
    return EXIT_OK
