"""`wcsync sandbox` and `wcsync demo`: the sandbox store (a development and test double) on this machine,
alone or with a full sync of it."""

from __future__ import annotations

import argparse

from cli import common
from cli.arguments import UsageError
from cli.demo import SERVE_PORT, run_demo
from domain.errors import EXIT_OK
from infrastructure.sandbox import (
    READ_ONLY_CONSUMER_KEY,
    READ_ONLY_CONSUMER_SECRET,
    Faults,
    SandboxConfig,
    serve_forever,
)
from infrastructure.support.config import check_listen_address


def _sandbox_config(args: argparse.Namespace) -> SandboxConfig:
    try:
        faults = Faults(**common.fields_from(args, Faults))
        if args.invalid > args.customers:
            raise UsageError("--invalid cannot exceed --customers")
        read_only = (
            (READ_ONLY_CONSUMER_KEY, READ_ONLY_CONSUMER_SECRET) if args.read_only_pair else (None, None)
        )
        return SandboxConfig(
            **common.fields_from(args, SandboxConfig),
            faults=faults,
            read_only_key=read_only[0],
            read_only_secret=read_only[1],
        )
    except ValueError as error:
        # "error_rate must be ..." names the field; on the command line it is --error-rate.
        raise _option_error(error) from None


def _option_error(error: ValueError) -> UsageError:
    """A sandbox setting's ValueError ("latency_ms must be ...") as its command-line option names it."""
    name, _, rest = str(error).partition(" ")
    return UsageError(f"--{name.replace('_', '-')} {rest}")


def sandbox(args: argparse.Namespace) -> int:
    config = _sandbox_config(args)
    check_listen_address(args.host, args.port)  # before the store is generated: exit 2, one line
    serve_forever(config, args.host, args.port)
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    try:  # the sandbox's bounds, checked before any work (demo generates the store first)
        SandboxConfig(customers=args.customers, invalid=min(args.invalid, args.customers))
    except ValueError as error:
        raise _option_error(error) from None
    if args.port is not None and not args.serve:
        raise UsageError("--port is the dashboard's, with --serve: add --serve, or drop --port")
    return run_demo(
        common.database(args),
        common.org(args),
        customers=args.customers,
        invalid=args.invalid,
        json_out=args.json,
        serve_port=(SERVE_PORT if args.port is None else args.port) if args.serve else None,
    )
