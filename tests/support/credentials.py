"""Every form a store credential travels in, for tests that check none of them leaks."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus


def encodings(key: str, secret: str) -> dict[str, str]:
    """Every form of the credentials that the redaction must hide."""
    pair = f"{key}:{secret}".encode()
    forms = {
        "raw key": key,
        "raw secret": secret,
        "basic": base64.b64encode(pair).decode(),
        "basic urlsafe": base64.urlsafe_b64encode(pair).decode(),
        "basic unpadded": base64.b64encode(pair).decode().rstrip("="),
    }
    for name, value in (("key", key), ("secret", secret)):
        forms[f"quote {name}"] = quote(value, safe="")
        forms[f"quote_plus {name}"] = quote_plus(value)
        forms[f"quote lower-case {name}"] = _lower_escapes(quote(value, safe=""))
        forms[f"base64 {name}"] = base64.b64encode(value.encode()).decode()
        forms[f"json {name}"] = json.dumps(value)[1:-1]
    return forms


def _lower_escapes(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            out.append(text[i : i + 3].lower())
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
