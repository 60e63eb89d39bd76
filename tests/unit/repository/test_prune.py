"""Prune reclaims space, repacks, and never breaks a backup running at the same time."""

from __future__ import annotations

import contextlib
import random
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from rekindle.core.errors import RepositoryLockedError
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.check import check
from rekindle.repository.copy import copy_snapshots
from rekindle.repository.forget import forget_ids
from rekindle.repository.locks import Lock
from rekindle.repository.prune import prune
from rekindle.repository.repo import Repository
from rekindle.repository.restore import restore
from rekindle.store.base import Backend
from rekindle.store.local import LocalBackend
from rekindle.store.memory import MemoryBackend
from rekindle.store.wrapper import WrappingBackend
from tests.helpers import PASSWORD, make_repo, tree_differences

NO_GRACE = timedelta(0)


def _stored_bytes(backend: Backend) -> int:
    return sum(i.size for p in ("data/", "tree/") for i in backend.list(p))


def _fill(d: Path, seed: int, n: int = 8, size: int = 100_000) -> None:
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"f{i}").write_bytes(rng.randbytes(size))


def test_forget_then_prune_reclaims_space_and_keeps_the_rest(tmp_path: Path) -> None:
    backend = MemoryBackend()
    a, b = tmp_path / "a", tmp_path / "b"
    _fill(a, 1)
    _fill(b, 2)
    with make_repo(backend, tmp_path / "cache") as repo:
        sa = backup(repo, BackupOptions(paths=["."], cwd=str(a))).snapshot
        sb = backup(repo, BackupOptions(paths=["."], cwd=str(b))).snapshot
        before = _stored_bytes(backend)
        forget_ids(repo, [sa.id])
        report = prune(repo, grace=NO_GRACE)
        assert report.packs_deleted >= 1
        assert report.bytes_freed > 0
        after = _stored_bytes(backend)
        assert after < before * 0.6
        assert check(repo, read_data=True).ok
        stats = restore(repo, repo.read_snapshot(sb.id), tmp_path / "out")
    assert stats.errors == []
    assert tree_differences(b, tmp_path / "out") == []


def test_mostly_unused_packs_are_repacked(tmp_path: Path) -> None:
    backend = MemoryBackend()
    src = tmp_path / "src"
    _fill(src, 3, n=20, size=30_000)  # 600 KB: several files per 256 KiB pack
    with make_repo(backend, tmp_path / "cache") as repo:
        first = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        for i in range(20):
            if i % 4:
                (src / f"f{i}").unlink()
        second = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        forget_ids(repo, [first.id])
        report = prune(repo, grace=NO_GRACE)
        assert report.packs_repacked >= 1
        assert report.blobs_repacked >= 1
        assert check(repo, read_data=True).ok
        stats = restore(repo, repo.read_snapshot(second.id), tmp_path / "out")
    assert stats.errors == []
    assert tree_differences(src, tmp_path / "out") == []


def test_grace_period_delays_the_sweep(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from rekindle.core.clock import FakeClock

    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    backend = MemoryBackend(clock)
    src = tmp_path / "src"
    _fill(src, 4)
    with make_repo(backend, tmp_path / "cache", clock=clock) as repo:
        s = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        forget_ids(repo, [s.id])
        r1 = prune(repo, grace=timedelta(hours=1))
        assert r1.packs_deleted == 0 and r1.records_waiting == 1
        assert _stored_bytes(backend) > 0
        clock.advance(3601)
        r2 = prune(repo, grace=timedelta(hours=1))
        assert r2.packs_deleted >= 1
        assert _stored_bytes(backend) == 0
        assert check(repo, read_data=True).ok


class _PausingBackend(WrappingBackend):
    """Blocks the first write of a restore point until released: a backup 'in flight'."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.reached = threading.Event()
        self.release = threading.Event()

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        if name.startswith("snapshots/") and not self.release.is_set():
            self.reached.set()
            assert self.release.wait(60)
        super().write(name, data, exclusive=exclusive)


def test_backup_that_reuses_condemned_blobs_during_prune_stays_whole(tmp_path: Path) -> None:
    """The dangerous interleaving: a backup deduplicates against blobs that a prune running
    at the same time condemns. The sweep must wait for the backup, then keep what it uses."""
    store = LocalBackend(tmp_path / "repo")
    src = tmp_path / "src"
    _fill(src, 5)
    make_repo(store, tmp_path / "c0").close()
    with Repository.open(store, PASSWORD, cache_root=tmp_path / "c1") as repo:
        first = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        forget_ids(repo, [first.id])  # nothing references the data now

    paused = _PausingBackend(store)
    result: dict[str, object] = {}

    def run_backup() -> None:
        with Repository.open(paused, PASSWORD, cache_root=tmp_path / "c1") as r:
            result["snap"] = backup(r, BackupOptions(paths=["."], cwd=str(src))).snapshot

    t = threading.Thread(target=run_backup)
    t.start()
    assert paused.reached.wait(60)  # the backup found every blob in the index
    with Repository.open(store, PASSWORD, cache_root=tmp_path / "c2") as pr:
        during = prune(pr, grace=NO_GRACE)
    assert during.packs_unused >= 1
    assert during.packs_deleted == 0 and during.records_waiting == 1
    paused.release.set()
    t.join(60)
    snap = result["snap"]
    with Repository.open(store, PASSWORD, cache_root=tmp_path / "c2") as pr:
        after = prune(pr, grace=NO_GRACE)
        assert after.packs_reindexed >= 1
        assert after.packs_deleted == 0
        assert check(pr, read_data=True).ok
        stats = restore(pr, pr.read_snapshot(snap.id), tmp_path / "out")  # type: ignore[attr-defined]
    assert stats.errors == []
    assert tree_differences(src, tmp_path / "out") == []


def test_backups_and_prunes_running_together(tmp_path: Path) -> None:
    """Random interleavings: two threads back up changing trees while another forgets and
    prunes with no grace period; every surviving restore point restores exactly."""
    store = LocalBackend(tmp_path / "repo")
    make_repo(store, tmp_path / "c0").close()
    errors: list[BaseException] = []
    expected: dict[str, dict[str, bytes]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def backer(k: int) -> None:
        rng = random.Random(k)
        src = tmp_path / f"src{k}"
        src.mkdir()
        try:
            with Repository.open(store, PASSWORD, cache_root=tmp_path / f"cb{k}") as r:
                for round_ in range(6):
                    for i in range(rng.randint(1, 5)):
                        # Reuse old contents often, so dedup hits condemned blobs.
                        seed = rng.randint(0, 6)
                        (src / f"f{i}").write_bytes(random.Random(seed).randbytes(40_000 + i))
                    snap = backup(r, BackupOptions(paths=["."], cwd=str(src))).snapshot
                    with lock:
                        expected[snap.id] = {p.name: p.read_bytes() for p in src.iterdir()}
                    if round_ % 2:
                        forget_ids(r, [snap.id])
                        with lock:
                            expected.pop(snap.id)
        except BaseException as e:
            errors.append(e)

    def pruner() -> None:
        try:
            with Repository.open(store, PASSWORD, cache_root=tmp_path / "cp") as r:
                while not stop.is_set():
                    with contextlib.suppress(RepositoryLockedError):
                        prune(r, grace=NO_GRACE)
        except BaseException as e:
            errors.append(e)

    backers = [threading.Thread(target=backer, args=(k,)) for k in range(2)]
    p = threading.Thread(target=pruner)
    for t in [*backers, p]:
        t.start()
    for t in backers:
        t.join(300)
    stop.set()
    p.join(300)
    assert errors == []
    with Repository.open(store, PASSWORD, cache_root=tmp_path / "cp") as r:
        prune(r, grace=NO_GRACE)
        assert check(r, read_data=True).ok
        assert set(r.snapshot_ids()) == set(expected)
        for sid, files in expected.items():
            out = tmp_path / f"out-{sid[:8]}"
            stats = restore(r, r.read_snapshot(sid), out)
            assert stats.errors == []
            assert {f.name: f.read_bytes() for f in out.iterdir()} == files


def test_two_prunes_exclude_each_other(tmp_path: Path) -> None:
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        with (
            Lock(repo, "prune", conflicts=frozenset({"prune"})),
            pytest.raises(RepositoryLockedError),
        ):
            prune(repo, grace=NO_GRACE)
        prune(repo, grace=NO_GRACE)  # free again


def test_copy_moves_only_missing_blobs_and_is_idempotent(tmp_path: Path) -> None:
    from rekindle.core.errors import UsageError

    src_dir = tmp_path / "src"
    _fill(src_dir, 6)
    with make_repo(MemoryBackend(), tmp_path / "c1") as a:
        s1 = backup(a, BackupOptions(paths=["."], cwd=str(src_dir))).snapshot
        (src_dir / "extra").write_bytes(b"more")
        backup(a, BackupOptions(paths=["."], cwd=str(src_dir)))
        dst_backend = MemoryBackend()
        with Repository.init(dst_backend, PASSWORD, cache_root=tmp_path / "c2", master_from=a) as b:
            r1 = copy_snapshots(a, b, [s1.id])
            assert r1.copied == 1
            r2 = copy_snapshots(a, b)
            assert r2.copied == 1 and r2.skipped == 1
            assert r2.bytes < r1.bytes  # only the new file's blobs and trees
            assert copy_snapshots(a, b).copied == 0
            assert check(b, read_data=True).ok
            latest = b.find_snapshot("latest")
            stats = restore(b, latest, tmp_path / "out")
        with make_repo(MemoryBackend(), tmp_path / "c3") as unrelated, pytest.raises(UsageError):
            copy_snapshots(a, unrelated)
    assert stats.errors == []
    assert tree_differences(src_dir, tmp_path / "out") == []


def test_prune_removes_old_temporaries_of_crashed_writers_only(tmp_path: Path) -> None:
    import os

    store = LocalBackend(tmp_path / "repo")
    with make_repo(store, tmp_path / "cache") as repo:
        (tmp_path / "repo" / "data" / "ab").mkdir(parents=True)
        old = tmp_path / "repo" / "data" / "ab" / ".tmp-crashed"
        young = tmp_path / "repo" / "data" / "ab" / ".tmp-writing"
        old.write_bytes(b"half a pack")
        young.write_bytes(b"a pack being written")
        os.utime(old, (0, 0))
        report = prune(repo, grace=NO_GRACE)
    assert report.temporaries_removed == 1
    assert not old.exists()
    assert young.exists()
