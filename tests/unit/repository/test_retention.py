"""Retention rules on synthetic restore points (no I/O), and forget on a real repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rekindle.core.errors import UsageError
from rekindle.format.snapshot import Snapshot
from rekindle.repository.retention import (
    DEFAULT_POLICY,
    RetentionPolicy,
    apply_retention,
    parse_duration,
)

START = datetime(2025, 1, 1, tzinfo=UTC)  # a Wednesday


def snap(t: datetime, n: int, tags: list[str] | None = None) -> Snapshot:
    return Snapshot(
        time=t, host="h", paths=["/d"], tree=[], program="t", tags=tags or [], id=f"{n:064x}"
    )


def daily(days: int, per_day: int = 1) -> list[Snapshot]:
    return [
        snap(START + timedelta(days=d, hours=h * 24 // per_day), d * per_day + h)
        for d in range(days)
        for h in range(per_day)
    ]


def kept_times(snaps: list[Snapshot], policy: RetentionPolicy) -> list[datetime]:
    return sorted(s.time for s in apply_retention(snaps, policy).keep)


def test_keep_daily_keeps_the_latest_of_each_of_the_last_days() -> None:
    snaps = daily(10, per_day=3)  # at 00:00, 08:00, 16:00
    kept = kept_times(snaps, RetentionPolicy(keep_daily=4))
    assert kept == [START + timedelta(days=d, hours=16) for d in range(6, 10)]


def test_weeks_end_on_sunday_midnight() -> None:
    snaps = daily(21)  # Wed 1 Jan .. Tue 21 Jan 2025
    kept = kept_times(snaps, RetentionPolicy(keep_weekly=3))
    # Newest of each ISO week: Tue 21 (week 4 so far), Sun 19, Sun 12.
    assert kept == [datetime(2025, 1, d, tzinfo=UTC) for d in (12, 19, 21)]
    assert all(t.weekday() in (6, 1) for t in kept)


def test_monthly_and_yearly() -> None:
    snaps = daily(800)
    kept = kept_times(snaps, RetentionPolicy(keep_monthly=3, keep_yearly=2))
    last = snaps[-1].time
    assert last == datetime(2027, 3, 11, tzinfo=UTC)
    # Months: March (the newest), February, January; years: 2027 (the newest), 2026.
    assert kept == [
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 31, tzinfo=UTC),
        datetime(2027, 2, 28, tzinfo=UTC),
        last,
    ]


def test_within_last_and_tags() -> None:
    snaps = daily(30)
    snaps[3].tags.append("keep-me")
    kept = kept_times(
        snaps,
        RetentionPolicy(
            keep_within=timedelta(days=5), keep_last=2, keep_tags=frozenset({"keep-me"})
        ),
    )
    assert kept == [snaps[3].time] + [s.time for s in snaps[-6:]]


def test_latest_is_always_kept_and_empty_policy_detected() -> None:
    snaps = daily(5)
    res = apply_retention(snaps, RetentionPolicy(keep_tags=frozenset({"x"})))
    assert [s.id for s in res.keep] == [snaps[-1].id]
    assert RetentionPolicy().is_empty()
    assert not DEFAULT_POLICY.is_empty()
    with pytest.raises(UsageError):
        RetentionPolicy(keep_daily=-1)


def test_default_policy_over_two_years_of_daily_backups() -> None:
    snaps = daily(730)
    res = apply_retention(snaps, DEFAULT_POLICY)
    newest = snaps[-1].time
    kept = {s.time for s in res.keep}
    # Everything of the last 60 days.
    assert {s.time for s in snaps if s.time >= newest - timedelta(days=60)} <= kept
    # Older than that: only newest-of-week/month/year survivors.
    old = sorted(t for t in kept if t < newest - timedelta(days=60))
    assert all(t.weekday() == 6 or (t + timedelta(days=1)).day == 1 for t in old)
    assert len(kept) == len(set(kept))
    assert len(res.keep) + len(res.remove) == len(snaps)


@given(
    st.lists(st.integers(0, 3 * 365 * 24), min_size=1, max_size=60, unique=True),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
)
def test_partition_and_latest_property(hours: list[int], last: int, d: int, w: int) -> None:
    snaps = [snap(START + timedelta(hours=h), i) for i, h in enumerate(hours)]
    res = apply_retention(snaps, RetentionPolicy(keep_last=last, keep_daily=d, keep_weekly=w))
    assert {s.id for s in res.keep} | {s.id for s in res.remove} == {s.id for s in snaps}
    assert not {s.id for s in res.keep} & {s.id for s in res.remove}
    assert max(snaps, key=lambda s: s.time).id in {s.id for s in res.keep}
    assert len(res.keep) <= 1 + last + d + w


def test_parse_duration() -> None:
    assert parse_duration("60d") == timedelta(days=60)
    assert parse_duration("1y2m") == timedelta(days=365 + 60)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("", "5", "d", "5x", "-1d"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_forget_applies_per_backup_set(tmp_path: Path) -> None:
    from rekindle.repository.backup import BackupOptions, backup
    from rekindle.repository.forget import forget
    from rekindle.store.memory import MemoryBackend
    from tests.helpers import make_repo

    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "f").write_text(d.name)
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        for _ in range(3):
            backup(repo, BackupOptions(paths=[str(a)]))
            backup(repo, BackupOptions(paths=[str(b)]))
        dry = forget(repo, RetentionPolicy(keep_last=1), dry_run=True)
        assert len(dry.remove) == 4 and len(repo.snapshot_ids()) == 6
        res = forget(repo, RetentionPolicy(keep_last=1))
        assert len(res.keep) == 2
        left = repo.snapshots()
        assert sorted(s.paths[0] for s in left) == sorted([str(a), str(b)])
