"""Key files: wrapped copies of the master key (docs/FORMAT.md section 5)."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

import argon2.low_level
import blake3

from rekindle.core.errors import FormatError, IntegrityError, WrongPasswordError
from rekindle.format.crypto import KEY_SIZE, open_sealed, seal
from rekindle.format.registry import KeyKind

_AAD = b"rekindle-key-v1"


@dataclass(frozen=True, slots=True)
class KdfParams:
    salt: bytes
    # 32 MiB x 4 passes: above the OWASP minimum (19 MiB x 2), about 0.1 s here, and half
    # the peak memory of 64 MiB, which every command pays once when it unlocks the key.
    time_cost: int = 4
    memory_kib: int = 32 * 1024
    parallelism: int = 2

    def derive(self, passphrase: bytes) -> bytes:
        return argon2.low_level.hash_secret_raw(
            secret=passphrase,
            salt=self.salt,
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            hash_len=KEY_SIZE,
            type=argon2.low_level.Type.ID,
        )


@dataclass(frozen=True, slots=True)
class KeyFile:
    kind: KeyKind
    created: str
    label: str
    wrapped: bytes  # nonce ‖ ciphertext ‖ tag
    kdf: KdfParams | None = None
    kek_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "kind": int(self.kind),
            "created": self.created,
            "label": self.label,
            "nonce": _b64(self.wrapped[:12]),
            "wrapped": _b64(self.wrapped[12:]),
        }
        if self.kdf is not None:
            doc["kdf"] = {
                "name": "argon2id",
                "salt": _b64(self.kdf.salt),
                "time_cost": self.kdf.time_cost,
                "memory_kib": self.kdf.memory_kib,
                "parallelism": self.kdf.parallelism,
            }
        if self.kek_id is not None:
            doc["kek_id"] = self.kek_id
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    def unwrap(self, secret: bytes, repo_id: bytes) -> bytes:
        """The master key, given a passphrase (kind 1) or an operator key (kind 2)."""
        kek = self.kdf.derive(secret) if self.kdf is not None else secret
        if len(kek) != KEY_SIZE:
            raise WrongPasswordError("operator key must be 32 bytes")
        try:
            master = open_sealed(kek, self.wrapped, _AAD + repo_id, "key file")
        except IntegrityError:
            raise WrongPasswordError("wrong password or key for this repository") from None
        if len(master) != KEY_SIZE:
            raise FormatError("key file holds a master key of the wrong size")
        return master


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def kek_id(operator_key: bytes) -> str:
    return blake3.blake3(operator_key).digest()[:8].hex()


def wrap_with_passphrase(
    master: bytes,
    passphrase: bytes,
    repo_id: bytes,
    created: str,
    label: str,
    *,
    kdf: KdfParams | None = None,
) -> KeyFile:
    params = kdf or KdfParams(salt=os.urandom(16))
    wrapped = seal(params.derive(passphrase), master, _AAD + repo_id)
    return KeyFile(KeyKind.PASSPHRASE, created, label, wrapped, kdf=params)


def wrap_with_operator_key(
    master: bytes, operator_key: bytes, repo_id: bytes, created: str, label: str
) -> KeyFile:
    if len(operator_key) != KEY_SIZE:
        raise ValueError("operator key must be 32 bytes")
    wrapped = seal(operator_key, master, _AAD + repo_id)
    return KeyFile(KeyKind.OPERATOR, created, label, wrapped, kek_id=kek_id(operator_key))


def decode(data: bytes, what: str) -> KeyFile:
    try:
        doc = json.loads(data)
        kind = KeyKind(int(doc["kind"]))
        wrapped = base64.b64decode(doc["nonce"]) + base64.b64decode(doc["wrapped"])
        kdf = None
        if kind is KeyKind.PASSPHRASE:
            k = doc["kdf"]
            if k["name"] != "argon2id":
                raise ValueError(f"unknown kdf {k['name']!r}")
            kdf = KdfParams(
                salt=base64.b64decode(k["salt"]),
                time_cost=int(k["time_cost"]),
                memory_kib=int(k["memory_kib"]),
                parallelism=int(k["parallelism"]),
            )
        return KeyFile(
            kind=kind,
            created=str(doc.get("created", "")),
            label=str(doc.get("label", "")),
            wrapped=wrapped,
            kdf=kdf,
            kek_id=doc.get("kek_id"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{what}: malformed key file: {e}") from None
