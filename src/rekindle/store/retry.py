"""Retry transient storage errors with capped exponential backoff and full jitter.

Only errors marked transient are retried; a missing object or a permission error is not.
Retrying an exclusive write is safe: if the first attempt did land, the retry sees
ObjectExistsError for an object holding the very bytes it meant to write, so it reads it
back and treats equal contents as success.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from rekindle.core.errors import ObjectExistsError, StorageError
from rekindle.store.base import Backend, Buffer, ObjectInfo
from rekindle.store.spool import Spool
from rekindle.store.wrapper import WrappingBackend

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingBackend(WrappingBackend):
    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 6,
        base_delay: float = 0.25,
        max_delay: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except StorageError as e:
                if not e.transient or attempt == self.attempts:
                    raise
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))  # noqa: S311
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1fs",
                    what,
                    e,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        self._write(name, lambda: self.inner.write(name, data, exclusive=exclusive), data)

    def reader_factory(self) -> Callable[[], Backend] | None:
        return self.inner.reader_factory()  # a local backend has nothing worth retrying

    def writer_factory(self) -> Callable[[], Backend] | None:
        inner = self.inner.writer_factory()
        if inner is None:
            return None
        # The other process retries as this one does (a storage node's 503, a dropped
        # connection).
        return functools.partial(_retrying, inner, self.attempts, self.base_delay, self.max_delay)

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        self._write(name, lambda: self.inner.write_spool(name, spool, exclusive=exclusive), spool)

    def _write(self, name: str, put: Callable[[], None], content: Buffer | Spool) -> None:
        first = True

        def attempt() -> None:
            nonlocal first
            try:
                put()
            except ObjectExistsError:
                # A retried write whose first attempt landed is a success, nothing else.
                if first:
                    raise
                mine = content.read_all() if isinstance(content, Spool) else bytes(content)
                if self.inner.read(name) != mine:
                    raise
            finally:
                first = False

        self._call(f"write {name}", attempt)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"read {name}", lambda: self.inner.read(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(f"stat {name}", lambda: self.inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A listing is materialised so that a failure halfway can be retried from the start.
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.inner.delete(name))


def _retrying(
    factory: Callable[[], Backend], attempts: int, base_delay: float, max_delay: float
) -> Backend:
    """`RetryingBackend.writer_factory` in the other process (picklable: module level)."""
    return RetryingBackend(factory(), attempts=attempts, base_delay=base_delay, max_delay=max_delay)
