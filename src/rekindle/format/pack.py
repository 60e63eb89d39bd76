"""Pack files: immutable containers of blobs of one kind (docs/FORMAT.md section 7).

`PackBuilder` lays out a pack of already-encoded blobs and seals them; `read_table` and
`open_blob` take it apart again, authenticating everything. No I/O: callers move the bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from rekindle.core.errors import FormatError, IntegrityError
from rekindle.format import codec
from rekindle.format.crypto import (
    ID_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    RepoKeys,
    Sealer,
    open_sealed,
    open_sealed_into,
    seal,
)
from rekindle.format.registry import BlobKind

MAGIC = b"RKPK"
END_MAGIC = b"RKPE"
VERSION = 1
SALT_SIZE = 16
HEADER_SIZE = 24
TRAILER_SIZE = 8
_ENTRY = struct.Struct("<32sBQII")  # id, kind, offset, stored length, plaintext length
_COUNT = struct.Struct("<I")
_TRAILER = struct.Struct("<I4s")
BLOB_OVERHEAD = NONCE_SIZE + TAG_SIZE + 1  # + codec byte


@dataclass(frozen=True, slots=True)
class BlobEntry:
    id: bytes
    kind: BlobKind
    offset: int
    length: int  # stored length: nonce + ciphertext + tag
    raw_length: int  # plaintext length, uncompressed


def blob_aad(kind: BlobKind, chunk_id: bytes) -> bytes:
    return b"RKBL" + bytes((kind,)) + chunk_id


def header(kind: BlobKind, salt: bytes) -> bytes:
    return MAGIC + bytes((VERSION, kind, 0, 0)) + salt


class PackBuilder:
    """Lays out one pack: the header, each blob's place, then the sealed blob table and the
    trailer. It moves no bytes: the caller writes `header` at offset 0, each sealed blob at
    its entry's offset, and `tail()` at the end, in any order and from several threads
    (`place` is not thread-safe, `seal_into` is). A pack therefore never has to be in
    memory, and blobs of one pack are sealed and written in parallel.
    """

    def __init__(self, keys: RepoKeys, kind: BlobKind) -> None:
        self.kind = kind
        self._salt = os.urandom(SALT_SIZE)
        self._key = keys.pack_key(self._salt)
        self._sealer = Sealer(self._key)
        self.header = header(kind, self._salt)
        self._size = len(self.header)
        self.entries: list[BlobEntry] = []

    @property
    def size(self) -> int:
        """The offset where the next blob (or the table) goes."""
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def place(self, chunk_id: bytes, payload_length: int, raw_length: int) -> BlobEntry:
        """Reserve the place of a blob whose encoded payload (codec byte + data) has
        `payload_length` bytes."""
        length = NONCE_SIZE + payload_length + TAG_SIZE
        entry = BlobEntry(chunk_id, self.kind, self._size, length, raw_length)
        self._size += length
        self.entries.append(entry)
        return entry

    def seal_into(self, entry: BlobEntry, payload: bytes, out: memoryview) -> None:
        """Encrypt a placed blob into `out` (exactly `entry.length` bytes)."""
        self._sealer.seal_into(payload, blob_aad(self.kind, entry.id), out)

    def tail(self) -> bytes:
        """The sealed blob table and the trailer, written at `size` once every blob is
        placed; the pack ends with them."""
        table = bytearray(_COUNT.pack(len(self.entries)))
        for e in self.entries:
            table += _ENTRY.pack(e.id, e.kind, e.offset, e.length, e.raw_length)
        sealed_table = seal(self._key, bytes(table), b"RKBT" + self.header)
        return sealed_table + _TRAILER.pack(len(sealed_table), END_MAGIC)


def build_pack(
    keys: RepoKeys, kind: BlobKind, level: int, blobs: list[tuple[bytes, bytes]]
) -> tuple[bytes, list[BlobEntry]]:
    """A whole pack in memory from (chunk id, plaintext) pairs (small packs and tests)."""
    builder = PackBuilder(keys, kind)
    out = bytearray(builder.header)
    for chunk_id, plaintext in blobs:
        payload = codec.encode(plaintext, level)
        entry = builder.place(chunk_id, len(payload), len(plaintext))
        out += bytes(entry.length)
        with memoryview(out)[entry.offset :] as view:
            builder.seal_into(entry, payload, view)
    out += builder.tail()
    return bytes(out), builder.entries


def parse_header(data: bytes, what: str) -> tuple[BlobKind, bytes]:
    if len(data) < HEADER_SIZE or data[:4] != MAGIC:
        raise FormatError(f"{what}: not a pack (bad magic)")
    if data[4] != VERSION:
        raise FormatError(f"{what}: unsupported pack version {data[4]}")
    try:
        kind = BlobKind(data[5])
    except ValueError:
        raise FormatError(f"{what}: unknown blob kind {data[5]}") from None
    return kind, bytes(data[8:HEADER_SIZE])


def table_length(trailer: bytes, pack_size: int, what: str) -> int:
    """Length of the encrypted table, from the pack's last 8 bytes."""
    if len(trailer) != TRAILER_SIZE:
        raise FormatError(f"{what}: truncated pack")
    length, magic = _TRAILER.unpack(trailer)
    if magic != END_MAGIC:
        raise FormatError(f"{what}: truncated or damaged pack (bad end marker)")
    if length < NONCE_SIZE + TAG_SIZE + _COUNT.size or length > pack_size - HEADER_SIZE - 8:
        raise FormatError(f"{what}: blob table length {length} out of range")
    return int(length)


def read_table(
    keys: RepoKeys, head: bytes, sealed_table: bytes, pack_size: int, what: str
) -> list[BlobEntry]:
    """Decrypt and validate a pack's blob table. `head` is the pack's first 24 bytes."""
    kind, salt = parse_header(head, what)
    plain = open_sealed(keys.pack_key(salt), sealed_table, b"RKBT" + head[:HEADER_SIZE], what)
    if len(plain) < _COUNT.size:
        raise FormatError(f"{what}: blob table too short")
    (count,) = _COUNT.unpack_from(plain)
    if len(plain) != _COUNT.size + count * _ENTRY.size:
        raise FormatError(f"{what}: blob table size does not match its count")
    table_start = pack_size - TRAILER_SIZE - len(sealed_table)
    entries = []
    for i in range(count):
        cid, k, off, length, raw = _ENTRY.unpack_from(plain, _COUNT.size + i * _ENTRY.size)
        if k != kind or off < HEADER_SIZE or off + length > table_start:
            raise FormatError(f"{what}: blob table entry {i} is inconsistent")
        entries.append(BlobEntry(cid, kind, off, length, raw))
    return entries


def open_blob(
    keys: RepoKeys, head: bytes, entry: BlobEntry, sealed: bytes | memoryview, what: str
) -> bytes:
    """Decrypt, decompress and verify one blob. Raises IntegrityError on any mismatch."""
    _, salt = parse_header(head, what)
    return bytes(open_blob_with_key(keys, keys.pack_key(salt), entry, sealed, what))


def open_blob_with_key(
    keys: RepoKeys,
    pack_key: bytes,
    entry: BlobEntry,
    sealed: bytes | memoryview,
    what: str,
    *,
    scratch: bytearray | None = None,
) -> bytes | memoryview:
    """Decrypt, decompress and verify one blob. With `scratch`, decryption goes into that
    reusable buffer and the result may be a view into it (valid until its next use)."""
    if len(sealed) != entry.length:
        raise IntegrityError(f"{what}: blob {entry.id.hex()[:16]} is truncated")
    aad = blob_aad(entry.kind, entry.id)
    plain: bytes | memoryview
    if scratch is None:
        plain = codec.decode(open_sealed(pack_key, sealed, aad, what), what)
    else:
        plain = codec.decode_view(open_sealed_into(pack_key, sealed, aad, what, scratch), what)
    if len(plain) != entry.raw_length or keys.chunk_id(plain) != entry.id:
        raise IntegrityError(f"{what}: blob {entry.id.hex()[:16]} does not match its id")
    return plain


def salt_of(head: bytes, what: str) -> bytes:
    return parse_header(head, what)[1]


assert _ENTRY.size == 49 and ID_SIZE == 32  # noqa: S101 - layout frozen by FORMAT.md
