"""Structured logs through structlog, to stderr; never to stdout (stdout belongs to --json output)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_SECRET_KEYS = frozenset(
    {"consumer_key", "consumer_secret", "password", "secret", "token", "authorization", "oauth_signature"}
)


def _drop_secrets(_: object, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """A last line of defence: a field named like a secret is never written, whatever logged it."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
    return event_dict


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    level_name = (level or os.environ.get("WCSYNC_LOG_LEVEL") or "warning").upper()
    numeric = getattr(logging, level_name, None)
    if not isinstance(numeric, int):
        numeric = logging.WARNING
    fmt = fmt or os.environ.get("WCSYNC_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
