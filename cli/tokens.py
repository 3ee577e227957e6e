"""`wcsync tokens create | list | revoke`: the API tokens `wcsync serve` asks for (infrastructure.adapters.tokens).

A token is printed once, by `create`, and never again: the database keeps only its SHA-256. `list` and
`revoke` take the org from --org (or WCSYNC_ORG) when given, else look across every org; `create` takes it
as every command does (default 'default').
"""

from __future__ import annotations

import argparse

from cli import common
from cli.output import print_json
from domain import bounds
from domain.errors import EXIT_OK
from infrastructure.adapters.tokens import Role, TokenInfo
from infrastructure.support.errors import ConfigurationError


def run(args: argparse.Namespace) -> int:
    return {"create": _create, "list": _list, "revoke": _revoke}[args.tokens_command](args)


def _org_if_given(args: argparse.Namespace) -> str | None:
    """--org (or WCSYNC_ORG) when given, checked like every org id; None: every org."""
    value = common.setting(args, "org", "WCSYNC_ORG")
    if value is None:
        return None
    try:
        return bounds.check_identifier(value, "--org")
    except bounds.BoundError as error:
        raise ConfigurationError(f"--org (or WCSYNC_ORG) {error.problem}") from None


def _create(args: argparse.Namespace) -> int:
    org = common.org(args)
    with common.services(args) as services:
        token, info = services.api_tokens().create(org, args.name, Role.parse(args.role))
    if args.json:
        print_json(
            {
                "token": token,
                "name": info.name,
                "org": info.org_id,
                "role": info.role.value,
                "createdAt": info.created_at,
            }
        )
    else:
        print(token)
        print(
            f"token {info.name!r} of org {info.org_id!r}, role {info.role}: shown this once, only its hash "
            "is kept; send it as `Authorization: Bearer TOKEN`"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    org = _org_if_given(args)
    with common.services(args, read_only=True) as services:
        rows = services.api_tokens().list(org)
    if args.json:
        print_json([row.as_json() for row in rows])
    elif not rows:
        where = f"org {org!r} has" if org is not None else "there are"
        print(f"{where} no API tokens; `wcsync tokens create --org ORG --name NAME` creates one")
    else:
        for row in rows:
            print(_line(row))
    return EXIT_OK


def _line(row: TokenInfo) -> str:
    state = f"revoked {row.revoked_at}" if row.revoked_at is not None else "active"
    used = row.last_used_at or "never"
    return f"{row.org_id}  {row.name}  {row.role}  created {row.created_at}  last used {used}  {state}"


def _revoke(args: argparse.Namespace) -> int:
    org = _org_if_given(args)
    with common.services(args) as services:
        info = services.api_tokens().revoke(args.name, org)
    print(f"revoked token {info.name!r} of org {info.org_id!r}: it is refused from now on")
    return EXIT_OK
