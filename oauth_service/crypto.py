"""Authenticated encryption of tokens at rest (Fernet: AES-128-CBC + HMAC-SHA256), with key rotation.

`TOKEN_ENCRYPTION_KEY` holds one or more keys, newest first. Encryption always uses the newest key;
decryption tries every key, so old rows stay readable until `vault.reencrypt_all` rewrites them.
Ciphertexts carry a `v1:` prefix so that a clear token can never be mistaken for a stored one.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "v1:"


class DecryptionError(Exception):
    """A stored value could not be decrypted with any configured key."""


class TokenCipher:
    def __init__(self, keys: Iterable[str]):
        key_list = [k.strip() for k in keys if k and k.strip()]
        if not key_list:
            raise ValueError("TOKEN_ENCRYPTION_KEY holds no key")
        self._fernets = [Fernet(k.encode("ascii")) for k in key_list]
        self._multi = MultiFernet(self._fernets)

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._multi.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise DecryptionError("stored value is not an encrypted token (missing v1: prefix)")
        try:
            return self._multi.decrypt(stored[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise DecryptionError(
                "stored token cannot be decrypted with any key of TOKEN_ENCRYPTION_KEY "
                "(wrong key, or the newest key list lost an old key still in use)"
            ) from None

    def is_current(self, stored: str) -> bool:
        """True when `stored` is encrypted under the newest key."""
        if not stored.startswith(PREFIX):
            return False
        try:
            self._fernets[0].decrypt(stored[len(PREFIX) :].encode("ascii"))
        except InvalidToken:
            return False
        return True

    def rotate(self, stored: str) -> str:
        """Re-encrypt `stored` under the newest key."""
        return self.encrypt(self.decrypt(stored))
