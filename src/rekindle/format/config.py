"""The repository `config` object (docs/FORMAT.md section 4): plain JSON with a keyed MAC.

The version is readable without a key so that a newer repository is refused before any
passphrase is asked for; the MAC is checked once the master key is known.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from rekindle.core.errors import (
    FormatError,
    IntegrityError,
    NotARepositoryError,
    UnsupportedVersionError,
)
from rekindle.format.crypto import RepoKeys
from rekindle.format.registry import FORMAT_VERSION, SUPPORTED_VERSIONS

MAGIC = "rekindle-repository"

# Chunk sizes: see docs/benchmarks.md for the measurements behind them.
DEFAULT_CHUNK_MIN = 256 * 1024
DEFAULT_CHUNK_AVG = 512 * 1024
DEFAULT_CHUNK_MAX = 4 * 1024 * 1024
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
DEFAULT_ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class RepoConfig:
    id: bytes
    created: str
    chunk_min: int = DEFAULT_CHUNK_MIN
    chunk_avg: int = DEFAULT_CHUNK_AVG
    chunk_max: int = DEFAULT_CHUNK_MAX
    pack_size: int = DEFAULT_PACK_SIZE
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    version: int = FORMAT_VERSION

    def _fields(self) -> dict[str, Any]:
        return {
            "format": MAGIC,
            "version": self.version,
            "id": self.id.hex(),
            "created": self.created,
            "chunker": {"min": self.chunk_min, "avg": self.chunk_avg, "max": self.chunk_max},
            "pack_size": self.pack_size,
            "compression": {"codec": "zstd", "level": self.zstd_level},
        }

    def encode(self, keys: RepoKeys) -> bytes:
        fields = self._fields()
        fields["mac"] = keys.config_mac(_canonical(fields)).hex()
        return json.dumps(fields, indent=2, sort_keys=True).encode() + b"\n"

    def verify(self, keys: RepoKeys, mac: str) -> None:
        expected = keys.config_mac(_canonical(self._fields())).hex()
        if not hmac.compare_digest(expected, mac):
            raise IntegrityError("config: MAC does not match (tampered or wrong repository)")


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def decode(data: bytes) -> tuple[RepoConfig, str]:
    """Parse `config`; returns the config and its MAC (to verify once keys are known)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise NotARepositoryError("config is not valid JSON: not a Rekindle repository") from None
    if not isinstance(doc, dict) or doc.get("format") != MAGIC:
        raise NotARepositoryError("not a Rekindle repository (config has no rekindle marker)")
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"repository format version {version} is not supported by this Rekindle "
            f"(supports {sorted(SUPPORTED_VERSIONS)}); upgrade Rekindle"
        )
    try:
        cfg = RepoConfig(
            id=bytes.fromhex(doc["id"]),
            created=str(doc["created"]),
            chunk_min=int(doc["chunker"]["min"]),
            chunk_avg=int(doc["chunker"]["avg"]),
            chunk_max=int(doc["chunker"]["max"]),
            pack_size=int(doc["pack_size"]),
            zstd_level=int(doc["compression"]["level"]),
            version=int(version),
        )
        mac = str(doc["mac"])
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"config is malformed: {e}") from None
    if len(cfg.id) != 32:
        raise FormatError("config: repository id must be 32 bytes")
    return cfg, mac
