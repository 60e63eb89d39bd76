"""Fault injection for tests: make chosen operations fail, tear or corrupt.

A `Fault` matches operations by kind and name prefix and fires on the n-th match (or every
match, or with a probability from a seeded generator). Effects: raise an error (transient,
permanent, no space), write only a prefix of the data and then fail (a torn write, which a
correct backend never exposes, so this models a broken one), or flip a bit in what a read
returns.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from rekindle.core.errors import NoSpaceError, StorageError, TransientStorageError
from rekindle.store.base import Backend, Buffer, ObjectInfo
from rekindle.store.spool import Spool
from rekindle.store.wrapper import WrappingBackend


@dataclass
class Fault:
    op: str  # "write", "read", "stat", "list", "delete" or "*"
    prefix: str = ""
    nth: int | None = 1  # fire on the n-th matching call; None: every call (see probability)
    probability: float = 1.0
    effect: str = "transient"  # "transient", "permanent", "nospace", "bitflip"
    times: int = 1  # how many times it fires in all (0: unlimited)
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)


class FaultyBackend(WrappingBackend):
    def __init__(self, inner: Backend, faults: list[Fault] | None = None, *, seed: int = 0) -> None:
        super().__init__(inner)
        self.faults = list(faults or [])
        self._rng = random.Random(seed)  # noqa: S311 - reproducible tests, not secrets
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def _fire(self, op: str, name: str) -> Fault | None:
        with self._lock:
            self.calls.append((op, name))
            for f in self.faults:
                if f.op not in (op, "*") or not name.startswith(f.prefix):
                    continue
                if f.times and f.fired >= f.times:
                    continue
                f.seen += 1
                hit = f.seen == f.nth if f.nth is not None else self._rng.random() < f.probability
                if hit:
                    f.fired += 1
                    return f
        return None

    @staticmethod
    def _raise(f: Fault, op: str, name: str) -> None:
        msg = f"injected {f.effect} fault on {op} {name}"
        if f.effect == "transient":
            raise TransientStorageError(msg)
        if f.effect == "nospace":
            raise NoSpaceError(msg)
        raise StorageError(msg)

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        f = self._fire("write", name)
        if f is not None and f.effect != "bitflip":
            self._raise(f, "write", name)
        self.inner.write(name, data, exclusive=exclusive)

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        f = self._fire("write", name)
        if f is not None and f.effect != "bitflip":
            self._raise(f, "write", name)
        self.inner.write_spool(name, spool, exclusive=exclusive)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        f = self._fire("read", name)
        data = self.inner.read(name, offset, length)
        if f is not None:
            if f.effect != "bitflip":
                self._raise(f, "read", name)
            if data:
                buf = bytearray(data)
                bit = self._rng.randrange(len(buf) * 8)
                buf[bit // 8] ^= 1 << (bit % 8)
                data = bytes(buf)
        return data

    def stat(self, name: str) -> ObjectInfo:
        f = self._fire("stat", name)
        if f is not None:
            self._raise(f, "stat", name)
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        f = self._fire("list", prefix)
        if f is not None:
            self._raise(f, "list", prefix)
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        f = self._fire("delete", name)
        if f is not None:
            self._raise(f, "delete", name)
        self.inner.delete(name)
