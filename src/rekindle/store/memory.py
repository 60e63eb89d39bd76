"""An in-memory backend for tests and for the fault-injection wrappers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from rekindle.core.clock import Clock, SystemClock
from rekindle.core.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from rekindle.store.base import Backend, Buffer, ObjectInfo, check_name


class MemoryBackend(Backend):
    """Objects live in a dict guarded by a lock; the clock stamps modification times."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()
        self.location = "memory:"

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        check_name(name)
        info = ObjectInfo(name, len(data), self._clock.now())
        with self._lock:
            if exclusive and name in self._objects:
                raise ObjectExistsError(f"{name} already exists")
            self._objects[name] = (bytes(data), info)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        with self._lock:
            entry = self._objects.get(name)
        if entry is None:
            raise ObjectNotFoundError(f"{name} not found")
        data = entry[0]
        end = len(data) if length is None else offset + length
        if offset < 0 or end > len(data):
            raise StorageError(f"{name}: read of {offset}..{end} beyond its {len(data)} bytes")
        return data[offset:end]

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        with self._lock:
            entry = self._objects.get(name)
        if entry is None:
            raise ObjectNotFoundError(f"{name} not found")
        return entry[1]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            infos = [info for name, (_, info) in self._objects.items() if name.startswith(prefix)]
        yield from infos

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if self._objects.pop(name, None) is None:
                raise ObjectNotFoundError(f"{name} not found")

    # Test helpers: reach past the interface to damage or inspect stored bytes.
    def raw(self, name: str) -> bytes:
        return self.read(name)

    def poke(self, name: str, data: bytes) -> None:
        """Replace an object's bytes in place, keeping its timestamp (simulates bit rot)."""
        with self._lock:
            _, info = self._objects[name]
            self._objects[name] = (bytes(data), ObjectInfo(name, len(data), info.modified))
