"""Store secrets' sealing and key parsing (infrastructure/adapters/secrets.py), without a database."""

from __future__ import annotations

import base64
import hashlib

import pytest

from domain.errors import EXIT_USAGE
from infrastructure.adapters.secrets import (
    NONCE_BYTES,
    SecretKey,
    SecretKeyError,
    seal,
    unseal,
)
from infrastructure.support.errors import ConfigurationError

PLAINTEXT = b'{"key": "ck_live_0123456789", "secret": "cs_live_abcdef"}'
ORG, STORE = "org-1", "store-1"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_seal_then_unseal_gives_the_plaintext_back_with_a_fresh_nonce_each_time() -> None:
    key = SecretKey.generate()
    nonce, ciphertext = seal(key, ORG, STORE, PLAINTEXT)
    again_nonce, again_ciphertext = seal(key, ORG, STORE, PLAINTEXT)
    assert len(nonce) == NONCE_BYTES
    assert nonce != again_nonce and ciphertext != again_ciphertext
    assert PLAINTEXT not in ciphertext
    assert unseal(key, ORG, STORE, nonce, ciphertext) == PLAINTEXT
    assert unseal(key, ORG, STORE, again_nonce, again_ciphertext) == PLAINTEXT


def test_a_wrong_key_is_one_line_naming_the_store_and_the_rekey_command() -> None:
    nonce, ciphertext = seal(SecretKey.generate(), ORG, STORE, PLAINTEXT)
    with pytest.raises(SecretKeyError) as caught:
        unseal(SecretKey.generate(), ORG, STORE, nonce, ciphertext)
    message = str(caught.value)
    assert message == (
        "WCSYNC_SECRET_KEY cannot decrypt the secret of store store-1: wrong key? (`wcsync stores rekey` "
        "re-encrypts under a new key given the old one in WCSYNC_SECRET_KEY_OLD)"
    )
    assert caught.value.exit_code == EXIT_USAGE and isinstance(caught.value, ConfigurationError)


@pytest.mark.parametrize(
    ("org_id", "store_id"),
    [("org-1", "store-2"), ("org-2", "store-1"), ("org-1\x00store", "1"), ("org-1", "store-1 ")],
)
def test_a_row_moved_to_another_store_or_org_does_not_decrypt(org_id: str, store_id: str) -> None:
    key = SecretKey.generate()
    nonce, ciphertext = seal(key, ORG, STORE, PLAINTEXT)
    with pytest.raises(SecretKeyError):
        unseal(key, org_id, store_id, nonce, ciphertext)


def test_a_tampered_ciphertext_or_nonce_does_not_decrypt() -> None:
    key = SecretKey.generate()
    nonce, ciphertext = seal(key, ORG, STORE, PLAINTEXT)
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    for bad_nonce, bad_ciphertext in ((nonce, flipped), (bytes(12), ciphertext), (nonce[:8], ciphertext)):
        with pytest.raises(SecretKeyError):
            unseal(key, ORG, STORE, bad_nonce, bad_ciphertext)


def test_the_key_comes_from_the_environment_and_shows_only_its_fingerprint() -> None:
    raw = bytes(range(32))
    key = SecretKey.from_environment(environ={"WCSYNC_SECRET_KEY": f"  {b64(raw)}\n"})
    assert key.fingerprint == hashlib.sha256(raw).hexdigest()[:12]
    assert key == SecretKey(raw) and key != SecretKey.generate()
    for shown in (repr(key), str(key), f"{key}"):
        assert b64(raw) not in shown and raw.hex() not in shown and key.fingerprint in shown


def test_the_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = bytes(range(1, 33))
    monkeypatch.setenv("WCSYNC_SECRET_KEY", b64(raw))
    assert SecretKey.from_environment() == SecretKey(raw)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_key_says_how_to_make_one(value: str | None) -> None:
    environ = {} if value is None else {"WCSYNC_SECRET_KEY": value}
    with pytest.raises(SecretKeyError) as caught:
        SecretKey.from_environment(environ=environ)
    assert str(caught.value) == (
        "WCSYNC_SECRET_KEY is not set; set it to the base64 of 32 random bytes (`openssl rand -base64 32`) "
        "to keep store secrets"
    )


BAD_VALUES = [
    "not-base64-at-all!!s3cr3tvalue",  # not base64
    "c2VjcmV0dmFsdWU=",  # base64 of 11 bytes
    b64(b"s3cr3tvalue-" * 4),  # base64 of 48 bytes
    b64(bytes(32))[:-2],  # cut short: no longer valid base64
]


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("variable", ["WCSYNC_SECRET_KEY", "WCSYNC_SECRET_KEY_OLD"])
def test_an_invalid_key_is_one_line_naming_the_variable_and_never_the_value(
    value: str, variable: str
) -> None:
    with pytest.raises(SecretKeyError) as caught:
        SecretKey.from_environment(variable, environ={variable: value})
    message = str(caught.value)
    assert variable in message and "openssl rand -base64 32" in message
    assert "\n" not in message
    assert value not in message and value.strip("=") not in message
    assert caught.value.__context__ is None  # no library error that a traceback would show beside it


def test_the_event_ciphers_key_is_refused() -> None:
    text = b64(bytes(range(32)))
    with pytest.raises(SecretKeyError) as caught:
        SecretKey.from_environment(environ={"WCSYNC_SECRET_KEY": text, "WCSYNC_CIPHER_KEY": f"{text}\n"})
    message = str(caught.value)
    assert "must not be the event cipher's key" in message and "WCSYNC_CIPHER_KEY" in message
    assert text not in message
    other = b64(bytes(range(1, 33)))
    assert SecretKey.from_environment(environ={"WCSYNC_SECRET_KEY": text, "WCSYNC_CIPHER_KEY": other})


def test_the_old_key_names_its_own_variable_when_it_cannot_decrypt() -> None:
    nonce, ciphertext = seal(SecretKey.generate(), ORG, STORE, PLAINTEXT)
    old = SecretKey.from_environment(
        "WCSYNC_SECRET_KEY_OLD", environ={"WCSYNC_SECRET_KEY_OLD": b64(bytes(32))}
    )
    with pytest.raises(SecretKeyError, match=r"^WCSYNC_SECRET_KEY_OLD cannot decrypt the secret of store"):
        unseal(old, ORG, STORE, nonce, ciphertext)


def test_a_key_of_the_wrong_length_is_refused_without_its_bytes() -> None:
    with pytest.raises(SecretKeyError) as caught:
        SecretKey(b"\x01" * 16)
    assert "16 bytes" in str(caught.value) and "\\x01" not in str(caught.value)
