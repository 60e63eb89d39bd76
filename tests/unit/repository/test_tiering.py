"""The tiering protocol (FORMAT.md section 12) on a local archive tier: packs only cold
restore points use move, mixed packs keep their warm blobs warm, backups never deduplicate
against an archived pack, a backup that started before the mark keeps what it used warm,
and a run concurrent with backups and warm restores loses nothing and never makes a warm
restore wait for a thaw."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rekindle.core.clock import FakeClock
from rekindle.core.errors import TransientStorageError, UsageError
from rekindle.format.snapshot import Snapshot
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.check import check
from rekindle.repository.forget import forget_ids
from rekindle.repository.locks import Lock
from rekindle.repository.prune import prune
from rekindle.repository.reach import reachable, restore_needs
from rekindle.repository.repo import Repository, parse_pack_name
from rekindle.repository.restore import restore
from rekindle.repository.tiering import stored_usage, tier
from rekindle.repository.writer import BlobWriter
from rekindle.store.memory import MemoryBackend
from rekindle.store.s3 import S3Backend
from rekindle.store.tier import LocalArchiveBackend, TierState
from tests.helpers import PASSWORD, make_repo, tree_differences

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLD_AFTER = timedelta(days=90)


def _cold(clock: FakeClock) -> Callable[[], Callable[[Snapshot], bool]]:
    def is_cold(snap: Snapshot) -> bool:
        return snap.time < clock.now() - COLD_AFTER

    return lambda: is_cold


def _states(b: LocalArchiveBackend) -> dict[str, TierState]:
    return {i.name: b.tier_state(i.name) for i in b.list("data/")}


def _backup(repo: Repository, src: Path) -> Snapshot:
    return backup(repo, BackupOptions(paths=[str(src)], estimate=False, parent=None)).snapshot


def _restored(tmp: Path, src: Path) -> Path:
    return tmp / str(src).lstrip("/")


@pytest.fixture
def archive(tmp_path: Path) -> tuple[LocalArchiveBackend, FakeClock]:
    clock = FakeClock(T0)
    # An hour per thaw: a restore that needed one could not finish within a test.
    b = LocalArchiveBackend(
        tmp_path / "warm", tmp_path / "archive", clock=clock, thaw_delay=timedelta(hours=1)
    )
    return b, clock


def test_cold_only_and_mixed_packs_move_and_warm_data_stays_warm(
    tmp_path: Path, archive: tuple[LocalArchiveBackend, FakeClock]
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    old_only = os.urandom(150_000)
    (src / "old-only.bin").write_bytes(old_only)
    (src / "shared.bin").write_bytes(os.urandom(30_000))
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        old = _backup(repo, src)
        old_packs = set(_states(b))
        (src / "old-only.bin").unlink()
        (src / "new.bin").write_bytes(os.urandom(40_000))
        clock.advance(100 * 86400)
        new = _backup(repo, src)

        report = tier(repo, _cold(clock), grace=timedelta(0))

        # the old pack mixed old-only.bin (cold) with shared.bin (warm): shared.bin was
        # copied out, then the pack moved; the new point's packs stayed warm
        assert report.snapshots_cold == 1 and report.snapshots_warm == 1
        assert report.packs_mixed >= 1 and report.blobs_copied >= 1
        assert report.packs_moved == len(old_packs) == report.packs_cold
        states = _states(b)
        assert all(states[p] is TierState.ARCHIVED for p in old_packs)
        assert all(s is TierState.WARM for p, s in states.items() if p not in old_packs)

        # the measure of warm and cold bytes agrees, per restore point group too
        usage = stored_usage(repo, lambda snap: "old" if snap.id == old.id else "new")
        assert usage.cold_bytes == report.bytes_cold > 0 and usage.cold_packs == len(old_packs)
        assert usage.warm_bytes > 0
        assert usage.by_group["new"][1] == 0 and usage.by_group["new"][0] > 0
        assert usage.by_group["old"][1] >= len(old_only) // 2  # old-only.bin, compressed or not
        assert usage.by_group["old"][0] > 0  # shared.bin stayed warm

        # a warm restore reads no archived pack: it plans none and never waits
        assert not set(restore_needs(repo, new, []).preferred) & old_packs
        stats = restore(repo, new, tmp_path / "r-new")
        assert not stats.errors
        assert tree_differences(src, _restored(tmp_path / "r-new", src)) == []

        # the cold point's restore needs the archived pack for old-only.bin only; it
        # cannot run before a thaw, and restores byte for byte after one
        assert set(restore_needs(repo, old, []).preferred) & old_packs
        assert not set(restore_needs(repo, old, [str(src / "shared.bin")]).preferred) & old_packs
        assert restore(repo, old, tmp_path / "r-cold").errors
        for name in old_packs:
            b.thaw(name, days=1)
        clock.advance(3600)
        assert all(b.tier_state(n) is TierState.THAWED for n in old_packs)
        assert not restore(repo, old, tmp_path / "r-old").errors
        restored = _restored(tmp_path / "r-old", src)
        assert (restored / "old-only.bin").read_bytes() == old_only
        assert (restored / "shared.bin").read_bytes() == (src / "shared.bin").read_bytes()

        # a backup holding old-only.bin again does not deduplicate against the archive
        # (thawed or not: the thawed copy expires), so its restore needs no thaw
        (src / "old-only.bin").write_bytes(old_only)
        clock.advance(86400)
        again = _backup(repo, src)
        assert not set(restore_needs(repo, again, []).preferred) & old_packs
        assert not restore(repo, again, tmp_path / "r-again").errors
        # ... and the cold point's restore now finds old-only.bin warm too
        assert not set(restore_needs(repo, old, []).preferred) & old_packs

        # a second run finds nothing new; check passes with the archived packs as warnings
        again_report = tier(repo, _cold(clock), grace=timedelta(0))
        assert again_report.packs_marked == 0 and again_report.packs_cold == len(old_packs)
        assert check(repo).ok

        # forget the cold point: prune deletes the archived pack, and the next tiering run
        # drops it from its records
        forget_ids(repo, [old.id])
        pruned = prune(repo, grace=timedelta(0))
        assert pruned.packs_deleted >= len(old_packs)
        assert not old_packs & set(_states(b))
        assert tier(repo, _cold(clock), grace=timedelta(0)).packs_cold == 0
        assert not repo.index.cold
        assert check(repo, read_data=True).ok


def test_a_backup_that_started_before_the_mark_keeps_what_it_used_warm(
    tmp_path: Path,
    archive: tuple[LocalArchiveBackend, FakeClock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(100_000))
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        _backup(repo, src)
        clock.advance(100 * 86400)
        other = Repository.open(b, PASSWORD, cache_root=tmp_path / "cache2", clock=clock)
        # A backup takes its lock and reads the index; then the mark happens; then it goes
        # on, deduplicating a.bin against the pack the mark names.
        synced, marked = threading.Event(), threading.Event()
        real_sync = other.sync_index

        def sync_then_wait() -> tuple[int, int]:
            result = real_sync()
            synced.set()
            assert marked.wait(30)
            return result

        monkeypatch.setattr(other, "sync_index", sync_then_wait)
        data_packs = set(_states(b))
        done: list[Snapshot] = []
        running = threading.Thread(target=lambda: done.append(_backup(other, src)))
        running.start()
        assert synced.wait(30)
        clock.advance(1)
        report = tier(repo, _cold(clock), grace=timedelta(0))
        assert report.packs_marked == 1 and report.packs_moved == 0
        assert report.records_waiting == 1  # the backup's lock is older than the mark
        marked.set()
        running.join()
        (new,) = done
        assert set(_states(b)) == data_packs  # no new data: a.bin came from the marked pack
        other.close()

        clock.advance(1)
        report = tier(repo, _cold(clock), grace=timedelta(0))
        assert report.packs_kept_warm == 1 and report.packs_moved == 0
        assert all(s is TierState.WARM for s in _states(b).values())
        assert not repo.index.cold and not repo.tier_records
        assert not restore(repo, new, tmp_path / "r").errors  # no thaw needed
        assert tree_differences(src, _restored(tmp_path / "r", src)) == []


def test_tiering_needs_an_archive_tier(tmp_path: Path) -> None:
    with (
        make_repo(MemoryBackend(), None) as repo,
        pytest.raises(UsageError, match="no archive tier"),
    ):
        tier(repo, lambda: lambda _s: True)


def test_tiering_concurrent_with_backups_and_warm_restores_loses_nothing(
    tmp_path: Path, archive: tuple[LocalArchiveBackend, FakeClock]
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    # a-keep.txt never changes and is read first: it shares a pack with cold data, which
    # makes that pack mixed
    (src / "a-keep.txt").write_bytes(os.urandom(20_000))
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(60_000))
    contents: dict[str, dict[str, bytes]] = {}

    def remember(snap: Snapshot) -> None:
        contents[snap.id] = {p.name: p.read_bytes() for p in src.iterdir()}

    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        for _day in range(3):  # three cold points; all files but f5 change after each
            remember(_backup(repo, src))
            for i in range(5):
                (src / f"f{i}.bin").write_bytes(os.urandom(60_000))
            clock.advance(86400)
        clock.advance(100 * 86400)
        warm = _backup(repo, src)
        remember(warm)

        errors: list[BaseException] = []
        stop = threading.Event()
        warm_restores = 0

        def backups() -> None:
            with Repository.open(b, PASSWORD, cache_root=tmp_path / "c-b", clock=clock) as r:
                n = 0
                while not stop.is_set() and n < 4:
                    (src / f"new{n}.bin").write_bytes(os.urandom(50_000))
                    remember(_backup(r, src))
                    n += 1

        def restores() -> None:
            nonlocal warm_restores
            with Repository.open(b, PASSWORD, cache_root=tmp_path / "c-r", clock=clock) as r:
                while not stop.is_set():
                    target = tmp_path / f"wr{warm_restores}"
                    stats = restore(r, warm, target)
                    assert not stats.errors, stats.errors  # never an archived pack
                    got = {p.name: p.read_bytes() for p in _restored(target, src).iterdir()}
                    assert got == contents[warm.id]
                    warm_restores += 1

        def guarded(fn: object) -> threading.Thread:
            def run() -> None:
                try:
                    fn()  # type: ignore[operator]
                except BaseException as e:  # reported below
                    errors.append(e)

            return threading.Thread(target=run)

        threads = [guarded(backups), guarded(restores)]
        for t in threads:
            t.start()
        while not any(b.list("locks/")) and not errors:  # the first backup is running
            threading.Event().wait(0.01)
        marked = moved = mixed = 0
        for _ in range(3):  # marks; moves wait for the running backup's lock
            report = tier(repo, _cold(clock), grace=timedelta(0))
            marked, moved = marked + report.packs_marked, moved + report.packs_moved
            mixed += report.packs_mixed
        threads[0].join()

        def restores_done(more: int) -> None:
            target = warm_restores + more
            while warm_restores < target and not errors:
                threading.Event().wait(0.02)

        # the restore running now holds a lock as old as the marks: wait for newer ones,
        # then move while restores go on
        clock.advance(1)
        restores_done(2)
        moved += tier(repo, _cold(clock), grace=timedelta(0)).packs_moved
        restores_done(2)
        stop.set()
        threads[1].join()
        assert not errors, errors
        assert marked > 0 and moved > 0 and mixed > 0, (marked, moved, mixed)

        # every warm point restores without a thaw; every point restores after one
        assert check(repo).ok
        snaps = repo.snapshots()
        assert len(snaps) == len(contents)
        for snap in snaps:
            if snap.time >= clock.now() - COLD_AFTER:
                stats = restore(repo, snap, tmp_path / f"w-{snap.id}")
                assert not stats.errors, stats.errors
        for name, state in _states(b).items():
            if state is TierState.ARCHIVED:
                b.thaw(name, days=1)
        clock.advance(3600)
        for snap in snaps:
            target = tmp_path / f"all-{snap.id}"
            assert not restore(repo, snap, target).errors
            got = {p.name: p.read_bytes() for p in _restored(target, src).iterdir()}
            assert got == contents[snap.id]
        assert check(repo, read_data=True).ok


def _only(src: Path, **files: bytes) -> None:
    for f in src.iterdir():
        f.unlink()
    for name, data in files.items():
        (src / name).write_bytes(data)


def _old_then_new(repo: Repository, src: Path, clock: FakeClock, **old: bytes) -> Snapshot:
    """A backup of `old`, then 100 days later one of a small new file alone: every pack of
    the first is cold. Returns the first."""
    _only(src, **old)
    first = _backup(repo, src)
    clock.advance(100 * 86400)
    _only(src, z=os.urandom(20_000))
    _backup(repo, src)
    return first


def test_a_restore_that_opened_the_repository_before_the_mark_reads_warm_copies(
    tmp_path: Path, archive: tuple[LocalArchiveBackend, FakeClock]
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    _only(src, old=os.urandom(150_000), shared=os.urandom(30_000))
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        _backup(repo, src)
        (src / "old").unlink()
        clock.advance(100 * 86400)
        new = _backup(repo, src)
        with Repository.open(b, PASSWORD, cache_root=tmp_path / "c2", clock=clock) as reader:
            report = tier(repo, _cold(clock), grace=timedelta(0))
            assert report.packs_mixed == 1 and report.packs_moved == 1
            # the reader's index predates the warm copy of shared; the restore syncs it
            assert not restore(reader, new, tmp_path / "r").errors
        assert tree_differences(src, _restored(tmp_path / "r", src)) == []


def test_prune_never_condemns_the_last_warm_copy_a_running_backup_used(
    tmp_path: Path, archive: tuple[LocalArchiveBackend, FakeClock]
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    x, y = os.urandom(60_000), os.urandom(150_000)
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        _only(src, x=x, y=y)
        first = _backup(repo, src)
        _only(src, y=y)
        _backup(repo, src)
        clock.advance(100 * 86400)
        _only(src, z=os.urandom(20_000))
        _backup(repo, src)
        assert tier(repo, _cold(clock), grace=timedelta(0)).packs_moved
        forget_ids(repo, [first.id])  # x now lives in an archived pack kept for y ...
        _only(src, x=x)
        again = _backup(repo, src)  # ... and, stored again, in a warm pack
        forget_ids(repo, [again.id])  # which nothing uses now
        # a backup running since before the prune deduplicates x against the warm pack
        with (
            Repository.open(b, PASSWORD, cache_root=tmp_path / "c2", clock=clock) as other,
            Lock(other, "backup"),
        ):
            clock.advance(1)
            prune(repo, grace=timedelta(0))  # condemns the warm pack; waits for the backup
            writer = BlobWriter(other)
            try:
                used = reachable(other, [again]).all()
                assert not any(writer.reserve(i) for i in used)
            finally:
                writer.close()
            clock.advance(1)
            late = other.read_snapshot(
                other.write_snapshot(replace(again, time=clock.now(), id=""))
            )
        clock.advance(1)
        pruned = prune(repo, grace=timedelta(0))
        assert pruned.packs_reindexed >= 1  # the warm pack stays: x has no other warm copy
        assert not restore(repo, late, tmp_path / "r").errors  # and no thaw is needed
        assert (_restored(tmp_path / "r", src) / "x").read_bytes() == x


def test_a_move_cut_short_is_recorded_and_finished_by_the_next_run(
    tmp_path: Path, archive: tuple[LocalArchiveBackend, FakeClock]
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        _old_then_new(
            repo, src, clock, a=os.urandom(100_000), b=os.urandom(100_000), c=os.urandom(100_000)
        )

        class DiesAfterOne:
            def archive_many(self, names: list[str]) -> None:
                b.archive(names[0])
                raise TransientStorageError("the connection dropped")

            def archive_states(self, names: list[str]) -> dict[str, str]:
                return {n: b.tier_state(n).value for n in names}

        with pytest.raises(TransientStorageError):
            tier(repo, _cold(clock), grace=timedelta(0), archive=DiesAfterOne())
        # every archived pack is in the cold set of a reader that opens the repository now
        with Repository.open(b, PASSWORD, cache_root=tmp_path / "c2", clock=clock) as fresh:
            archived = {n for n, s in _states(b).items() if s is TierState.ARCHIVED}
            assert len(archived) == 1
            assert {parse_pack_name(n)[1] for n in archived} <= fresh.index.cold  # type: ignore[index]
        # the next run finishes the move, even though nothing counts as cold any more
        report = tier(repo, lambda: lambda _s: False, grace=timedelta(0))
        assert report.packs_cold > 1
        states = _states(b)
        assert all(
            states[n] is TierState.ARCHIVED for r in repo.tier_records.values() for n in r.packs
        )
        assert not [r for r in repo.tier_records.values() if not r.moved]


def test_a_damaged_tier_record_is_reported_and_replaced(
    tmp_path: Path, archive: tuple[LocalArchiveBackend, FakeClock]
) -> None:
    b, clock = archive
    src = tmp_path / "src"
    src.mkdir()
    small = os.urandom(20_000)
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        _old_then_new(repo, src, clock, big=os.urandom(150_000), small=small)
        assert tier(repo, _cold(clock), grace=timedelta(0)).packs_moved
        (record,) = repo.tier_records
        archived = set(repo.tier_records[record].packs)
    damaged = tmp_path / "warm" / record
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    with Repository.open(b, PASSWORD, cache_root=tmp_path / "c3", clock=clock) as repo:
        assert record in repo.damaged_tier_records and not repo.index.cold
        report = check(repo)
        assert any(f"tier record {record} is damaged" in e for e in report.errors)
        # meanwhile a backup deduplicates small.bin against the archived pack (it counts
        # as warm); tiering copes and replaces the record from the archive's answers
        _only(src, small=small)
        _backup(repo, src)
        tier(repo, _cold(clock), grace=timedelta(0))
        assert not repo.damaged_tier_records
        moved = {p for r in repo.tier_records.values() if r.moved for p in r.packs}
        assert archived <= moved
        assert check(repo).ok


def test_tiering_on_s3_moves_packs_to_the_glacier_class(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    import boto3

    clock = FakeClock(T0)
    b = S3Backend(s3_bucket, "repo", archive_class="GLACIER")
    src = tmp_path / "src"
    src.mkdir()
    old_only = os.urandom(150_000)
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        old = _old_then_new(repo, src, clock, old=old_only)
        new = repo.snapshots()[-1]
        report = tier(repo, _cold(clock), grace=timedelta(0))
        assert report.packs_moved >= 1
        moved = {p for r in repo.tier_records.values() for p in r.packs}
        raw = boto3.client("s3", endpoint_url=s3_endpoint)
        try:
            for name in moved:  # the objects really changed storage class
                head = raw.head_object(Bucket=s3_bucket, Key=f"repo/{name}")
                assert head["StorageClass"] == "GLACIER", name
            warm = [i.name for i in b.list("data/") if i.name not in moved]
            assert warm
            for name in warm:
                head = raw.head_object(Bucket=s3_bucket, Key=f"repo/{name}")
                assert head.get("StorageClass") in (None, "STANDARD")
        finally:
            raw.close()
        assert not restore(repo, new, tmp_path / "r-new").errors  # warm: no thaw
        assert restore(repo, old, tmp_path / "r-cold").errors  # cold: a thaw first
        for name in moved:
            b.thaw(name, days=1)  # RestoreObject; moto restores at once
        assert not restore(repo, old, tmp_path / "r-old").errors
        assert (_restored(tmp_path / "r-old", src) / "old").read_bytes() == old_only
