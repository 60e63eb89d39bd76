"""Backups from a read-only btrfs snapshot, on a real btrfs filesystem on a loop device."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rekindle.agent.snapshots import SNAPSHOT_NAME, freeze, mount_fstype
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.restore import restore
from rekindle.store.memory import MemoryBackend
from tests.helpers import make_repo


@pytest.fixture
def btrfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a btrfs loop device needs root")
    if not shutil.which("mkfs.btrfs") or not shutil.which("btrfs"):
        pytest.skip("btrfs-progs is not installed (apt-get install btrfs-progs)")
    image, mnt = tmp_path / "btrfs.img", tmp_path / "mnt"
    with image.open("wb") as f:
        f.truncate(256 * 1024 * 1024)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], check=False, capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_backup_reads_a_frozen_snapshot_and_records_the_original_paths(
    btrfs: Path, tmp_path: Path
) -> None:
    subprocess.run(
        ["btrfs", "subvolume", "create", str(btrfs / "vol")], check=True, capture_output=True
    )
    data = btrfs / "vol" / "data"
    data.mkdir()
    (data / "ledger.txt").write_text("balance: 100\n")
    (data / "big.bin").write_bytes(os.urandom(600_000))
    assert mount_fstype(str(data))[1] == "btrfs"

    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        with freeze([str(data)]) as frozen:
            snap_dir = btrfs / "vol" / SNAPSHOT_NAME
            assert frozen.read_from == {str(data): str(snap_dir / "data")}
            assert any("btrfs snapshot" in n for n in frozen.notes)
            # the live file changes after the snapshot was taken: the backup must not see it
            (data / "ledger.txt").write_text("balance: 0 (half-written)\n")
            with pytest.raises(OSError):
                (snap_dir / "data" / "new").write_text("x")  # read-only snapshot
            result = backup(repo, BackupOptions(paths=[str(data)], read_from=frozen.read_from))
        assert not (btrfs / "vol" / SNAPSHOT_NAME).exists()  # removed afterwards
        assert result.snapshot.paths == [str(data)]
        restore(repo, result.snapshot, tmp_path / "out")
    got = tmp_path / "out" / str(data).lstrip("/")
    assert (got / "ledger.txt").read_text() == "balance: 100\n"
    assert (got / "big.bin").read_bytes() == (data / "big.bin").read_bytes()


def test_paths_off_btrfs_are_read_live(tmp_path: Path) -> None:
    if mount_fstype(str(tmp_path))[1] == "btrfs":
        pytest.skip("the temporary directory is on btrfs itself")
    (tmp_path / "live").mkdir()
    with freeze([str(tmp_path / "live")]) as frozen:
        assert frozen.read_from == {}
        assert any("reading live files" in n for n in frozen.notes)


def test_a_stale_snapshot_left_by_a_killed_backup_is_replaced(btrfs: Path) -> None:
    subprocess.run(
        ["btrfs", "subvolume", "create", str(btrfs / "vol")], check=True, capture_output=True
    )
    (btrfs / "vol" / "f").write_text("new\n")
    stale = btrfs / "vol" / SNAPSHOT_NAME
    subprocess.run(
        ["btrfs", "subvolume", "snapshot", "-r", str(btrfs / "vol"), str(stale)],
        check=True,
        capture_output=True,
    )
    (btrfs / "vol" / "f").write_text("newer\n")
    with freeze([str(btrfs / "vol")]) as frozen:
        assert Path(frozen.read_from[str(btrfs / "vol")], "f").read_text() == "newer\n"
    assert not stale.exists()


def test_a_users_subvolume_named_like_the_snapshot_is_left_alone(btrfs: Path) -> None:
    subprocess.run(
        ["btrfs", "subvolume", "create", str(btrfs / "vol")], check=True, capture_output=True
    )
    mine = btrfs / "vol" / SNAPSHOT_NAME
    subprocess.run(["btrfs", "subvolume", "create", str(mine)], check=True, capture_output=True)
    (mine / "precious").write_text("keep me\n")
    with freeze([str(btrfs / "vol")]) as frozen:
        assert frozen.read_from == {}  # no snapshot: read live, and say why
        assert any("not touching it" in n for n in frozen.notes)
    assert (mine / "precious").read_text() == "keep me\n"
