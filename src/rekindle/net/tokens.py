"""Storage tokens: short-lived capabilities the cloud signs and storage nodes verify offline.

A token is ``rkt1.<claims>.<signature>``: the claims are JSON (base64url), the signature is
Ed25519 over ``rkt1.<claims>`` by the cloud's token key. A storage node holds only the public
half, so it can check a token without calling the cloud and cannot mint one.

Claims (all required):

| claim | meaning |
| --- | --- |
| ``org`` | organization id: the only repository the token opens |
| ``server`` | the agent's server id (for the audit trail and the lock owner) |
| ``job`` | the job the token was issued for |
| ``access`` | ``backup`` (add data, see what exists), ``restore`` (read what one restore \
needs), ``catalog`` (the cloud's own: read everything, register grants) or ``maintenance`` \
(the cloud's own, for retention and prune: read everything, add packs, index files and \
garbage records, delete what prune and forget delete) |
| ``snapshot`` | for ``restore``: the one restore point it may read; else empty (a backup \
reads no restore point) |
| ``grant`` | for ``restore``: SHA-256 (hex) of the grant, the list of packs the restore \
needs, which the cloud registered with the node; else empty |
| ``iat``, ``exp`` | issued at and expiry, Unix seconds |
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from rekindle.core.errors import RekindleError

PREFIX = "rkt1"
Access = Literal["backup", "restore", "catalog", "maintenance"]
ACCESSES = ("backup", "restore", "catalog", "maintenance")
#: A clock difference between cloud and storage node that tokens tolerate.
LEEWAY_S = 60


class TokenError(RekindleError):
    """A token is malformed, forged, expired or used outside its scope."""


@dataclass(frozen=True)
class StorageClaims:
    org: int
    server: int
    job: int
    access: Access
    snapshot: str
    iat: int
    exp: int
    grant: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: Ed25519PrivateKey, claims: StorageClaims) -> str:
    body = f"{PREFIX}.{_b64(json.dumps(asdict(claims), sort_keys=True).encode())}"
    return f"{body}.{_b64(key.sign(body.encode('ascii')))}"


def verify(key: Ed25519PublicKey, token: str, now: float | None = None) -> StorageClaims:
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed storage token")
    body = f"{parts[0]}.{parts[1]}"
    try:
        key.verify(_unb64(parts[2]), body.encode("ascii"))
    except (InvalidSignature, ValueError) as e:
        raise TokenError("storage token signature is not valid") from e
    try:
        raw = json.loads(_unb64(parts[1]))
        claims = StorageClaims(
            org=int(raw["org"]),
            server=int(raw["server"]),
            job=int(raw["job"]),
            access=raw["access"],
            snapshot=str(raw["snapshot"]),
            iat=int(raw["iat"]),
            exp=int(raw["exp"]),
            grant=str(raw["grant"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise TokenError("storage token claims are malformed") from e
    if claims.access not in ACCESSES:
        raise TokenError(f"unknown storage token access {claims.access!r}")
    t = time.time() if now is None else now
    if t > claims.exp + LEEWAY_S:
        raise TokenError("storage token has expired")
    if t < claims.iat - LEEWAY_S:
        raise TokenError("storage token is not valid yet")
    return claims


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    from rekindle.net.pki import write_private

    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TokenError(f"{path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise TokenError("the token verification key must be Ed25519")
    return key
