"""WooCommerce's REST authentication, as its WC_REST_Authentication checks it: Basic (or consumer_key and
consumer_secret in the query) over HTTPS, OAuth 1.0a one-legged (HMAC-SHA1/-SHA256, signature, timestamp
window, nonce replay) over plain HTTP."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aiohttp import web

OAUTH_WINDOW_SECONDS = 15 * 60
# Nonces live for the timestamp window; past this many the oldest go first, so memory stays bounded.
MAX_REMEMBERED_NONCES = 200_000


class AuthRefused(Exception):
    """Credentials were given and are wrong: a 401 woocommerce_rest_authentication_error with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ApiKey:
    """One of the store's REST keys, as WooCommerce > Settings > Advanced > REST API lists them: a read-only
    key may list and read; creating, editing and deleting need a read/write one."""

    consumer_key: str
    consumer_secret: str
    write: bool

    def __repr__(self) -> str:
        return f"ApiKey(write={self.write})"


class Authenticator:
    """Checks each request's credentials against the store's keys (and remembers OAuth nonces)."""

    def __init__(self, keys: Sequence[ApiKey], *, tls: bool) -> None:
        self.keys = tuple(keys)
        self.tls = tls
        self.nonces: OrderedDict[str, float] = OrderedDict()

    def check(self, request: web.Request) -> ApiKey | None:
        """The key the request is authenticated with (None: no credentials at all, which is not an error here:
        permissions refuse later); AuthRefused when its credentials are wrong."""
        if self.tls:
            return self._basic(request)
        return self._oauth(request)

    def _key(self, consumer_key: str) -> ApiKey:
        """The key of that consumer key, as WooCommerce looks it up; AuthRefused when the store has none."""
        for key in self.keys:
            if _same(consumer_key, key.consumer_key):
                return key
        raise AuthRefused("Consumer key is invalid.")

    def _basic(self, request: web.Request) -> ApiKey | None:
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            given_key, _, secret = decoded.partition(":")
        elif "consumer_key" in request.query and "consumer_secret" in request.query:
            given_key, secret = request.query["consumer_key"], request.query["consumer_secret"]
        else:
            return None
        key = self._key(given_key)
        if not _same(secret, key.consumer_secret):
            raise AuthRefused("Consumer secret is invalid.")
        return key

    def _oauth(self, request: web.Request) -> ApiKey | None:
        query_pairs = list(request.query.items())
        signed = [(k, v) for k, v in query_pairs if k != "oauth_signature"]
        params = {k: v for k, v in query_pairs if k.startswith("oauth_")}
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "oauth ":
            for key, value in _parse_oauth_header(header[6:]):
                if key == "realm":
                    continue
                params[key] = value
                if key != "oauth_signature":
                    signed.append((key, value))
        if not params:
            return None
        for name in (
            "oauth_consumer_key",
            "oauth_timestamp",
            "oauth_nonce",
            "oauth_signature",
            "oauth_signature_method",
        ):
            if not params.get(name):
                raise AuthRefused(f"{name} parameter is missing")
        api_key = self._key(params["oauth_consumer_key"])
        digest = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}.get(
            params["oauth_signature_method"]
        )
        if digest is None:
            raise AuthRefused("Invalid signature - signature method is invalid.")
        scheme = "https" if self.tls else "http"
        host = request.host.lower()
        if host.endswith(":80") and scheme == "http":
            host = host[:-3]
        base_uri = f"{scheme}://{host}{request.raw_path.split('?', 1)[0]}"
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in signed))
        base_string = "&".join((request.method.upper(), _enc(base_uri), _enc(normalized)))
        signing_key = f"{api_key.consumer_secret}&".encode()
        expected = base64.b64encode(hmac.new(signing_key, base_string.encode(), digest).digest()).decode()
        if not _same(params["oauth_signature"], expected):
            raise AuthRefused("Invalid signature - provided signature does not match.")
        now = time.time()
        try:
            timestamp = int(params["oauth_timestamp"])
        except ValueError:
            raise AuthRefused("Invalid timestamp.") from None
        if abs(now - timestamp) > OAUTH_WINDOW_SECONDS:
            raise AuthRefused("Invalid timestamp.")
        nonces = self.nonces
        while nonces:
            oldest, seen_at = next(iter(nonces.items()))
            if seen_at >= now - OAUTH_WINDOW_SECONDS and len(nonces) < MAX_REMEMBERED_NONCES:
                break
            del nonces[oldest]
        if params["oauth_nonce"] in nonces:
            raise AuthRefused("Invalid nonce - nonce has already been used.")
        nonces[params["oauth_nonce"]] = now
        return api_key


def _enc(value: str) -> str:
    return quote(value, safe="~")


def _parse_oauth_header(value: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for match in re.finditer(r'([A-Za-z0-9_]+)="([^"]*)"', value):
        pairs.append((unquote(match.group(1)), unquote(match.group(2))))
    return pairs


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
