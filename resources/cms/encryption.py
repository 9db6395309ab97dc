"""Stored source passwords are Fernet tokens; the key never leaves the resource's configuration."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from resources.cms.errors import EncryptionKeyInvalid

__all__ = ["InvalidToken", "PasswordBox"]


class PasswordBox:
    """Encrypts and decrypts with one Fernet key (refused at once when it is not a Fernet key)."""

    def __init__(self, key: str):
        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError) as error:
            raise EncryptionKeyInvalid(
                "encryption_key (TOYGRES_ENCRYPTION_KEY) is not a Fernet key: it must be 32 url-safe"
                " base64-encoded bytes, e.g. from CMSResource.generate_key()"
            ) from error

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        """The plaintext; InvalidToken when the token was made with another key."""
        return self._fernet.decrypt(token).decode()
