"""Frozen identifier registries (docs/FORMAT.md sections 5, 6, 9, 10).

A number, once given, is never reused. A retired value stays here, marked retired.
"""

from __future__ import annotations

from enum import IntEnum

FORMAT_VERSION = 1  # repository format version written into `config`
SUPPORTED_VERSIONS = frozenset({1})


class BlobKind(IntEnum):
    # 0: reserved, invalid
    DATA = 1  # file content
    TREE = 2  # serialized directory


class Codec(IntEnum):
    NONE = 0
    ZSTD = 1  # zstd frame with content size


class FileKind(IntEnum):
    # 0: reserved, invalid
    INDEX = 1
    SNAPSHOT = 2
    LOCK = 3
    GARBAGE = 4
    TIER = 5  # tier record: data packs in (or bound for) the archive tier


class KeyKind(IntEnum):
    # 0: reserved, invalid
    PASSPHRASE = 1  # argon2id-derived key-encryption key
    OPERATOR = 2  # raw 32-byte key-encryption key held by the operator


class NodeType(IntEnum):
    # 0: reserved, invalid
    FILE = 1
    DIR = 2
    SYMLINK = 3
    CHARDEV = 4
    BLOCKDEV = 5
    FIFO = 6
    SOCKET = 7  # recorded, never restored


def prefix_for(kind: BlobKind) -> str:
    """Backend folder of packs of a kind: data and tree packs live apart (FORMAT.md s. 2)."""
    return "data" if kind is BlobKind.DATA else "tree"
