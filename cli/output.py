"""What the command line prints: JSON documents, a queue's status, and error lines with every credential
hidden. Light on purpose: `cli.main` uses it for every error, before any command module is loaded."""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from domain.errors import EXIT_OK, EXIT_UNFINISHED
from infrastructure.support.errors import printable
from infrastructure.support.redaction import redact

# The environment variables that hold credentials: hidden, in any form, from every line printed or logged.
SECRET_VARIABLES = ("WOO_CONSUMER_KEY", "WOO_CONSUMER_SECRET", "WCSYNC_CIPHER_KEY", "WCSYNC_AUDIT_KEY")
_COMMAND_LINE_URLS: list[str] = []  # --database-url, once parsed


def remember_database_url(url: str | None) -> None:
    """The command line's --database-url: its password is hidden like the environment's secrets."""
    _COMMAND_LINE_URLS[:] = [url] if url else []


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")


def error(message: str) -> None:
    sys.stderr.write(f"wcsync: {printable(message)}\n")  # a control character of any input, escaped


def redacted(text: str) -> str:
    """What the user sees and the log keeps, with every credential from the environment and the command
    line (the store's key and secret, the database password, the cipher and audit keys) hidden in any form."""
    secrets = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    for url in (os.environ.get("WCSYNC_DATABASE_URL", ""), *_COMMAND_LINE_URLS):
        try:
            secrets.append(unquote(urlsplit(url).password or ""))
        except ValueError:  # a malformed URL: its error message never quotes the password
            continue
    return redact(text, secrets)


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"queue      {status['queueId']}  ({status['queueName']})",
        f"org        {status['orgId']}",
        f"state      {status['state']}{'  ACTION REQUIRED: ' + str(status['actionRequiredReason']) if status['isActionRequired'] else ''}",
        f"progress   {status['progress']}%  ({status['doneCount'] + status['cancelledCount']}/{status['totalCount']} lines finished)",
        f"lines      draft {status['draftCount']} · done {status['doneCount']} · failed {status['failedCount']} · cancelled {status['cancelledCount']}",
        f"results    created {status['createdCount']} · updated {status['updatedCount']} · unchanged {status['unchangedCount']}",
        f"runs       {status['processCount']} (last {status['lastProcessDate']})",
        f"created    {status['createdAt']}",
    ]
    return "\n".join(lines)


def status_exit(status: dict[str, Any]) -> int:
    """0 when the queue is done, 1 when it needs someone (failed lines, action required)."""
    if status["isActionRequired"] or status["state"] == "failed":
        return EXIT_UNFINISHED
    return EXIT_OK
