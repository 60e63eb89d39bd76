"""The engine with data packs in an archive tier (store/tier.py, local archive): check reads
around them, restores need a thaw, prune keeps an archived pack it would repack and deletes
an archived pack nothing uses, and the repository stays whole."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rekindle.core.clock import FakeClock
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.check import check
from rekindle.repository.forget import forget_ids
from rekindle.repository.prune import prune
from rekindle.repository.restore import restore
from rekindle.store.tier import LocalArchiveBackend, TierState
from tests.helpers import make_repo, tree_differences


def _data_packs(b: LocalArchiveBackend) -> set[str]:
    return {i.name for i in b.list("data/")}


def test_archived_packs_check_restore_and_prune(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    b = LocalArchiveBackend(tmp_path / "warm", tmp_path / "archive", clock=clock)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(200_000))
    (src / "small.bin").write_bytes(os.urandom(20_000))
    with make_repo(b, tmp_path / "cache", clock=clock) as repo:
        old = backup(repo, BackupOptions(paths=[str(src)], estimate=False, parent=None))
        old_packs = _data_packs(b)
        big = (src / "big.bin").read_bytes()
        (src / "big.bin").unlink()
        (src / "new.bin").write_bytes(os.urandom(30_000))
        clock.advance(86400)
        new = backup(repo, BackupOptions(paths=[str(src)], estimate=False, parent=None))
        for name in old_packs:  # what the tiering job will do with cold-only data
            b.archive(name)

        report = check(repo)
        assert report.ok, report.errors
        assert report.packs_archived == len(old_packs)
        assert any("in archive storage: not read" in w for w in report.warnings)
        assert check(repo, read_data=True).ok

        # the old restore point needs a thaw; once thawed it restores byte for byte
        for name in old_packs:
            b.thaw(name, days=1)
            assert b.tier_state(name) is TierState.THAWED
        restore(repo, repo.read_snapshot(old.snapshot.id), tmp_path / "r1")
        assert (tmp_path / "r1" / str(src).lstrip("/") / "big.bin").read_bytes() == big
        for name in old_packs:
            b.archive(name)

        # forget the old point: the archived pack now holds a little live data (small.bin,
        # which the new point shares) and much dead (big.bin): prune would repack it, but
        # it cannot be read, so it is kept as it is
        forget_ids(repo, [old.snapshot.id])
        pruned = prune(repo, grace=timedelta(0))
        assert pruned.packs_repacked == 0  # (the old tree pack, unused, is deleted)
        assert all(b.tier_state(n) is TierState.ARCHIVED for n in old_packs)
        assert check(repo).ok

        # the new point shares small.bin with the archived pack: after a thaw it restores
        for name in old_packs:
            b.thaw(name, days=1)
        restore(repo, repo.read_snapshot(new.snapshot.id), tmp_path / "r2")
        assert tree_differences(src, tmp_path / "r2" / str(src).lstrip("/")) == []
        for name in old_packs:
            b.archive(name)

        # nothing uses an archived pack any more: prune deletes it (from the archive too)
        (src / "small.bin").unlink()
        clock.advance(86400)
        newest = backup(repo, BackupOptions(paths=[str(src)], estimate=False, parent=None))
        forget_ids(repo, [new.snapshot.id])
        pruned = prune(repo, grace=timedelta(0))
        assert pruned.packs_deleted >= len(old_packs)
        assert not any(b.cold.exists(n) for n in old_packs)
        assert check(repo, read_data=True).ok
        restore(repo, repo.read_snapshot(newest.snapshot.id), tmp_path / "r3")
        assert tree_differences(src, tmp_path / "r3" / str(src).lstrip("/")) == []
