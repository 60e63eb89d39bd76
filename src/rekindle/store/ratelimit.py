"""Cap the bytes per second a backend moves (policy bandwidth caps, CloudCache sync windows).

A token bucket shared by all threads: each transfer takes as many tokens as it has bytes and
waits until they are there. The bucket holds at most one second of tokens, so an idle period
does not allow a long burst afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rekindle.core.errors import UsageError
from rekindle.store.base import Backend, Buffer
from rekindle.store.spool import Spool
from rekindle.store.wrapper import WrappingBackend


class TokenBucket:
    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise UsageError("a bandwidth limit must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, amount: int) -> None:
        """Consume `amount` tokens, then block until the bucket is out of debt.

        Paying after the transfer lets a request larger than the bucket through and still
        holds the long-run rate; the lock serves callers in order.
        """
        with self._lock:
            self._refill()
            self._tokens -= amount
            if self._tokens < 0:
                self._sleep(-self._tokens / self.rate)
                self._refill()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now


class RateLimitedBackend(WrappingBackend):
    def __init__(
        self, inner: Backend, bytes_per_second: float, *, bucket: TokenBucket | None = None
    ) -> None:
        super().__init__(inner)
        self.bucket = bucket or TokenBucket(bytes_per_second)

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        self.bucket.take(len(data))
        self.inner.write(name, data, exclusive=exclusive)

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        self.bucket.take(spool.size)
        self.inner.write_spool(name, spool, exclusive=exclusive)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.read(name, offset, length)
        self.bucket.take(len(data))
        return data
