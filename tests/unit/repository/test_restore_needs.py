"""What a restore needs: the packs the cloud grants a restore token are enough for the
restore (and for walking the restore point), and nothing of other backups is in them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rekindle.core.errors import UsageError
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.reach import restore_needs
from rekindle.repository.repo import Repository, parse_pack_name
from rekindle.repository.restore import RestoreOptions, restore
from rekindle.store.memory import MemoryBackend
from rekindle.store.wrapper import WrappingBackend
from tests.helpers import PASSWORD, make_repo, tree_differences


class GrantedOnly(WrappingBackend):
    """Refuses pack reads outside a grant, like a storage node does for a restore token."""

    def __init__(self, inner: MemoryBackend, grant: set[str]) -> None:
        super().__init__(inner)
        self.grant = grant
        self.read_packs: set[str] = set()

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if parse_pack_name(name) is not None:
            if name not in self.grant:
                raise PermissionError(f"{name} is not granted")
            self.read_packs.add(name)
        return super().read(name, offset, length)


def _two_backups(tmp_path: Path) -> tuple[MemoryBackend, str, str, Path]:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.bin").write_bytes(os.urandom(400_000))
    (src / "b.bin").write_bytes(os.urandom(400_000))
    (src / "empty").write_bytes(b"")
    backend = MemoryBackend()
    with make_repo(backend, tmp_path / "cache") as repo:
        # b.bin first on its own, so that its data sits in packs apart from docs/a.bin
        backup(repo, BackupOptions(paths=["b.bin"], cwd=str(src)))
        first = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot.id
        (src / "later.bin").write_bytes(os.urandom(400_000))
        second = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot.id
    (src / "later.bin").unlink()
    return backend, first, second, src


def test_a_whole_restore_reads_only_granted_packs(tmp_path: Path) -> None:
    backend, first, second, src = _two_backups(tmp_path)
    with Repository.open(backend, PASSWORD, cache_root=tmp_path / "c1") as repo:
        needs = restore_needs(repo, repo.read_snapshot(first), [])
        later = restore_needs(repo, repo.read_snapshot(second), ["later.bin"])
    assert needs.files == 3 and needs.bytes == 800_000
    assert needs.packs == sorted(set(needs.packs))
    data_packs = {n for n in needs.packs if n.startswith("data/")}
    assert data_packs and not data_packs & set(later.packs)  # the later file is not granted

    guarded = GrantedOnly(backend, set(needs.packs))
    with Repository.open(guarded, PASSWORD, cache_root=tmp_path / "c2") as repo:
        restore(repo, repo.read_snapshot(first), tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []
    assert data_packs <= guarded.read_packs


def test_a_partial_restore_is_granted_only_the_chosen_files(tmp_path: Path) -> None:
    backend, first, _second, src = _two_backups(tmp_path)
    with Repository.open(backend, PASSWORD, cache_root=tmp_path / "c1") as repo:
        snap = repo.read_snapshot(first)
        whole = restore_needs(repo, snap, [])
        docs = restore_needs(repo, snap, ["/docs/"])
    assert (docs.files, docs.bytes) == (1, 400_000)
    assert set(docs.packs) < set(whole.packs)
    guarded = GrantedOnly(backend, set(docs.packs))
    with Repository.open(guarded, PASSWORD, cache_root=tmp_path / "c2") as repo:
        snap = repo.read_snapshot(first)
        ok = restore(repo, snap, tmp_path / "out", RestoreOptions(includes=["docs"]))
        refused = restore(repo, snap, tmp_path / "out2", RestoreOptions(includes=["b.bin"]))
    assert ok.errors == [] and ok.files == 1
    assert [(path, "not granted" in why) for path, why in refused.errors] == [("b.bin", True)]
    assert (tmp_path / "out" / "docs" / "a.bin").read_bytes() == (
        src / "docs" / "a.bin"
    ).read_bytes()


def test_a_path_the_restore_point_does_not_hold_is_refused(tmp_path: Path) -> None:
    backend, first, _second, _src = _two_backups(tmp_path)
    with Repository.open(backend, PASSWORD, cache_root=tmp_path / "c1") as repo:
        snap = repo.read_snapshot(first)
        with pytest.raises(UsageError, match="does not hold /nope, /docs/x"):
            restore_needs(repo, snap, ["nope", "docs/x", "docs"])
        with pytest.raises(UsageError, match=r"'\.\.'"):
            restore_needs(repo, snap, ["../etc"])
