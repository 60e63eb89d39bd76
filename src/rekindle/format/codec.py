"""Compression with the 'skip where it does not pay' rule (docs/FORMAT.md section 9)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rekindle.core.errors import FormatError, IntegrityError
from rekindle.format.registry import Codec

if TYPE_CHECKING:
    import zstandard

# zstandard is imported where it is first used, not with this module: a command that opens
# a repository derives its key (32 MiB of Argon2id) before it needs it, and that moment is
# the peak of its memory.

# Compressed output must save at least 1/32 of the input to be kept.
_MIN_SAVING_SHIFT = 5
# Bigger than any blob we write (max chunk 16 MiB, trees are chunked): guards decompression
# bombs in damaged or hostile data.
MAX_PLAINTEXT = 64 * 1024 * 1024

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    import zstandard

    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    import zstandard

    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes | memoryview, level: int) -> bytes:
    """codec byte ‖ payload; zstd only where it saves enough, else stored as is."""
    if level > 0 and len(data) >= 64:
        packed = _compressor(level).compress(data)
        if len(packed) <= len(data) - (len(data) >> _MIN_SAVING_SHIFT):
            return bytes((Codec.ZSTD,)) + packed
    return bytes((Codec.NONE,)) + data


def decode(payload: bytes | memoryview, what: str) -> bytes:
    out = decode_view(payload, what)
    return out if isinstance(out, bytes) else bytes(out)


def decode_view(payload: bytes | memoryview, what: str) -> bytes | memoryview:
    """`decode` without copying stored (uncompressed) payloads: those come back as a view
    into `payload`."""
    if not payload:
        raise FormatError(f"{what}: empty payload")
    codec = payload[0]
    body = memoryview(payload)[1:]
    if codec == Codec.NONE:
        return body
    if codec == Codec.ZSTD:
        import zstandard

        try:
            declared = zstandard.frame_content_size(body)
            if declared < 0 or declared > MAX_PLAINTEXT:
                raise FormatError(f"{what}: compressed frame declares no or an oversized length")
            return _decompressor().decompress(body)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{what}: cannot decompress: {e}") from None
    raise FormatError(f"{what}: unknown codec {codec}")
