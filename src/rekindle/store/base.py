"""The one interface every backend and wrapper implements.

Names are relative, '/'-separated paths of lowercase ASCII letters, digits, '.', '_' and '-'
(for example ``data/3f/3f2a...``, ``keys/ab12...``, ``config``). `check_name` enforces this so
that no caller can make a backend touch a path outside its root.

Contract (the conformance suite in tests/unit/store tests every point, for every backend):

* ``write(name, data)`` is atomic: a reader sees the whole object or none of it, also after
  a crash. With ``exclusive=True`` (the default) it raises ObjectExistsError when the name is
  taken; immutable files (packs, index files, restore points) are always written that way.
  ``exclusive=False`` replaces the object atomically (used for locks only).
* ``read(name, offset, length)`` returns exactly the bytes asked for, or raises
  ObjectNotFoundError; ``length=None`` reads to the end. A short object raises StorageError.
* ``write_spool(name, spool)`` is ``write`` of a spool's content (store/spool.py): a pack
  assembled in a temporary file from ``new_spool()``. The spool stays the caller's to close.
* ``list(prefix)`` yields every object whose name starts with ``prefix`` (order unspecified).
* ``delete(name)`` removes the object; a missing object raises ObjectNotFoundError.
* Errors are StorageError subclasses; TransientStorageError marks those worth a retry.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from rekindle.core.errors import UsageError
from rekindle.store.spool import Spool

#: What `write` accepts: any contiguous bytes (packs are written from a reusable buffer).
Buffer = bytes | bytearray | memoryview

_NAME = re.compile(r"^[a-z0-9_.-]+(/[a-z0-9_.-]+)*$")


def check_name(name: str) -> str:
    """Reject any name that could escape the backend's root or is not canonical."""
    if not _NAME.match(name) or any(part in {".", ".."} for part in name.split("/")):
        raise UsageError(f"invalid object name {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    size: int
    modified: datetime  # timezone-aware UTC; used for grace periods and lock ages


class Backend(ABC):
    """Abstract blob store. Implementations must be safe to call from several threads."""

    #: A human-readable location, e.g. "/srv/repo" or "s3://bucket/prefix". Never holds secrets.
    location: str = ""

    @abstractmethod
    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None: ...

    @abstractmethod
    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def reader_factory(self) -> Callable[[], Backend] | None:
        """A picklable way to open this backend for reading in another process (restore's
        worker processes), or None when that would bypass something (a rate limit) or is
        not worth it (a remote store, where the network is the limit)."""
        return None

    def writer_factory(self) -> Callable[[], Backend] | None:
        """A picklable way to open this backend for writing in another process (backup's
        worker processes store packs), or None when that would bypass something (a rate
        limit, a fault injector, read-only access) or is not worth it (a remote store)."""
        return None

    def new_spool(self) -> Spool:
        """A temporary file to assemble an object in; `write_spool` stores it."""
        return Spool.anonymous()

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        """Store what was written to `spool` under `name` (as `write` does). This default
        reads it back into memory; backends that can stream it or take the file over do so."""
        self.write(name, spool.read_all(), exclusive=exclusive)

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool:
        from rekindle.core.errors import ObjectNotFoundError

        try:
            self.stat(name)
        except ObjectNotFoundError:
            return False
        return True

    def clean_temporaries(self, older_than: float = 3600.0) -> int:
        """Remove partial objects left by writers that crashed more than `older_than`
        seconds ago; returns how many went. Backends whose writes cannot leave any (memory,
        S3: an object appears whole or not at all) have nothing to do."""
        del older_than
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or handles. Idempotent."""
