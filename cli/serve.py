"""`wcsync serve`: the seed's HTTP endpoint (infrastructure/api/http.py) until SIGINT/SIGTERM.

Prints one JSON line with its URL on stdout once it accepts connections; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from cli import common
from domain.errors import EXIT_OK
from infrastructure.api.http import serve
from infrastructure.support.config import check_listen_address, is_loopback, listen_error
from infrastructure.wiring import open_services


def run(args: argparse.Namespace) -> int:
    check_listen_address(args.host, args.port)  # before any work: exit 2, one line
    if not is_loopback(args.host):
        sys.stderr.write(
            f"wcsync: warning: serving on {args.host} without authentication; "
            "put an authenticating proxy in front of it\n"
        )
    listened = False

    def listening(url: str) -> None:
        nonlocal listened
        listened = True
        sys.stdout.write(json.dumps({"url": url, "database": services.database.display}) + "\n")
        sys.stdout.flush()

    with open_services(common.database(args)) as services:
        try:
            asyncio.run(serve(services, args.host, args.port, listening))
        except OSError as error:
            if listened:
                raise
            raise listen_error(error, args.host, args.port) from None  # the port taken meanwhile
    return EXIT_OK
