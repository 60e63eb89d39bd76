"""Archive tiers: S3 storage classes against moto in server mode (objects really get the
GLACIER class, reads before a thaw fail as on S3, RestoreObject makes them readable) and the
local archive directory with a thaw delay on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from rekindle.core.clock import FakeClock
from rekindle.core.errors import ArchivedError, ObjectNotFoundError
from rekindle.store.s3 import S3Backend
from rekindle.store.tier import Archive, LocalArchiveBackend, TierState

PACK = "data/ab/ab" + "0" * 62
OTHER = "data/cd/cd" + "1" * 62


def test_s3_archive_class_thaw_and_reads(s3_bucket: str, s3_endpoint: str) -> None:
    b = S3Backend(s3_bucket, "org", archive_class="GLACIER")
    assert isinstance(b, Archive)
    b.write(PACK, b"cold bytes")
    b.write(OTHER, b"warm bytes")
    assert b.tier_state(PACK) is TierState.WARM
    b.archive(PACK)
    b.archive(PACK)  # idempotent
    raw = boto3.client("s3", endpoint_url=s3_endpoint)
    head = raw.head_object(Bucket=s3_bucket, Key=f"org/{PACK}")
    assert head["StorageClass"] == "GLACIER"
    assert raw.head_object(Bucket=s3_bucket, Key=f"org/{OTHER}").get("StorageClass") in (
        None,
        "STANDARD",
    )
    assert b.tier_state(PACK) is TierState.ARCHIVED
    with pytest.raises(ArchivedError, match="needs a defreeze"):
        b.read(PACK)
    with pytest.raises(ArchivedError):
        b.read(PACK, 2, 4)
    # listing, stat and the other objects are unaffected
    assert {i.name for i in b.list("data/")} == {PACK, OTHER}
    assert b.stat(PACK).size == len(b"cold bytes")
    assert b.read(OTHER) == b"warm bytes"
    b.thaw(PACK, days=3)
    b.thaw(PACK, days=3)  # a thaw under way (or done) is not started twice
    assert b.tier_state(PACK) is TierState.THAWED  # moto thaws at once
    assert b.read(PACK) == b"cold bytes"
    assert b.read(PACK, 5, 5) == b"bytes"
    b.delete(PACK)
    with pytest.raises(ObjectNotFoundError):
        b.tier_state(PACK)
    raw.close()


def test_s3_deep_archive_and_a_bad_class(s3_bucket: str) -> None:
    b = S3Backend(s3_bucket, archive_class="DEEP_ARCHIVE")
    b.write(PACK, b"x")
    b.archive(PACK)
    with pytest.raises(ArchivedError):
        b.read(PACK)
    from rekindle.core.errors import UsageError

    with pytest.raises(UsageError, match="archive class"):
        S3Backend(s3_bucket, archive_class="STANDARD_IA")


def _local(tmp_path: Path, clock: FakeClock, delay_h: float = 4) -> LocalArchiveBackend:
    return LocalArchiveBackend(
        tmp_path / "warm",
        tmp_path / "archive",
        thaw_delay=timedelta(hours=delay_h),
        clock=clock,
    )


def test_local_archive_with_a_thaw_delay(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 5, 1, tzinfo=UTC))
    b = _local(tmp_path, clock)
    b.write(PACK, b"cold bytes")
    b.write(OTHER, b"warm bytes")
    b.archive(PACK)
    assert not (tmp_path / "warm" / PACK).exists()  # moved, not copied
    assert (tmp_path / "archive" / PACK).read_bytes() == b"cold bytes"
    assert b.tier_state(PACK) is TierState.ARCHIVED
    with pytest.raises(ArchivedError, match="needs a defreeze"):
        b.read(PACK)
    assert {i.name for i in b.list("data/")} == {PACK, OTHER}
    assert b.stat(PACK).size == 10 and b.exists(PACK)
    b.thaw(PACK, days=2)
    assert b.tier_state(PACK) is TierState.THAWING
    clock.advance(3 * 3600)
    with pytest.raises(ArchivedError):
        b.read(PACK)
    clock.advance(3600)
    assert b.tier_state(PACK) is TierState.THAWED
    assert b.read(PACK) == b"cold bytes" and b.read(PACK, 5) == b"bytes"
    # a second backend on the same directories (a restarted node) sees the same
    again = _local(tmp_path, clock)
    assert again.tier_state(PACK) is TierState.THAWED
    # the thawed copy goes after its days; the archived one stays
    clock.advance(2 * 86400)
    assert b.tier_state(PACK) is TierState.ARCHIVED
    assert not (tmp_path / "warm" / PACK).exists()
    with pytest.raises(ArchivedError):
        b.read(PACK)
    b.delete(PACK)
    assert not b.exists(PACK)
    with pytest.raises(ObjectNotFoundError):
        b.delete(PACK)


def test_local_archive_move_cut_short_keeps_the_warm_copy(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 5, 1, tzinfo=UTC))
    b = _local(tmp_path, clock, delay_h=0)
    b.write(PACK, b"data")
    # a crash after the copy to the archive, before the warm copy went
    b.cold.write(PACK, b"data")
    assert b.tier_state(PACK) is TierState.WARM and b.read(PACK) == b"data"
    b.archive(PACK)  # finishes the move
    assert b.tier_state(PACK) is TierState.ARCHIVED
    b.thaw(PACK, days=1)  # no delay: thawed at once
    assert b.read(PACK) == b"data"
    with pytest.raises(ObjectNotFoundError):
        b.archive("data/ef/ef" + "2" * 62)
