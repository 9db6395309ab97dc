"""The SCRAM-SHA-256 verifier of a password, as PostgreSQL stores it in pg_authid.

A restore's serve role sets the instance's superuser password from this verifier (ALTER ROLE ...
PASSWORD 'SCRAM-SHA-256$...'): the plaintext never reaches the temporary server, whose processes
run the image's code (docs/security.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from scramp.core import saslprep

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def _normalised(password: str) -> bytes:
    # PostgreSQL (src/common/saslprep.c): an ASCII password is used as it is; any other goes
    # through SASLprep, and one SASLprep refuses (control characters, say) is used as it is.
    if password.isascii():
        return password.encode()
    try:
        return saslprep(password).encode()
    except Exception:  # noqa: BLE001 - scramp raises its own error types for refused input
        return password.encode()


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", _normalised(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"
