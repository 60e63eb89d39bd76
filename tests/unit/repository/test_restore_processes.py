"""Restore with worker processes (restore_worker.py): the same files, metadata, errors and
safety as the threads give, for restores of many small files from a local repository."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from rekindle.format.config import RepoConfig
from rekindle.format.registry import NodeType
from rekindle.format.tree import Node
from rekindle.repository import restore_worker
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.repo import Repository, pack_name
from rekindle.repository.restore import Existing, RestoreOptions, restore
from rekindle.store.local import LocalBackend
from tests.helpers import make_repo, tree_differences
from tests.unit.repository.test_backup_restore import build_tree

PROCESSES = RestoreOptions(processes=2, process_after_files=0, wait_for_processes=True)


def _varied_tree(root: Path) -> None:
    """Every kind of entry, odd names, and enough small files for several batches."""
    spec = [
        ("plain", ("file", b"hello\n" * 50, 0o644)),
        ("empty", ("empty", b"", 0o600)),
        ("sparse", ("sparse", b"tail", 0o644)),
        ("link", ("symlink", b"plain", 0o777)),
        ("hard", ("hardlink", b"", 0o644)),
        ("x attr", ("xattr", b"value", 0o640)),
        ("nested \u00e9\u6f22", ("dir", b"", 0o755)),
        ("inner", ("file", os.urandom(100_000), 0o400)),
        ("setuid", ("file", b"#!/bin/sh\n", 0o4755)),
    ]
    build_tree(root, spec)
    rng = random.Random(7)
    for d in range(6):
        sub = root / f"dir{d}" / "deeper"
        sub.mkdir(parents=True)
        for i in range(70):
            (sub / f"f{i:03d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
        os.utime(sub, ns=(1_600_000_000_000_000_000 + d, 1_600_000_000_000_000_000 + d))


def _repo(tmp_path: Path) -> Repository:
    return make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache")


def test_worker_processes_restore_everything_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _varied_tree(src)
    with _repo(tmp_path) as repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        stats = restore(repo, snap, tmp_path / "out", PROCESSES)
        threads = restore(repo, snap, tmp_path / "out-threads", RestoreOptions(processes=0))
    assert stats.worker_processes == 2  # the processes really did the work
    assert threads.worker_processes == 0
    assert stats.errors == []
    assert tree_differences(src, tmp_path / "out") == []
    assert (stats.files, stats.bytes_written) == (threads.files, threads.bytes_written)


def test_a_damaged_chunk_fails_only_its_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"f{i}").write_bytes(os.urandom(3000 + i))
    backend = LocalBackend(tmp_path / "repo")
    with make_repo(backend, tmp_path / "cache") as repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        node = next(n for n in repo.load_tree(snap.tree) if n.name == b"f17")
        (victim,) = node.content
        assert isinstance(victim, bytes)
        loc = repo.index.lookup(victim)
        assert loc is not None
        path = tmp_path / "repo" / pack_name(loc.entry.kind, loc.pack)
        raw = bytearray(path.read_bytes())
        raw[loc.entry.offset + 30] ^= 0x10
        path.write_bytes(bytes(raw))
        stats = restore(repo, snap, tmp_path / "out", PROCESSES)
    assert stats.worker_processes == 2
    assert [p for p, _ in stats.errors] == ["f17"]
    assert stats.damaged == 1
    assert stats.files == 199
    for i in range(200):
        if i != 17:
            assert (tmp_path / "out" / f"f{i}").read_bytes() == (src / f"f{i}").read_bytes()


@pytest.mark.parametrize("mode", list(Existing))
def test_existing_files_policy_in_worker_processes(tmp_path: Path, mode: Existing) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_text(f"from backup {i}")
    target = tmp_path / "t"
    target.mkdir()
    (target / "f3").write_text("already here")
    with _repo(tmp_path) as repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        opts = RestoreOptions(
            existing=mode, processes=2, process_after_files=0, wait_for_processes=True
        )
        stats = restore(repo, snap, target, opts)
    assert stats.worker_processes == 2 and stats.errors == []
    assert (target / "f4").read_text() == "from backup 4"
    if mode is Existing.OVERWRITE:
        assert (target / "f3").read_text() == "from backup 3"
    elif mode is Existing.SKIP:
        assert (target / "f3").read_text() == "already here"
        assert stats.skipped == 1
    else:
        assert (target / "f3").read_text() == "already here"
        assert (target / "f3.restored-1").read_text() == "from backup 3"


def test_a_worker_never_follows_a_symlink_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory the walk made, swapped for a symlink before a worker writes into it:
    the worker opens every path component with O_NOFOLLOW and refuses."""
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "a" / "b").symlink_to(outside)
    st = target.stat()
    setup = restore_worker.Setup(
        master=b"k" * 32,
        config=RepoConfig(id=b"\0" * 32, created=""),
        target=str(target),
        existing="overwrite",
        restore_owner=False,
        target_id=(st.st_dev, st.st_ino),
    )
    factory = LocalBackend(tmp_path / "repo").reader_factory()
    assert factory is not None
    monkeypatch.setattr(restore_worker, "_worker", None)  # this process plays the worker
    restore_worker.start(factory, setup)
    node = Node(name=b"planted", type=NodeType.FILE, mode=0o644, size=0)
    ((state, _, _, _),) = restore_worker.write_batch([restore_worker.job(b"a/b", node)], {})
    assert state == "failed"
    assert list(outside.iterdir()) == []


def test_worker_processes_that_cannot_start_leave_the_work_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import multiprocessing.context

    def no_process(self: object) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", no_process)
    src = tmp_path / "src"
    _varied_tree(src)
    with _repo(tmp_path) as repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        stats = restore(repo, snap, tmp_path / "out", PROCESSES)
    assert stats.worker_processes == 0
    assert stats.errors == []
    assert tree_differences(src, tmp_path / "out") == []


def test_a_worker_refuses_a_target_that_is_not_the_one_the_walk_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "elsewhere").mkdir()
    st = (tmp_path / "elsewhere").stat()
    setup = restore_worker.Setup(
        master=b"k" * 32,
        config=RepoConfig(id=b"\0" * 32, created=""),
        target=str(tmp_path / "target"),
        existing="overwrite",
        restore_owner=False,
        target_id=(st.st_dev, st.st_ino),
    )
    factory = LocalBackend(tmp_path / "repo").reader_factory()
    assert factory is not None
    monkeypatch.setattr(restore_worker, "_worker", None)
    with pytest.raises(RuntimeError, match="no longer the directory"):
        restore_worker.start(factory, setup)


def _hundred_files(src: Path) -> None:
    src.mkdir()
    for i in range(100):
        (src / f"f{i:03d}").write_bytes(os.urandom(3000 + i))


def test_workers_with_an_in_memory_index_fail_only_the_file_whose_chunk_is_unknown(
    tmp_path: Path,
) -> None:
    """Without a cache directory the index is in memory: its locations go with each batch,
    and a chunk missing from them is looked up in the worker's own (empty) index, which
    must answer "not in the index" for that file alone."""
    src = tmp_path / "src"
    _hundred_files(src)
    repo = make_repo(LocalBackend(tmp_path / "repo"), None)
    snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
    node = next(n for n in repo.load_tree(snap.tree) if n.name == b"f017")
    (victim,) = node.content
    repo.index._db.execute("DELETE FROM blobs WHERE id = ?", (victim,))
    stats = restore(repo, snap, tmp_path / "out", PROCESSES)
    assert stats.worker_processes == 2
    assert [p for p, _ in stats.errors] == ["f017"]
    assert "not in the index" in stats.errors[0][1]
    assert stats.damaged == 1
    assert stats.files == 99


@pytest.mark.parametrize("variant", ["another index", "not an index"])
def test_workers_that_find_another_index_leave_the_restore_to_threads(
    tmp_path: Path, variant: str
) -> None:
    """The workers open the index by its path: if the file there is not the one this
    restore has open (the cache was cleared and made again), or no index at all, they do
    not start, and the threads restore everything."""
    from rekindle.repository.index import LocalIndex

    src = tmp_path / "src"
    _hundred_files(src)
    repo = make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache")
    snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
    path = repo.index.path
    assert path is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # this restore keeps its open file
    if variant == "another index":
        LocalIndex(path).close()  # made again by another process, not synced yet
    else:
        path.write_bytes(b"x" * 4096)
    stats = restore(repo, snap, tmp_path / "out", PROCESSES)
    assert stats.worker_processes == 0
    assert stats.errors == []
    assert tree_differences(src, tmp_path / "out") == []
