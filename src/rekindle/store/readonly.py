"""A view of a backend that refuses every change (check, restore, browsing)."""

from __future__ import annotations

from collections.abc import Callable

from rekindle.core.errors import ReadOnlyError
from rekindle.store.base import Backend, Buffer
from rekindle.store.spool import Spool
from rekindle.store.wrapper import WrappingBackend


class ReadOnlyBackend(WrappingBackend):
    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        raise ReadOnlyError(f"cannot write {name}: the repository is opened read-only")

    def reader_factory(self) -> Callable[[], Backend] | None:
        return self.inner.reader_factory()  # it only reads

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        raise ReadOnlyError(f"cannot write {name}: the repository is opened read-only")

    def delete(self, name: str) -> None:
        raise ReadOnlyError(f"cannot delete {name}: the repository is opened read-only")

    def clean_temporaries(self, older_than: float = 3600.0) -> int:
        return 0  # removing files is a change
