"""Behaviour specific to each wrapper and to the local backend's crash safety."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rekindle.core.errors import (
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    ReadOnlyError,
    StorageError,
    TransientStorageError,
    UsageError,
)
from rekindle.store.faults import Fault, FaultyBackend
from rekindle.store.local import LocalBackend
from rekindle.store.location import open_backend
from rekindle.store.memory import MemoryBackend
from rekindle.store.ratelimit import RateLimitedBackend, TokenBucket
from rekindle.store.readonly import ReadOnlyBackend
from rekindle.store.retry import RetryingBackend


def test_readonly_refuses_changes_but_reads() -> None:
    inner = MemoryBackend()
    inner.write("config", b"c")
    ro = ReadOnlyBackend(inner)
    assert ro.read("config") == b"c"
    assert [i.name for i in ro.list()] == ["config"]
    with pytest.raises(ReadOnlyError):
        ro.write("x", b"y")
    with pytest.raises(ReadOnlyError):
        ro.delete("config")
    assert inner.read("config") == b"c"


def test_retry_hides_transient_errors_and_backs_off() -> None:
    sleeps: list[float] = []
    faulty = FaultyBackend(MemoryBackend(), [Fault("write", nth=None, times=3)])
    r = RetryingBackend(faulty, attempts=5, sleep=sleeps.append)
    r.write("a", b"1")
    assert r.read("a") == b"1"
    assert len(sleeps) == 3


def test_retry_gives_up_after_its_attempts() -> None:
    faulty = FaultyBackend(MemoryBackend(), [Fault("read", nth=None, times=0)])
    faulty.inner.write("a", b"1")
    r = RetryingBackend(faulty, attempts=3, sleep=lambda _s: None)
    with pytest.raises(TransientStorageError):
        r.read("a")
    assert [c for c in faulty.calls if c[0] == "read"] == [("read", "a")] * 3


def test_retry_does_not_retry_permanent_errors() -> None:
    faulty = FaultyBackend(MemoryBackend(), [Fault("read", effect="permanent")])
    faulty.inner.write("a", b"1")
    r = RetryingBackend(faulty, sleep=lambda _s: None)
    with pytest.raises(StorageError) as info:
        r.read("a")
    assert not info.value.transient
    with pytest.raises(ObjectNotFoundError):
        r.read("missing")
    assert len([c for c in faulty.calls if c[0] == "read"]) == 2


class _LandsThenFails(MemoryBackend):
    """The write reaches the store but the answer is lost (a dropped connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        super().write(name, data, exclusive=exclusive)
        if not self.failed:
            self.failed = True
            raise TransientStorageError("connection reset after upload")


def test_retried_exclusive_write_that_landed_succeeds_only_with_same_bytes() -> None:
    inner = _LandsThenFails()
    r = RetryingBackend(inner, sleep=lambda _s: None)
    r.write("data/aa/aa", b"payload")
    assert inner.read("data/aa/aa") == b"payload"
    with pytest.raises(ObjectExistsError):
        r.write("data/aa/aa", b"payload")  # a second, separate write of a taken name


def test_token_bucket_holds_the_rate() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(1000, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.take(500)  # 5000 bytes at 1000 B/s: the first 1000 are the burst
    assert now[0] == pytest.approx(4.0, abs=0.01)


def test_rate_limited_backend_counts_reads_and_writes() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(10_000, clock=lambda: now[0], sleep=sleep)
    b = RateLimitedBackend(MemoryBackend(), 10_000, bucket=bucket)
    b.write("a", b"x" * 30_000)
    b.read("a")
    assert now[0] == pytest.approx(5.0, abs=0.01)


def test_rate_limit_must_be_positive() -> None:
    with pytest.raises(UsageError):
        TokenBucket(0)


def test_fault_bitflip_changes_exactly_one_bit() -> None:
    inner = MemoryBackend()
    inner.write("p", bytes(64))
    f = FaultyBackend(inner, [Fault("read", effect="bitflip")])
    damaged = f.read("p")
    assert sum(bin(b).count("1") for b in damaged) == 1
    assert f.read("p") == bytes(64)  # fired once


def test_fault_nospace_is_a_no_space_error() -> None:
    f = FaultyBackend(MemoryBackend(), [Fault("write", effect="nospace")])
    with pytest.raises(NoSpaceError):
        f.write("a", b"1")


def test_local_writes_leave_no_temporaries_and_ignore_crashed_ones(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.write("data/ab/ab01", b"x")
    (tmp_path / "data/ab/.tmp-deadbeef").write_bytes(b"half a pack")  # a crashed writer
    assert [i.name for i in b.list("data/")] == ["data/ab/ab01"]
    os.utime(tmp_path / "data/ab/.tmp-deadbeef", (0, 0))
    assert b.clean_temporaries() == 1
    assert sorted(os.listdir(tmp_path / "data/ab")) == ["ab01"]


def test_local_files_are_private(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.write("keys/k1", b"wrapped key")
    assert (tmp_path / "keys/k1").stat().st_mode & 0o077 == 0


def test_local_reports_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    b = LocalBackend(tmp_path)
    real_write = os.write

    def full(fd: int, data: object) -> int:
        if threading.current_thread() is threading.main_thread():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(NoSpaceError):
        b.write("data/aa/aa11", b"x" * 100)
    monkeypatch.undo()
    assert not b.exists("data/aa/aa11")
    assert os.listdir(tmp_path / "data/aa") == []


def test_location_parsing(tmp_path: Path) -> None:
    local = open_backend(str(tmp_path / "r"))
    assert isinstance(local, LocalBackend)
    with pytest.raises(UsageError):
        open_backend("ftp://host/x")
    with pytest.raises(UsageError):
        open_backend("s3:///prefix-without-bucket")


def test_local_pack_reads_reuse_a_bounded_set_of_descriptors(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from rekindle.store import local as local_mod

    b = LocalBackend(tmp_path)
    names = [f"data/{i:02x}/{i:02x}{'0' * 62}" for i in range(local_mod._MAX_OPEN_PACKS * 2)]
    for i, n in enumerate(names):
        b.write(n, bytes([i % 256]) * 1000)
    before = len(os.listdir("/proc/self/fd"))

    def read_all(k: int) -> None:
        for i, n in enumerate(names[k:] + names[:k]):
            j = (i + k) % len(names)
            assert b.read(n, 10 + j % 7, 5) == bytes([j % 256]) * 5

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(read_all, range(0, 40, 10)))
    assert len(os.listdir("/proc/self/fd")) <= before + local_mod._MAX_OPEN_PACKS
    b.delete(names[0])
    with pytest.raises(ObjectNotFoundError):
        b.read(names[0], 0, 5)
    b.close()
    assert len(os.listdir("/proc/self/fd")) <= before
