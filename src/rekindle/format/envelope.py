"""The encrypted file envelope of index files, restore points, locks and garbage records.

Layout (docs/FORMAT.md section 6): magic `RKFL`, version, file kind, then nonce ‖ ciphertext
‖ tag under the file key, the first 6 bytes as associated data. The payload is a codec byte
and a msgpack document.
"""

from __future__ import annotations

from typing import Any

import msgpack

from rekindle.core.errors import FormatError
from rekindle.format import codec
from rekindle.format.crypto import RepoKeys, open_sealed, seal
from rekindle.format.registry import FileKind

MAGIC = b"RKFL"
VERSION = 1
HEADER_SIZE = 6


def _header(kind: FileKind) -> bytes:
    return MAGIC + bytes((VERSION, kind))


def seal_document(keys: RepoKeys, kind: FileKind, document: Any, level: int = 3) -> bytes:
    payload = codec.encode(msgpack.packb(document, use_bin_type=True), level)
    header = _header(kind)
    return header + seal(keys.file_key, payload, header)


def open_document(keys: RepoKeys, kind: FileKind, data: bytes, what: str) -> Any:
    if len(data) < HEADER_SIZE or data[:4] != MAGIC:
        raise FormatError(f"{what}: not a Rekindle file (bad magic)")
    if data[4] != VERSION:
        raise FormatError(f"{what}: unsupported envelope version {data[4]}")
    if data[5] != kind:
        raise FormatError(f"{what}: expected a file of kind {kind.name.lower()}, got {data[5]}")
    payload = open_sealed(keys.file_key, memoryview(data)[HEADER_SIZE:], data[:HEADER_SIZE], what)
    try:
        return msgpack.unpackb(codec.decode(payload, what), raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise FormatError(f"{what}: malformed document: {e}") from None
