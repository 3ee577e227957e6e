"""Store secrets encrypted at rest: each registered store's credentials, sealed with AES-256-GCM under
WCSYNC_SECRET_KEY, in a table of their own (wcsync_store_secrets, migration 1 of adapters/migrations.py).

The org and store id are the associated data of each sealed secret: a row copied to another store or org
does not decrypt. What is sealed is the caller's bytes (the service stores the JSON of the consumer key and
secret, and the store's webhook secret once webhooks are installed).
Removing a store's secret deletes its row. No key, nonce, secret or plaintext appears in a log line, an
exception message or a repr: a key shows only its fingerprint (the first 12 hex digits of its SHA-256).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime

from infrastructure.adapters.migrations import STORE_SECRETS_TABLE, Connection, storage_errors
from infrastructure.adapters.schema import iso
from infrastructure.support.config import CIPHER_KEY_VARIABLE, DatabaseConfig
from infrastructure.support.errors import ConfigurationError, printable, shortened

SECRET_KEY_VARIABLE = "WCSYNC_SECRET_KEY"  # noqa: S105 (a variable's name, not a key)
OLD_SECRET_KEY_VARIABLE = "WCSYNC_SECRET_KEY_OLD"  # noqa: S105 (the key `wcsync stores rekey` re-encrypts from)
KEY_BYTES = 32
NONCE_BYTES = 12
FINGERPRINT_HEX = 12

_HOW = "the base64 of 32 random bytes (`openssl rand -base64 32`)"


class SecretKeyError(ConfigurationError):
    """WCSYNC_SECRET_KEY is missing or invalid, or cannot decrypt a stored secret (exit 2)."""


def _purpose(variable: str) -> str:
    if variable == OLD_SECRET_KEY_VARIABLE:
        return "the key the store secrets are encrypted with now"
    return f"{_HOW} to keep store secrets"


class SecretKey:
    """The key of the store secrets (32 bytes). Its repr and str show the fingerprint only."""

    __slots__ = ("_key", "fingerprint", "variable")

    def __init__(self, key: bytes, variable: str = SECRET_KEY_VARIABLE) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"{variable} must be {_HOW}, not {len(key)} bytes")
        self._key = bytes(key)
        self.variable = variable  # where it came from, for the messages that name it
        self.fingerprint = hashlib.sha256(self._key).hexdigest()[:FINGERPRINT_HEX]

    @classmethod
    def generate(cls, variable: str = SECRET_KEY_VARIABLE) -> SecretKey:
        return cls(os.urandom(KEY_BYTES), variable)

    @classmethod
    def from_text(cls, text: str, variable: str = SECRET_KEY_VARIABLE) -> SecretKey:
        """A key as the environment gives it: base64 of exactly 32 bytes. An error names the variable and
        the fix, never the value."""
        text = text.strip()
        if not text:
            raise SecretKeyError(f"{variable} is not set; set it to {_purpose(variable)}")
        raw = _decode(text)
        if raw is None:
            raise SecretKeyError(f"{variable} is not valid base64; set it to {_HOW}")
        if len(raw) != KEY_BYTES:
            raise SecretKeyError(f"{variable} decodes to {len(raw)} bytes, not {KEY_BYTES}; set it to {_HOW}")
        return cls(raw, variable)

    @classmethod
    def from_environment(
        cls, variable: str = SECRET_KEY_VARIABLE, environ: Mapping[str, str] | None = None
    ) -> SecretKey:
        """The key in ``variable`` (default WCSYNC_SECRET_KEY) of the environment. Refused when it is the
        event cipher's key (WCSYNC_CIPHER_KEY): one key for two purposes would tie their rotations."""
        env = os.environ if environ is None else environ
        key = cls.from_text(env.get(variable, ""), variable)
        cipher = _decode(env.get(CIPHER_KEY_VARIABLE, "").strip())
        if cipher and hmac.compare_digest(cipher, key._key):
            raise SecretKeyError(
                f"{variable} must not be the event cipher's key ({CIPHER_KEY_VARIABLE}); give it a key of its "
                f"own, {_HOW}"
            )
        return key

    def same_as(self, other: SecretKey) -> bool:
        return hmac.compare_digest(self._key, other._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and self.same_as(other)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"SecretKey(fingerprint={self.fingerprint!r})"

    __str__ = __repr__


def _decode(text: str) -> bytes | None:
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _associated_data(org_id: str, store_id: str) -> bytes:
    return f"{org_id}\x00{store_id}".encode()


def seal(key: SecretKey, org_id: str, store_id: str, plaintext: bytes) -> tuple[bytes, bytes]:
    """``plaintext`` encrypted for this org's store: (nonce, ciphertext), a fresh random 12-byte nonce each
    time, the org and store id as associated data."""
    # cryptography is loaded by the first seal or unseal: most commands open the services and never do.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key._key).encrypt(nonce, plaintext, _associated_data(org_id, store_id))


def unseal(key: SecretKey, org_id: str, store_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    """What ``seal`` sealed. A wrong key, a changed row or a row of another store or org: SecretKeyError."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key._key).decrypt(nonce, ciphertext, _associated_data(org_id, store_id))
    except (InvalidTag, ValueError):  # ValueError: a nonce of the wrong length
        raise _cannot_decrypt(key, store_id) from None


def _cannot_decrypt(key: SecretKey, store_id: str) -> SecretKeyError:
    store = printable(shortened(store_id))
    if key.variable == OLD_SECRET_KEY_VARIABLE:
        return SecretKeyError(
            f"{key.variable} cannot decrypt the secret of store {store}: wrong key? (give it the key the "
            "secrets are encrypted with now; nothing was re-encrypted)"
        )
    return SecretKeyError(
        f"{key.variable} cannot decrypt the secret of store {store}: wrong key? (`wcsync stores rekey` "
        f"re-encrypts under a new key given the old one in {OLD_SECRET_KEY_VARIABLE})"
    )


_COLUMNS = "org_id, store_id, nonce, ciphertext, key_fingerprint, updated_at"


class StoreSecrets:
    """The sealed secrets of the stores, on the events' database. Thread-safe (one connection, a lock).
    Every database error is a StorageError (exit 4); a database not migrated yet says to migrate.
    ``key`` None: only ``delete`` (removing a store must not need the key: a lost key would keep every
    store registered)."""

    def __init__(self, database: DatabaseConfig, key: SecretKey | None) -> None:
        self.database = database
        self._key = key
        self._conn = Connection(database)
        self._lock = threading.Lock()

    @property
    def key(self) -> SecretKey:
        if self._key is None:
            raise SecretKeyError(f"this command needs {SECRET_KEY_VARIABLE} to reach the stores' secrets")
        return self._key

    @key.setter
    def key(self, key: SecretKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        shown = self._key.fingerprint if self._key is not None else None
        return f"StoreSecrets({self.database.display}, key={shown})"

    def put(self, org_id: str, store_id: str, plaintext: bytes) -> None:
        """Seal and save the store's secret, replacing any it had."""
        nonce, ciphertext = seal(self.key, org_id, store_id, plaintext)
        with self._lock, storage_errors(self.database), self._conn.transaction():
            self._conn.execute(
                f"INSERT INTO {STORE_SECRETS_TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (org_id, store_id) DO UPDATE SET nonce = EXCLUDED.nonce, "
                "ciphertext = EXCLUDED.ciphertext, key_fingerprint = EXCLUDED.key_fingerprint, "
                "updated_at = EXCLUDED.updated_at",
                (org_id, store_id, nonce, ciphertext, self.key.fingerprint, _now()),
            )

    def get(self, org_id: str, store_id: str) -> bytes | None:
        """The store's secret, or None when it has none. Not decryptable with the key: SecretKeyError."""
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT nonce, ciphertext FROM {STORE_SECRETS_TABLE} WHERE org_id = %s AND store_id = %s",
                (org_id, store_id),
            )
        if not rows:
            return None
        nonce, ciphertext = rows[0]
        return unseal(self.key, org_id, store_id, bytes(nonce), bytes(ciphertext))

    def fingerprint_of(self, org_id: str, store_id: str) -> str | None:
        """The fingerprint of the key the store's secret is sealed with (None: no secret)."""
        with self._lock, storage_errors(self.database):
            rows = self._conn.execute(
                f"SELECT key_fingerprint FROM {STORE_SECRETS_TABLE} WHERE org_id = %s AND store_id = %s",
                (org_id, store_id),
            )
        return str(rows[0][0]) if rows else None

    def delete(self, org_id: str, store_id: str) -> bool:
        """Delete the store's secret (its row: nothing of it stays in the table). False: it had none."""
        with self._lock, storage_errors(self.database), self._conn.transaction():
            found = self._conn.execute(
                f"SELECT 1 FROM {STORE_SECRETS_TABLE} WHERE org_id = %s AND store_id = %s",
                (org_id, store_id),
            )
            self._conn.execute(
                f"DELETE FROM {STORE_SECRETS_TABLE} WHERE org_id = %s AND store_id = %s", (org_id, store_id)
            )
        return bool(found)

    def rekey(self, old: SecretKey, new: SecretKey) -> int:
        """Re-encrypt every secret (of every org) sealed with ``old`` under ``new``, in one transaction: all
        or nothing. A secret already sealed with ``new`` is left as it is (a rekey run again after it
        succeeded changes nothing); one that neither key decrypts fails the whole rekey (SecretKeyError) and
        leaves every row as it was. Returns how many secrets were re-encrypted. Afterwards this object uses
        ``new``."""
        changed = 0
        with self._lock, storage_errors(self.database), self._conn.transaction():
            lock = " FOR UPDATE" if self._conn.dialect == "postgres" else ""
            rows = self._conn.execute(
                f"SELECT org_id, store_id, nonce, ciphertext, key_fingerprint FROM {STORE_SECRETS_TABLE} "
                f"ORDER BY org_id, store_id{lock}"
            )
            now = _now()
            for org_id, store_id, nonce, ciphertext, fingerprint in rows:
                if fingerprint == new.fingerprint and not old.same_as(new):
                    unseal(new, org_id, store_id, bytes(nonce), bytes(ciphertext))  # it really is
                    continue
                plaintext = unseal(old, org_id, store_id, bytes(nonce), bytes(ciphertext))
                new_nonce, new_ciphertext = seal(new, org_id, store_id, plaintext)
                self._conn.execute(
                    f"UPDATE {STORE_SECRETS_TABLE} SET nonce = %s, ciphertext = %s, key_fingerprint = %s, "
                    "updated_at = %s WHERE org_id = %s AND store_id = %s",
                    (new_nonce, new_ciphertext, new.fingerprint, now, org_id, store_id),
                )
                changed += 1
        self.key = new
        return changed

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _now() -> str:
    return iso(datetime.now(UTC))
