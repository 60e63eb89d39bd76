"""Damage is named precisely, never returned as data, and recovered from where possible:
a flipped bit, a truncated pack, a deleted pack, a damaged index file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from rekindle.format.registry import BlobKind, NodeType
from rekindle.format.tree import Node
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.check import check
from rekindle.repository.reach import walk_snapshot
from rekindle.repository.repair import repair_index
from rekindle.repository.repo import Repository, pack_name
from rekindle.repository.restore import restore
from rekindle.store.local import LocalBackend
from tests.helpers import PASSWORD, make_repo, tree_differences


def _source(root: Path) -> Path:
    rng = random.Random(5)
    src = root / "src"
    src.mkdir()
    for i in range(12):
        (src / f"file{i:02d}.bin").write_bytes(rng.randbytes(120_000))
    (src / "same-as-0.bin").write_bytes((src / "file00.bin").read_bytes())
    return src


@pytest.fixture
def repo_with_backup(tmp_path: Path) -> tuple[Path, Path, str]:
    src = _source(tmp_path)
    with make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache") as repo:
        sid = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot.id
    return tmp_path, src, sid


def _open(tmp: Path) -> Repository:
    return Repository.open(LocalBackend(tmp / "repo"), PASSWORD, cache_root=tmp / "cache")


def _data_packs(tmp: Path) -> list[Path]:
    return sorted(
        (p for p in (tmp / "repo" / "data").rglob("*") if p.is_file()), key=lambda p: p.name
    )


def _first_data_pack(tmp: Path, sid: str) -> tuple[Path, set[str]]:
    """The first data pack, and which files of the restore point use a blob stored in it."""
    victim = _data_packs(tmp)[0]
    pid = bytes.fromhex(victim.name)
    with _open(tmp) as repo:
        ids = {e.id for p, e in repo.index.entries() if p == pid}
        users: set[str] = set()

        def visit(path: str, node: Node) -> None:
            if node.type is NodeType.FILE and ids.intersection(
                c for c in node.content if isinstance(c, bytes)
            ):
                users.add(path)

        walk_snapshot(repo, repo.read_snapshot(sid), visit)
    assert users
    return victim, users


def test_flipped_bit_is_named_restore_saves_the_rest_and_rebackup_heals(
    repo_with_backup: tuple[Path, Path, str],
) -> None:
    tmp, src, sid = repo_with_backup
    victim, hit = _first_data_pack(tmp, sid)
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x10
    victim.write_bytes(bytes(data))

    with _open(tmp) as repo:
        report = check(repo, read_data=True)
        assert not report.ok
        assert report.damaged_packs == {pack_name_of(victim)}
        assert {p for s, p in report.damaged_files} <= hit
        assert report.damaged_files
        assert all(s == sid for s, _ in report.damaged_files)

        stats = restore(repo, repo.read_snapshot(sid), tmp / "out")
    bad = {p for p, _ in stats.errors}
    assert bad and bad <= hit
    for f in src.iterdir():
        if f.name not in bad:
            assert (tmp / "out" / f.name).read_bytes() == f.read_bytes(), f.name

    # Repair drops the damaged blobs from the index; the next backup stores them anew and
    # the old restore point becomes whole again.
    with _open(tmp) as repo:
        rep = repair_index(repo, read_data=True)
        assert rep.blobs_dropped >= 1
        backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert check(repo, read_data=True).ok is False  # the damaged pack itself remains
        healed = restore(repo, repo.read_snapshot(sid), tmp / "healed")
    assert healed.errors == []
    assert tree_differences(src, tmp / "healed") == []


def pack_name_of(path: Path) -> str:
    return pack_name(BlobKind.DATA, bytes.fromhex(path.name))


def test_truncated_pack_is_found_without_reading_data(
    repo_with_backup: tuple[Path, Path, str],
) -> None:
    tmp, _, _sid = repo_with_backup
    victim = _data_packs(tmp)[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    with _open(tmp) as repo:
        report = check(repo, read_data=False)
    assert not report.ok
    assert pack_name_of(victim) in report.damaged_packs
    assert report.damaged_files


def test_deleted_pack_is_named_missing_and_its_files_listed(
    repo_with_backup: tuple[Path, Path, str],
) -> None:
    tmp, _, sid = repo_with_backup
    victim, hit = _first_data_pack(tmp, sid)
    victim.unlink()
    with _open(tmp) as repo:
        report = check(repo)
        assert any("missing" in e and pack_name_of(victim) in e for e in report.errors)
        assert {p for _, p in report.damaged_files} == hit
        # Repair forgets the lost pack: the index no longer promises its blobs.
        repair_index(repo)
        after = check(repo)
        assert not any("missing" in e for e in after.errors)
        assert {p for _, p in after.damaged_files} == hit


def test_damaged_index_file_is_named_and_repair_recovers_everything(
    repo_with_backup: tuple[Path, Path, str],
) -> None:
    tmp, src, sid = repo_with_backup
    index_files = sorted((tmp / "repo" / "index").iterdir())
    assert index_files
    victim = index_files[0]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x01
    victim.write_bytes(bytes(data))
    # A fresh cache, as on another machine: the damaged file cannot be loaded.
    cache2 = tmp / "cache2"
    with Repository.open(LocalBackend(tmp / "repo"), PASSWORD, cache_root=cache2) as repo:
        report = check(repo)
        assert not report.ok
        assert any(victim.name in e and "damaged" in e for e in report.errors)
        rep = repair_index(repo)
        assert rep.packs_indexed == len(list((tmp / "repo").glob("*/*/*")))
        assert check(repo, read_data=True).ok
        stats = restore(repo, repo.read_snapshot(sid), tmp / "out")
    assert stats.errors == []
    assert tree_differences(src, tmp / "out") == []
    assert not victim.exists()


def test_wrong_password_and_tampered_config_are_refused(tmp_path: Path) -> None:
    from rekindle.core.errors import IntegrityError, WrongPasswordError
    from rekindle.repository.repo import Secret

    make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache").close()
    with pytest.raises(WrongPasswordError):
        Repository.open(LocalBackend(tmp_path / "repo"), Secret(passphrase=b"nope"))
    cfg = tmp_path / "repo" / "config"
    # An attacker lowers the pack size (or any setting): the MAC no longer matches.
    text = cfg.read_text()
    assert '"pack_size": 262144' in text
    cfg.write_text(text.replace('"pack_size": 262144', '"pack_size": 262145'))
    with pytest.raises(IntegrityError):
        Repository.open(LocalBackend(tmp_path / "repo"), PASSWORD)
    assert os.path.exists(cfg)
