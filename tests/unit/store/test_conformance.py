"""One contract, every backend and wrapper (see rekindle.store.base for the contract)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rekindle.core.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    UsageError,
)
from rekindle.store.base import Backend
from rekindle.store.faults import Fault, FaultyBackend
from rekindle.store.local import LocalBackend
from rekindle.store.memory import MemoryBackend
from rekindle.store.ratelimit import RateLimitedBackend
from rekindle.store.retry import RetryingBackend
from rekindle.store.spool import READ_PIECE
from rekindle.store.tier import LocalArchiveBackend

Factory = Callable[[pytest.FixtureRequest, Path], Backend]


def _s3(request: pytest.FixtureRequest, tmp: Path) -> Backend:
    from rekindle.store.s3 import S3Backend

    bucket = request.getfixturevalue("s3_bucket")
    return S3Backend(bucket, "repo/prefix")


def _flaky(inner: Backend) -> Backend:
    # Every third call of each kind fails transiently; the retry layer must hide it.
    faults = [Fault(op=op, nth=None, probability=0.3, times=0) for op in ("write", "read", "stat")]
    return RetryingBackend(FaultyBackend(inner, faults, seed=3), sleep=lambda _s: None)


BACKENDS: dict[str, Factory] = {
    "memory": lambda r, t: MemoryBackend(),
    "local": lambda r, t: LocalBackend(t / "repo"),
    "s3": _s3,
    "retry(memory)": lambda r, t: RetryingBackend(MemoryBackend()),
    "ratelimit(local)": lambda r, t: RateLimitedBackend(LocalBackend(t / "repo"), 1 << 30),
    "retry(faulty(memory))": lambda r, t: _flaky(MemoryBackend()),
    "retry(faulty(local))": lambda r, t: _flaky(LocalBackend(t / "repo")),
    "archive(local)": lambda r, t: LocalArchiveBackend(t / "repo", t / "archive"),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = BACKENDS[request.param](request, tmp_path)
    yield b
    b.close()


def test_write_then_read_whole_and_ranges(backend: Backend) -> None:
    data = bytes(range(256)) * 40
    backend.write("data/ab/abcdef", data)
    assert backend.read("data/ab/abcdef") == data
    assert backend.read("data/ab/abcdef", 10, 20) == data[10:30]
    assert backend.read("data/ab/abcdef", 100) == data[100:]
    assert backend.read("data/ab/abcdef", 0, 0) == b""
    assert backend.read("data/ab/abcdef", len(data) - 1, 1) == data[-1:]


def test_empty_object(backend: Backend) -> None:
    backend.write("locks/empty", b"")
    assert backend.read("locks/empty") == b""
    assert backend.stat("locks/empty").size == 0


def test_read_past_the_end_is_an_error_not_short_data(backend: Backend) -> None:
    backend.write("config", b"12345")
    with pytest.raises(StorageError):
        backend.read("config", 3, 10)


def test_exclusive_write_refuses_existing_and_keeps_the_first(backend: Backend) -> None:
    backend.write("snapshots/aa", b"first")
    with pytest.raises(ObjectExistsError):
        backend.write("snapshots/aa", b"second")
    assert backend.read("snapshots/aa") == b"first"


def test_replacing_write(backend: Backend) -> None:
    backend.write("locks/l1", b"one", exclusive=False)
    backend.write("locks/l1", b"two, longer", exclusive=False)
    assert backend.read("locks/l1") == b"two, longer"
    assert backend.stat("locks/l1").size == len(b"two, longer")


def test_missing_objects(backend: Backend) -> None:
    with pytest.raises(ObjectNotFoundError):
        backend.read("index/nope")
    with pytest.raises(ObjectNotFoundError):
        backend.read("index/nope", 0, 4)
    with pytest.raises(ObjectNotFoundError):
        backend.stat("index/nope")
    with pytest.raises(ObjectNotFoundError):
        backend.delete("index/nope")
    assert not backend.exists("index/nope")


def test_list_by_prefix_and_delete(backend: Backend) -> None:
    names = ["data/00/0011", "data/ff/ff22", "tree/00/0033", "index/44", "config"]
    for n in names:
        backend.write(n, n.encode())
    assert sorted(i.name for i in backend.list("data/")) == ["data/00/0011", "data/ff/ff22"]
    assert sorted(i.name for i in backend.list("data/ff/")) == ["data/ff/ff22"]
    assert sorted(i.name for i in backend.list()) == sorted(names)
    assert [i.name for i in backend.list("snapshots/")] == []
    sizes = {i.name: i.size for i in backend.list("")}
    assert sizes == {n: len(n) for n in names}
    backend.delete("data/00/0011")
    assert not backend.exists("data/00/0011")
    assert sorted(i.name for i in backend.list("data/")) == ["data/ff/ff22"]


def test_stat_reports_size_and_an_aware_recent_time(backend: Backend) -> None:
    backend.write("keys/k", b"x" * 1234)
    info = backend.stat("keys/k")
    assert info.size == 1234
    assert info.modified.tzinfo is not None
    assert abs((datetime.now(UTC) - info.modified).total_seconds()) < 120


@pytest.mark.parametrize(
    "bad", ["", "../escape", "/abs", "a//b", "Data/x", "a/./b", "a/../b", "a\\b", "a b", "x/"]
)
def test_hostile_names_are_refused(backend: Backend, bad: str) -> None:
    with pytest.raises(UsageError):
        backend.write(bad, b"x")
    with pytest.raises(UsageError):
        backend.read(bad)


def test_concurrent_exclusive_writers_one_wins(backend: Backend) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        try:
            backend.write("snapshots/race", f"writer {i}".encode())
            outcome = f"won {i}"
        except ObjectExistsError:
            outcome = "lost"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1
    assert backend.read("snapshots/race") == f"writer {winners[0].split()[1]}".encode()


def test_large_object_round_trip(backend: Backend) -> None:
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB
    backend.write("data/12/1234", data)
    assert backend.read("data/12/1234") == data
    assert backend.read("data/12/1234", 4 << 20, 1000) == data[4 << 20 : (4 << 20) + 1000]


def test_a_spool_is_stored_whole_and_exclusively(backend: Backend) -> None:
    data = os.urandom(2 * READ_PIECE + 12345)  # streamed or read back in several pieces
    spool = backend.new_spool()
    try:
        spool.write(data[:1000])
        spool.write(memoryview(data)[1000:])
        assert spool.size == len(data)
        backend.write_spool("data/cd/cdef", spool)
    finally:
        spool.close()
    assert backend.read("data/cd/cdef") == data
    other = backend.new_spool()
    try:
        other.write(b"something else")
        with pytest.raises(ObjectExistsError):
            backend.write_spool("data/cd/cdef", other)
    finally:
        other.close()
    assert backend.read("data/cd/cdef") == data
    assert [i.name for i in backend.list("")] == ["data/cd/cdef"]


def test_spools_leave_no_temporary_files_behind(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    stored, dropped, refused = backend.new_spool(), backend.new_spool(), backend.new_spool()
    for s in (stored, dropped, refused):
        s.write(b"pack bytes")
    backend.write_spool("data/ab/ab01", stored)
    with pytest.raises(ObjectExistsError):
        backend.write_spool("data/ab/ab01", refused)
    for s in (stored, dropped, refused):
        s.close()
    files = sorted(
        str(p.relative_to(tmp_path / "repo")) for p in tmp_path.rglob("*") if p.is_file()
    )
    assert files == ["data/ab/ab01"]
    assert (tmp_path / "repo" / "data/ab/ab01").read_bytes() == b"pack bytes"


def test_prune_leaves_an_open_spool_alone_and_removes_an_abandoned_one(tmp_path: Path) -> None:
    """A pack may fill for hours; its spool, flocked while open, survives a cleanup of old
    temporary files, while one left by a crashed writer (no lock) goes."""
    backend = LocalBackend(tmp_path / "repo")
    live = backend.new_spool()
    live.write(b"filling slowly")
    dead = tmp_path / "repo" / ".tmp-spool-crashed"
    dead.write_bytes(b"left by a kill -9")
    two_hours_ago = time.time() - 7200
    for p in (Path(str(live.path)), dead):
        os.utime(p, (two_hours_ago, two_hours_ago))
    assert backend.clean_temporaries(older_than=3600) == 1
    assert not dead.exists()
    backend.write_spool("data/ab/ab02", live)
    live.close()
    assert backend.read("data/ab/ab02") == b"filling slowly"


def test_a_spool_on_another_file_system_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(tmp_path / "repo")
    spool = backend.new_spool()
    spool.write(b"pack")
    real_link = os.link

    def cross_device(src: str, dst: str, **kw: object) -> None:
        if ".tmp-spool-" in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", cross_device)
    backend.write_spool("data/ab/ab03", spool)
    spool.close()
    assert backend.read("data/ab/ab03") == b"pack"
    assert [i.name for i in backend.list("")] == ["data/ab/ab03"]
