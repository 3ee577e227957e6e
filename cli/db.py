"""`wcsync db migrate`: every table created once (event store and projections)."""

from __future__ import annotations

import argparse

from cli import common
from domain.errors import EXIT_OK
from infrastructure.wiring import migrate


def run(args: argparse.Namespace) -> int:
    database = common.database(args)
    migrate(database)
    print(f"tables ready in {database.display}")
    return EXIT_OK
