"""Base for wrappers: forwards every call to the wrapped backend."""

from __future__ import annotations

from collections.abc import Iterator

from rekindle.store.base import Backend, Buffer, ObjectInfo
from rekindle.store.spool import Spool


class WrappingBackend(Backend):
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        self.inner.write(name, data, exclusive=exclusive)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.read(name, offset, length)

    def new_spool(self) -> Spool:
        return self.inner.new_spool()

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        self.inner.write_spool(name, spool, exclusive=exclusive)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def clean_temporaries(self, older_than: float = 3600.0) -> int:
        return self.inner.clean_temporaries(older_than)

    def close(self) -> None:
        self.inner.close()
