"""Spools: the local temporary file a pack is written into before it is stored.

A pack is assembled on disk, not in memory, as restic does: a backup holds several packs of
16 MiB at once (one being filled per blob kind, others waiting for their upload), and in
memory those were most of a backup's peak RSS. A backend hands out the spool it can store
best (`Backend.new_spool`): the local backend a temporary file next to its objects, which
`write_spool` links into place without copying a byte; the others an anonymous temporary file
(gone by itself if the process dies), streamed to the server from disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator

from rekindle.core.errors import NoSpaceError, StorageError

#: Size of the pieces a spool is read back or streamed in.
READ_PIECE = 1 << 20


def spool_error(e: OSError, where: str) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"no space left for a temporary pack file in {where}")
    return StorageError(f"temporary pack file in {where}: {e.strerror or e}")


class Spool:
    """An open temporary file written front to back. `path` is None for an anonymous file
    (unlinked at once); a named one is removed by `close` unless a backend took it over."""

    def __init__(self, fd: int, path: str | None, where: str) -> None:
        self.fd = fd
        self.path = path
        self.where = where
        self.size = 0  # the end of the furthest write
        self._lock = threading.Lock()

    @classmethod
    def anonymous(cls, directory: str | None = None) -> Spool:
        """An unnamed temporary file in `directory` (default: $TMPDIR, else /tmp)."""
        import tempfile  # here: every command imports this module before its key derivation

        where = directory or tempfile.gettempdir()
        try:
            fd, path = tempfile.mkstemp(prefix=".rekindle-spool-", dir=where)
        except OSError as e:
            raise spool_error(e, where) from None
        os.unlink(path)
        return cls(fd, None, where)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data`."""
        self.write_at(data, self.size)

    def write_at(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write `data` at `offset` (threads may write different ranges at once)."""
        view = memoryview(data)
        pos = offset
        try:
            while view:
                n = os.pwrite(self.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as e:
            raise spool_error(e, self.where) from None
        with self._lock:
            self.size = max(self.size, pos)

    def pieces(self) -> Iterator[bytes]:
        """The content from the start, in pieces of READ_PIECE (re-readable)."""
        pos = 0
        while pos < self.size:
            try:
                piece = os.pread(self.fd, min(READ_PIECE, self.size - pos), pos)
            except OSError as e:
                raise spool_error(e, self.where) from None
            if not piece:
                raise StorageError(f"temporary pack file in {self.where} is shorter than written")
            pos += len(piece)
            yield piece

    def read_all(self) -> bytes:
        return b"".join(self.pieces())

    def close(self) -> None:
        """Close the file and remove it (if it still has a name)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
