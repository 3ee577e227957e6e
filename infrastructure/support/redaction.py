"""One redaction of credentials for every message, log line and stored event that can carry text from outside
(a store's answer, a library's error): ``redact(text, secrets)``.

It hides the given secrets (a store's consumer key and secret, a database password) in every form they
travel in: as they are, URL-encoded (``quote``, ``quote_plus``, twice), HTML- and JSON-escaped, in base64
(``Basic base64(key:secret)``, either one alone, standard or URL-safe alphabet, inside a longer base64 blob),
and whatever looks like a credential whatever its value: OAuth 1.0a parameters (``oauth_signature=...``, in a
query, URL-encoded, or ``oauth_signature="..."`` in an ``Authorization: OAuth`` header),
``consumer_key=``/``consumer_secret=`` parameters, an ``Authorization: Basic``/``Bearer`` value, a URL's
password and ``password=`` settings. What is hidden becomes ``***``; the rest of the text is kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"

# A parameter that is a credential whatever its value; the name stays, the value goes. The separator covers
# a query (`=`), a URL-encoded query (`%3D`, `%253D`), a header or JSON (`="`, `": "`) and escaped quotes. A
# value ends where its query's next parameter starts: `&` after a plain separator (there `%26` is a "&" in the
# value), `%26` after `%3D` (there `%2526` is a "%26" in it), `%2526` after `%253D`.
_NAME = r"""
    (?:oauth_[a-z_]+|consumer_key|consumer_secret|client_secret|api_key|access_token|password|passwd)
    (?:["']|\\["'])?                                   # the name's closing quote in JSON
"""
_VALUE_START = r"""\s*(?:\\?["'])?"""  # the value's opening quote


def _parameter(separator: str, end: str) -> re.Pattern[str]:
    ends = f"(?!{end}|\\\\)" if end else "(?!\\\\)"
    return re.compile(f"(?ix){_NAME}\\s*(?:{separator}){_VALUE_START}(?P<value>(?:{ends}[^&\\s\"',;<>])+)")


_PARAMETERS = (_parameter("=|:", ""), _parameter("%3D", "%26"), _parameter("%253D", "%2526"))
# Authorization schemes whose value is a credential. Only the scheme's name ignores case: under a global
# (?i) the value's [A-Za-z] would also match the non-ASCII letters that fold to ASCII ones (U+0130 'İ',
# U+0131, U+017F, U+212A), so a token with text such as 'İ' right after it became one value that is not
# base64 and was kept whole.
_BASIC = re.compile(r"(?i:\bbasic)(?:\s+|%20|\+)(?P<value>[A-Za-z0-9+/_-]{4,}={0,2})")
_BEARER = re.compile(r"(?i)\bbearer(?:\s+|%20|\+)(?P<value>[A-Za-z0-9+/_.~-]{16,}={0,2})")
# A URL's password: scheme://user:PASSWORD@host.
_USERINFO = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]*:(?P<value>[^@/\s]*)@")
# Anything that may be base64 (standard or URL-safe alphabet): decoded to look for a secret inside.
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _loose_b64decode(chunk: str) -> bytes | None:
    """Base64 (standard or URL-safe, padding optional; a stray last character, text right after the token,
    dropped) decoded, or None when it is not base64."""
    chunk = chunk.rstrip("=").translate(_URLSAFE_TO_STANDARD)
    if len(chunk) % 4 == 1:
        chunk = chunk[:-1]
    try:
        return base64.b64decode(chunk + "=" * (-len(chunk) % 4))
    except (binascii.Error, ValueError):
        return None


def _is_basic_credential(value: str) -> bool:
    """``Basic X``: X is base64 of ``user:password`` (not a word, as in "Basic authentication required")."""
    decoded = _loose_b64decode(value)
    return decoded is not None and b":" in decoded


def _is_token(value: str) -> bool:
    return len(value) >= 24 or any(c.isdigit() for c in value)


_CREDENTIALS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    *((parameter, lambda value: True) for parameter in _PARAMETERS),
    (_BASIC, _is_basic_credential),
    (_BEARER, _is_token),
    (_USERINFO, lambda value: True),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every form of each secret, and every credential-like value, replaced by ``***``."""
    return _redactor(secrets).redact(text)


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """``value`` (a str, or a dict/list/tuple of them, as an event's details) with every string redacted."""
    return _redactor(secrets).redact_value(value)


def _redactor(secrets: Iterable[str]) -> Redactor:
    return _compiled(tuple(sorted({s for s in secrets if s})))


@lru_cache(maxsize=64)
def _compiled(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


class Redactor:
    """The compiled redaction for one set of secrets (``redact`` keeps the last few)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(s for s in secrets if s)
        forms: set[str] = set()
        for secret in self.secrets:
            forms.update(_forms(secret))
        for first in self.secrets:
            for second in self.secrets:
                if first != second:
                    # HTTP Basic sends base64(key:secret): its base64 is not made of the parts' base64.
                    forms.update(_base64_forms(f"{first}:{second}"))
        # Longest first: where forms overlap, the longest decides the span.
        self._patterns = [
            re.compile(f"(?=({_pattern(form)}))") for form in sorted(forms, key=lambda f: (-len(f), f))
        ]
        # Base64 of UTF-8 text, or of Latin-1 as HTTP Basic encodes it by default.
        self._needles = sorted({n for s in self.secrets for n in _encoded(s)})

    def redact(self, text: str) -> str:
        if not text:
            return text
        spans: list[tuple[int, int]] = []
        for pattern in self._patterns:
            spans.extend(match.span(1) for match in pattern.finditer(text))
        for credential, accept in _CREDENTIALS:
            spans.extend(
                match.span("value") for match in credential.finditer(text) if accept(match.group("value"))
            )
        if self._needles:
            spans.extend(
                match.span() for match in _BASE64_TOKEN.finditer(text) if self._hides_secret(match.group())
            )
        if not spans:
            return text
        out: list[str] = []
        position = 0
        for start, end in _merged(spans):
            out.append(text[position:start])
            out.append(MASK)
            position = end
        out.append(text[position:])
        return "".join(out)

    def redact_value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if depth > 20:
            return value
        if isinstance(value, dict):
            return {
                self.redact_value(k, depth + 1): self.redact_value(v, depth + 1) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.redact_value(v, depth + 1) for v in value)
        return value

    def _hides_secret(self, token: str) -> bool:
        """Whether base64 ``token`` (read from any of its four alignments) decodes to text holding a secret."""
        standard = token.rstrip("=")
        for offset in range(4):
            if len(standard) - offset < 4:
                break
            decoded = _loose_b64decode(standard[offset:])
            if decoded is not None and any(needle in decoded for needle in self._needles):
                return True
        return False


def _encoded(secret: str) -> set[bytes]:
    found = {secret.encode("utf-8")}
    with contextlib.suppress(UnicodeEncodeError):
        found.add(secret.encode("latin-1"))
    return found


def _forms(secret: str) -> set[str]:
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="/")}
    forms = {
        secret,
        html.escape(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    forms |= encoded | {quote(form, safe="") for form in encoded}  # a signed URL quoted again
    return forms | _base64_forms(secret)


def _base64_forms(text: str) -> set[str]:
    forms: set[str] = set()
    for raw in _encoded(text):
        standard = base64.b64encode(raw).decode("ascii")
        urlsafe = base64.urlsafe_b64encode(raw).decode("ascii")
        forms |= {standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("="), quote(standard, safe="")}
    return forms


def _pattern(form: str) -> str:
    """``form`` as a regular expression in which the hex digits of a %XX escape match either case."""
    escaped = re.escape(form)
    return re.sub(
        r"%([0-9A-F])([0-9A-F])",
        lambda m: "%" + "".join(f"[{c}{c.lower()}]" if c.isalpha() else c for c in m.groups()),
        escaped,
    )


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
