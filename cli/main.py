"""The `wcsync` command: parse (cli.parser), run the command's handler (imported only then), and turn
every error into one line and an exit code.

Exit codes (domain.errors, carried by each error class): 0 done · 1 finished with failed lines or action
required · 2 usage, configuration, unknown queue (or another org's) · 3 store unreachable or credentials
refused · 4 database unavailable, not migrated, full or missing (a read-only command on a SQLite file that
does not exist, or that holds no wcsync tables, creates nothing) · 70 an error nobody foresaw (one line;
the traceback is in the log, shown with -vv) · 130 interrupted. Every error is one line on stderr:
`wcsync: <cause>; <what to do>`, with credentials redacted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import cast

from cli.output import error, redacted, remember_database_url
from cli.parser import HANDLERS, build_parser
from domain.errors import EXIT_DATABASE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, WcsyncError
from infrastructure.support.errors import database_errors, first_line, storage_error

Handler = Callable[[argparse.Namespace], int]


def entry() -> int:
    """The `wcsync` command's process (console script, ``python -m cli.main``): main(), then an exit
    without the collector's last scans (infrastructure.support.collector.spare_the_exit)."""
    code = main()
    from infrastructure.support.collector import spare_the_exit

    spare_the_exit()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    remember_database_url(getattr(args, "database_url", None))
    verbose = getattr(args, "verbose", 0) or 0
    # Imported once the arguments are parsed: `--help` and a usage error end without structlog (0.03 s).
    from infrastructure.support.collector import tune_for_bulk_work
    from infrastructure.support.logging import configure_logging

    tune_for_bulk_work()  # a sync's pages are garbage freed by reference counting: collect less often
    try:
        configure_logging(
            level={0: None, 1: "info"}.get(verbose, "debug"),
            fmt=getattr(args, "log_format", None),
        )
    except WcsyncError as problem:  # WCSYNC_LOG_LEVEL / WCSYNC_LOG_FORMAT set to no such thing
        error(str(problem))
        return problem.exit_code
    try:
        code = _handler(args.command)(args)
        sys.stdout.flush()  # inside the try: a reader gone away shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        error("interrupted; every saved batch is kept — `wcsync resume QUEUE_ID` continues")
        return EXIT_INTERRUPTED
    except WcsyncError as problem:
        error(str(problem))  # our own message: credentials were redacted where store text entered it
        return problem.exit_code
    except BrokenPipeError:
        # The reader went away (`wcsync audit queue ... | head`): stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as problem:
        return _unforeseen(problem)


def _handler(command: str) -> Handler:
    """The command's function, its module imported now (cli.parser.HANDLERS names it)."""
    module, _, function = HANDLERS[command].partition(":")
    return cast(Handler, getattr(importlib.import_module(module), function))


def _unforeseen(problem: Exception) -> int:
    """A failure nobody foresaw: one line (redacted), the traceback in the log only (-vv shows it)."""
    import structlog  # loaded already: logging was configured before the handler ran

    if _is_database_error(problem):
        # A database library's error that no adapter converted: still the database's class of failure.
        error(redacted(str(storage_error(problem))))
        structlog.get_logger("wcsync").debug("database_error", exception=redacted(traceback.format_exc()))
        return EXIT_DATABASE
    structlog.get_logger("wcsync").debug("unexpected_error", exception=redacted(traceback.format_exc()))
    error(
        redacted(f"unexpected error: {type(problem).__name__}: {first_line(problem)}")
        + "; the traceback is in the log (run again with -vv to see it) - please report it"
    )
    return EXIT_INTERNAL


def _is_database_error(problem: BaseException) -> bool:
    return isinstance(problem, database_errors())  # only libraries already loaded: no import for the check


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(entry())
