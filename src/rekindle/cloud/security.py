"""Admin credentials, API tokens, roles, and the installation key that seals organization
repository keys at rest."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rekindle.core.errors import RekindleError

ROLES = ("org_admin", "group_admin", "read_only")
_hasher = PasswordHasher()


class AuthError(RekindleError):
    """Bad or missing credentials."""


class ForbiddenError(AuthError):
    """Known caller, but its role or scope does not allow this."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token(prefix: str) -> str:
    """A random bearer secret; `prefix` tells people (and secret scanners) what it is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(15)


class KeyEncryptionKey:
    """The installation's key-encryption key (AES-256-GCM). Organization repository keys
    are stored sealed by it, so a copy of the database alone opens no repository."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, path: Path) -> KeyEncryptionKey:
        from rekindle.net.pki import write_private

        if path.exists():
            key = path.read_bytes()
            if len(key) != 32:
                raise RekindleError(f"{path} must hold exactly 32 bytes")
            return cls(key)
        key = os.urandom(32)
        write_private(path, key)
        return cls(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], context)
