"""Encryption at rest of event payloads: what a wrong or missing WCSYNC_CIPHER_KEY looks like to a user.

eventsourcing encrypts each event's state with AES-256-GCM when a cipher is configured
(``DatabaseConfig.eventsourcing_env``); only the state is encrypted, the aggregate id, version and topic stay
readable. A stored event that does not decrypt (a wrong key, or encrypted events read without one) is a
configuration error with one clear message, never garbage or a traceback.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent

from infrastructure.support.errors import ConfigurationError


class CipherKeyError(ConfigurationError):
    """the events cannot be decrypted with WCSYNC_CIPHER_KEY: wrong key?"""


WRONG_KEY = "the events cannot be decrypted with WCSYNC_CIPHER_KEY: wrong key?"
NO_KEY = "set WCSYNC_CIPHER_KEY to the key they were written with"


def decrypt_error(mapper: Mapper[Any], stored_event: StoredEvent | None = None) -> CipherKeyError:
    """The error to raise for a stored state the mapper could not read."""
    if mapper.cipher is not None:
        return CipherKeyError(WRONG_KEY)
    where = (
        f" (aggregate {stored_event.originator_id} version {stored_event.originator_version})"
        if stored_event is not None
        else ""
    )
    return CipherKeyError(f"a stored event cannot be read{where}: if the events are encrypted, {NO_KEY}")


class KeyCheckingMapper(Mapper[Any]):
    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        try:
            return super().to_domain_event(stored_event)
        except MapperDeserialisationError as error:
            raise decrypt_error(self, stored_event) from error

    def decrypt(self, state: bytes) -> bytes:
        """The stored state as the transcoder reads it (decrypted, decompressed)."""
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
        except Exception as error:
            raise decrypt_error(self) from error
        return state
