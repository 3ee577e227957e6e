"""The sandbox's admin routes as a shop manager (or a test) calls them: over HTTP, on loopback only."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from infrastructure.sandbox import RunningSandbox


def admin(sandbox: RunningSandbox, method: str, path: str, body: Any = None) -> Any:
    """One admin request (``path`` under the sandbox, e.g. ``/_sandbox/customers/7``); its JSON answer."""
    url = sandbox.url + path
    assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), url
    data = None if body is None else json.dumps(body).encode()
    # S310: the scheme and host are checked just above; only the sandbox is ever opened.
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return json.loads(answer.read())
