"""Pack files: immutable containers of blobs of one kind (docs/FORMAT.md section 7).

`PackBuilder` assembles a pack from already-encoded blobs and hands its bytes to a sink;
`read_table` and `open_blob` take it apart again, authenticating everything. No I/O: callers
move the bytes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from rekindle.core.errors import FormatError, IntegrityError
from rekindle.format import codec
from rekindle.format.crypto import (
    ID_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    RepoKeys,
    Sealer,
    content_hasher,
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
    """Assembles one pack front to back, handing its bytes in order to `sink` (a spool
    file's `write`, or a bytearray's `extend`). Not thread-safe: one builder per writer.

    Each blob is encrypted into a reusable scratch buffer and handed on from there, so a pack
    never has to fit in memory; the pack's name (the hash of its bytes) is computed on the way.
    Hand a scratch buffer back in through `scratch=` to reuse it for the next pack.
    """

    def __init__(
        self,
        keys: RepoKeys,
        kind: BlobKind,
        level: int,
        sink: Callable[[memoryview], object],
        *,
        scratch: bytearray | None = None,
    ) -> None:
        self.kind = kind
        self._level = level
        self._sink = sink
        self._hasher = content_hasher()
        self._salt = os.urandom(SALT_SIZE)
        self._key = keys.pack_key(self._salt)
        self._sealer = Sealer(self._key)
        self._header = header(kind, self._salt)
        self.scratch = scratch if scratch is not None else bytearray()
        self._size = 0
        self._emit(memoryview(self._header))
        self.entries: list[BlobEntry] = []

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def _emit(self, data: memoryview) -> None:
        self._hasher.update(data)
        self._sink(data)
        self._size += len(data)

    def add(self, chunk_id: bytes, plaintext: bytes | memoryview) -> BlobEntry:
        """Compress (where it pays) and encrypt one blob; returns where it will sit."""
        return self.add_encoded(chunk_id, codec.encode(plaintext, self._level), len(plaintext))

    def add_encoded(self, chunk_id: bytes, payload: bytes, raw_length: int) -> BlobEntry:
        """Add a blob whose codec byte and payload were prepared by another thread."""
        offset = self._size
        length = NONCE_SIZE + len(payload) + TAG_SIZE
        if len(self.scratch) < length:
            self.scratch.extend(bytes(length - len(self.scratch)))
        with memoryview(self.scratch)[:length] as view:
            self._sealer.seal_into(payload, blob_aad(self.kind, chunk_id), view)
            self._emit(view)
        entry = BlobEntry(chunk_id, self.kind, offset, length, raw_length)
        self.entries.append(entry)
        return entry

    def finish(self) -> bytes:
        """Append the sealed blob table and the trailer; returns the pack's id (the hash of
        all its bytes, `crypto.content_hash`)."""
        table = bytearray(_COUNT.pack(len(self.entries)))
        for e in self.entries:
            table += _ENTRY.pack(e.id, e.kind, e.offset, e.length, e.raw_length)
        sealed_table = seal(self._key, bytes(table), b"RKBT" + self._header)
        self._emit(memoryview(sealed_table))
        self._emit(memoryview(_TRAILER.pack(len(sealed_table), END_MAGIC)))
        return self._hasher.digest()


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
