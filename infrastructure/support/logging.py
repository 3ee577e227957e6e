"""Structured logs through structlog, to stderr; never to stdout (stdout belongs to --json output)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from infrastructure.support.errors import ConfigurationError, quoted

_SECRET_KEYS = frozenset(
    {"consumer_key", "consumer_secret", "password", "secret", "token", "authorization", "oauth_signature"}
)


def _drop_secrets(_: object, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """A last line of defence: a field named like a secret is never written, whatever logged it."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "***"
    return event_dict


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("console", "json")


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Logs to stderr at ``level`` (else WCSYNC_LOG_LEVEL, else warning) in ``fmt`` (else
    WCSYNC_LOG_FORMAT, else console on a terminal and json otherwise). A variable set to a value that is
    not one of them is refused (ConfigurationError, exit 2), as the flag --log-format is; set empty, it is
    unset."""
    level_name = (level or os.environ.get("WCSYNC_LOG_LEVEL") or "warning").strip().lower()
    if level_name == "warn":
        level_name = "warning"
    if level_name not in LOG_LEVELS:
        raise ConfigurationError(
            f"WCSYNC_LOG_LEVEL {quoted(level_name)} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    numeric = getattr(logging, level_name.upper())
    fmt = fmt or os.environ.get("WCSYNC_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    if fmt not in LOG_FORMATS:
        raise ConfigurationError(
            f"WCSYNC_LOG_FORMAT {quoted(fmt)} is not a log format; use one of {', '.join(LOG_FORMATS)}"
        )
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
