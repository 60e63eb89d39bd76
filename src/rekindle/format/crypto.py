"""Key derivation, chunk ids and AEAD (docs/FORMAT.md section 3). No I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rekindle.core.errors import IntegrityError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
ID_SIZE = 32

_CTX_ID = "rekindle 2026-11 chunk id"
_CTX_FILE = "rekindle 2026-11 file"
_CTX_PACK = "rekindle 2026-11 pack"
_CTX_CONFIG = "rekindle 2026-11 config"
_CTX_CHUNKER = "rekindle 2026-11 chunker"


def derive(context: str, material: bytes) -> bytes:
    return blake3.blake3(material, derive_key_context=context).digest()


def content_hash(data: bytes | memoryview) -> bytes:
    """Unkeyed BLAKE3-256: names of packs, index files and restore points."""
    return blake3.blake3(data, max_threads=1).digest()


def content_hasher() -> blake3.blake3:
    """`content_hash` of data fed in pieces (`update`, then `digest`)."""
    return blake3.blake3(max_threads=1)


@dataclass(frozen=True, slots=True)
class RepoKeys:
    """The keys derived from one master key. Holds secrets: never log or repr it."""

    master: bytes
    id_key: bytes
    file_key: bytes
    config_key: bytes
    chunker_seed: int

    @classmethod
    def from_master(cls, master: bytes) -> RepoKeys:
        if len(master) != KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        # 63 bits: pyfastcdc shifts the seed left by one inside a u64.
        seed = int.from_bytes(derive(_CTX_CHUNKER, master)[:8], "little") >> 1
        return cls(
            master=master,
            id_key=derive(_CTX_ID, master),
            file_key=derive(_CTX_FILE, master),
            config_key=derive(_CTX_CONFIG, master),
            # pyfastcdc takes the seed as a uint64 and XORs it into the gear table; 0 would
            # select the public table, so avoid it.
            chunker_seed=seed or 1,
        )

    def __repr__(self) -> str:
        return "RepoKeys(<secret>)"

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        return blake3.blake3(plaintext, key=self.id_key, max_threads=1).digest()

    def pack_key(self, salt: bytes) -> bytes:
        return derive(_CTX_PACK, self.master + salt)

    def config_mac(self, canonical: bytes) -> bytes:
        return blake3.blake3(canonical, key=self.config_key).digest()


def seal(key: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """nonce ‖ AES-256-GCM(plaintext) ‖ tag, with a fresh random nonce."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


class Sealer:
    """`seal` for many messages under one key, written straight into a caller's buffer (no
    intermediate copies: packs are assembled in place)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal_into(self, plaintext: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        """Write nonce ‖ ciphertext ‖ tag into `out`, which must be exactly
        len(plaintext) + NONCE_SIZE + TAG_SIZE bytes long."""
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, aad, out[NONCE_SIZE:])


def open_sealed_into(
    key: bytes, sealed: bytes | memoryview, aad: bytes, what: str, out: bytearray
) -> memoryview:
    """`open_sealed` into a reusable buffer; returns a view of the plaintext, valid until the
    buffer is used again. Fresh memory is slow to touch, and the decryption holds the GIL, so
    reusing the buffer matters for restore speed. A message larger than the buffer gets a
    buffer of its own (views into `out` may still exist, so it is never resized)."""
    n = len(sealed) - NONCE_SIZE - TAG_SIZE
    if n < 0:
        raise IntegrityError(f"{what}: too short to be encrypted data")
    if len(out) < n:
        out = bytearray(n)
    mv = memoryview(sealed)
    view = memoryview(out)[:n]
    try:
        AESGCM(key).decrypt_into(mv[:NONCE_SIZE], mv[NONCE_SIZE:], aad, view)
    except InvalidTag:
        view.release()
        raise IntegrityError(f"{what}: authentication failed (damaged or tampered)") from None
    return view


def open_sealed(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    """Inverse of seal; raises IntegrityError naming `what` on any damage."""
    if len(sealed) < NONCE_SIZE + TAG_SIZE:
        raise IntegrityError(f"{what}: too short to be encrypted data")
    mv = memoryview(sealed)
    try:
        return AESGCM(key).decrypt(mv[:NONCE_SIZE], mv[NONCE_SIZE:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed (damaged or tampered)") from None
