"""A directory found exactly as at the last backup keeps its tree from the files cache
instead of being encoded again; any change to it or below it is still seen.

The strongest check: the restore point's trees equal those a backup without a files cache
writes for the same files (a fresh encoding)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import msgpack
import pytest

from rekindle.repository import backup as backup_module
from rekindle.repository.backup import BackupOptions, BackupResult, backup
from rekindle.repository.check import check
from rekindle.repository.forget import forget_ids
from rekindle.repository.prune import prune
from rekindle.repository.repo import Repository
from rekindle.repository.restore import restore
from rekindle.store.memory import MemoryBackend
from tests.helpers import PASSWORD, growing_file, make_repo, tree_differences

# Directories of the tree below that hold something (the empty one is never recorded).
DIRS_WITH_ENTRIES = 4


def build(src: Path) -> None:
    (src / "a" / "deep").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "empty").mkdir()
    for d in (src, src / "a", src / "a" / "deep", src / "b"):
        for i in range(3):
            (d / f"f{i}").write_bytes(os.urandom(2000) * (i + 1))
    (src / "a" / "link").symlink_to("deep/f0")
    os.link(src / "b" / "f0", src / "b" / "hard")
    os.setxattr(src / "a" / "f1", "user.tag", b"v")
    os.setxattr(src / "b", "user.dir", b"d")
    (src / "a" / "deep" / "zero").write_bytes(b"")


def run(repo: Repository, src: Path, *paths: str, settle_s: float = 0.0) -> BackupResult:
    # settle_s 0: the trees of entries made a moment ago are recorded too (see
    # test_entries_changed_just_before_the_walk_are_not_recorded)
    opts = BackupOptions(paths=list(paths or ["."]), cwd=str(src), settle_s=settle_s)
    return backup(repo, opts)


def fresh_trees(backend: MemoryBackend, cache: Path, src: Path) -> list[bytes]:
    """The root tree ids of a backup that encodes every tree (a new, empty files cache)."""
    with Repository.open(backend, PASSWORD, cache_root=cache) as repo:
        return run(repo, src).snapshot.tree


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    build(s)
    return s


def test_unchanged_directories_keep_their_trees(tmp_path: Path, src: Path) -> None:
    backend = MemoryBackend()
    with make_repo(backend, tmp_path / "cache") as repo:
        first = run(repo, src)
        assert first.stats.dirs_unmodified == 0  # nothing recorded yet
        second = run(repo, src)
        assert second.stats.dirs_unmodified == DIRS_WITH_ENTRIES
        assert second.stats.files_unmodified == 14
        assert second.snapshot.tree == first.snapshot.tree
        third = run(repo, src)  # a reused tree is recorded again for the next backup
        assert third.stats.dirs_unmodified == DIRS_WITH_ENTRIES
        restore(repo, third.snapshot, tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []
    assert fresh_trees(backend, tmp_path / "fresh", src) == third.snapshot.tree


def _chmod_file(src: Path) -> None:
    (src / "a" / "deep" / "f1").chmod(0o600)


def _chmod_dir(src: Path) -> None:
    (src / "a" / "deep").chmod(0o700)


def _rewrite_deep_file(src: Path) -> None:
    (src / "a" / "deep" / "f2").write_bytes(b"new content")


def _add_file(src: Path) -> None:
    (src / "b" / "added").write_bytes(b"added")


def _remove_file(src: Path) -> None:
    (src / "a" / "deep" / "zero").unlink()


def _rename_file(src: Path) -> None:
    (src / "b" / "f1").rename(src / "b" / "renamed")


def _retarget_symlink(src: Path) -> None:
    (src / "a" / "link").unlink()
    (src / "a" / "link").symlink_to("elsewhere")


def _xattr_on_dir(src: Path) -> None:
    os.setxattr(src / "a" / "deep", "user.new", b"x")


def _file_into_empty_dir(src: Path) -> None:
    (src / "empty" / "now").write_bytes(b"not empty")


def _dir_replaces_file(src: Path) -> None:
    (src / "b" / "f2").unlink()
    (src / "b" / "f2").mkdir()


def _unlink_hard_link(src: Path) -> None:
    (src / "b" / "hard").unlink()  # f0's link count drops: its ctime moves


def _touch_dir_times(src: Path) -> None:
    os.utime(src / "b", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


@pytest.mark.parametrize(
    "change",
    [
        _chmod_file,
        _chmod_dir,
        _rewrite_deep_file,
        _add_file,
        _remove_file,
        _rename_file,
        _retarget_symlink,
        _xattr_on_dir,
        _file_into_empty_dir,
        _dir_replaces_file,
        _unlink_hard_link,
        _touch_dir_times,
    ],
)
def test_every_change_is_seen_through_reused_trees(
    tmp_path: Path, src: Path, change: Callable[[Path], None]
) -> None:
    backend = MemoryBackend()
    with make_repo(backend, tmp_path / "cache") as repo:
        run(repo, src)
        before = run(repo, src)
        assert before.stats.dirs_unmodified == DIRS_WITH_ENTRIES
        change(src)
        after = run(repo, src)
        assert after.snapshot.tree != before.snapshot.tree
        assert after.stats.dirs_unmodified < DIRS_WITH_ENTRIES
        restore(repo, after.snapshot, tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []
    assert fresh_trees(backend, tmp_path / "fresh", src) == after.snapshot.tree


def test_a_renamed_user_stops_every_reuse(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = MemoryBackend()
    uid = os.getuid()
    real = backup_module._user_name

    with make_repo(backend, tmp_path / "cache") as repo:
        run(repo, src)
        assert run(repo, src).stats.dirs_unmodified == DIRS_WITH_ENTRIES

        def renamed(u: int) -> str | None:
            return "renamed-user" if u == uid else real(u)

        monkeypatch.setattr(backup_module, "_user_name", renamed)
        after = run(repo, src)
        assert after.stats.dirs_unmodified == 0
        nodes = repo.load_tree(after.snapshot.tree)
        assert {n.user for n in nodes} == {"renamed-user"}
        # the new name is what the next backup checks against: reuse resumes
        assert run(repo, src).stats.dirs_unmodified == DIRS_WITH_ENTRIES


def test_a_tree_pruned_away_is_written_again(tmp_path: Path) -> None:
    """Empty files need no chunk, so only the trees tell whether the repository still holds
    what the files cache recorded; after a prune removed them, they are stored again."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for d in (src, src / "sub"):
        for i in range(3):
            (d / f"empty{i}").write_bytes(b"")
    backend = MemoryBackend()
    with make_repo(backend, tmp_path / "cache") as repo:
        run(repo, src)
        second = run(repo, src)
        assert second.stats.dirs_unmodified == 2
        forget_ids(repo, list(repo.snapshot_ids()))
        prune(repo, grace=timedelta(0))
        third = run(repo, src)
        assert third.stats.dirs_unmodified == 0
        assert third.snapshot.tree == second.snapshot.tree
        report = check(repo, read_data=True)
        assert report.ok, report
        restore(repo, third.snapshot, tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []


def test_a_file_flagged_changed_while_read_then_deleted_leaves_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that changed while read is in the tree but not in the files cache: once it is
    gone, the directory's other entries all match, yet its tree must not be reused."""
    src = tmp_path / "src"
    read_then_append = growing_file(src)

    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        monkeypatch.setattr(os, "read", read_then_append)
        first = run(repo, src)
        monkeypatch.undo()
        assert first.stats.changed_while_read == [str(src / "growing.log")]
        (src / "growing.log").unlink()
        second = run(repo, src)
        assert second.stats.dirs_unmodified == 0
        assert [n.name for n in repo.load_tree(second.snapshot.tree)] == [b"still"]


def test_a_user_renamed_while_a_directory_was_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup after the rename does not walk home/: its trees, recorded with the old
    name, must not come back later."""
    src = tmp_path / "src"
    (src / "home" / "alice").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "home" / "alice" / "f").write_bytes(b"x" * 100)
    os.chown(src / "home" / "alice" / "f", 4242, 4242)
    (src / "etc" / "g").write_bytes(b"y" * 100)
    real = backup_module._user_name
    name = {4242: "alice"}
    monkeypatch.setattr(backup_module, "_user_name", lambda u: name.get(u) or real(u))
    backend = MemoryBackend()
    with make_repo(backend, tmp_path / "cache") as repo:
        run(repo, src, "home")
        assert run(repo, src, "home").stats.dirs_unmodified == 2
        run(repo, src, "etc")
        name[4242] = "bob"  # usermod -l bob alice
        assert run(repo, src, "etc").stats.dirs_unmodified == 0
        after = run(repo, src, "home")
        assert after.stats.dirs_unmodified == 0
        alice = repo.load_tree(
            repo.load_tree(repo.load_tree(after.snapshot.tree)[0].subtree)[0].subtree
        )
        assert [n.user for n in alice] == ["bob"]


def test_a_directory_moved_away_and_back_across_a_prune(tmp_path: Path) -> None:
    """Its files-cache rows were not used by the backups in between, one of which found the
    index files replaced: they must be checked against the index, not trusted."""
    src, away = _moved_away(tmp_path)
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        _back_up_then_forget_all_but_one_without(repo, src, away)
        prune(repo, grace=timedelta(0))
        run(repo, src)  # finds the index files replaced
        os.rename(away, src / "proj")
        back = run(repo, src)
        assert back.stats.dirs_unmodified == 0
        _checked_restore(repo, back, src, tmp_path / "out")


def test_an_owner_change_that_leaves_the_ctime_is_seen(tmp_path: Path, src: Path) -> None:
    """Where ownership comes from a mapping (id-mapped mounts, user namespaces, mount
    options), it can change without the ctime. Played here by changing what the files
    cache recorded: a file's uid, and a subdirectory's gid."""
    backend = MemoryBackend()
    with make_repo(backend, tmp_path / "cache") as repo:
        run(repo, src)
        assert run(repo, src).stats.dirs_unmodified == DIRS_WITH_ENTRIES
        import sqlite3

        assert repo.cache_dir is not None
        db = sqlite3.connect(repo.cache_dir / "files.sqlite")
        for path, field, index in ((src / "a" / "deep", b"f1", 7), (src / "a", b"deep", 6)):
            (data,) = db.execute(
                "SELECT data FROM dirs WHERE path = ?", (os.fsencode(path),)
            ).fetchone()
            entries = msgpack.unpackb(data, raw=False, strict_map_key=False)
            entry = entries[field] if field in entries else entries[b"/"][1][field]
            entry[index] += 1
            db.execute(
                "UPDATE dirs SET data = ? WHERE path = ?",
                (msgpack.packb(entries, use_bin_type=True), os.fsencode(path)),
            )
        db.commit()
        db.close()
        after = run(repo, src)
        # a/deep (its file's uid) and a (its subdirectory's gid) are encoded again; their
        # trees come out as before (nothing really changed), so the root keeps its own
        assert after.stats.dirs_unmodified == DIRS_WITH_ENTRIES - 2
    assert fresh_trees(backend, tmp_path / "fresh", src) == after.snapshot.tree


def test_entries_changed_just_before_the_walk_are_not_recorded(tmp_path: Path, src: Path) -> None:
    """A change in the same clock tick as the walk's lstat leaves the ctime as it was: a
    directory with an entry changed within `settle_s` keeps no record of its tree."""
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        run(repo, src, settle_s=3600.0)  # every entry counts as just changed
        assert run(repo, src, settle_s=3600.0).stats.dirs_unmodified == 0
        run(repo, src)
        assert run(repo, src, settle_s=3600.0).stats.dirs_unmodified == DIRS_WITH_ENTRIES


def _moved_away(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    (src / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (src / "other").write_bytes(b"o")
    for d in (src / "proj", src / "proj" / "sub"):
        for i in range(3):
            (d / f"f{i}").write_bytes(os.urandom(3000))
    return src, tmp_path / "outside" / "proj"


def _back_up_then_forget_all_but_one_without(repo: Repository, src: Path, away: Path) -> None:
    """Two backups with proj/, one without it (moved to `away`), and only that one kept."""
    run(repo, src)
    run(repo, src)
    os.rename(src / "proj", away)
    keep = run(repo, src).snapshot.id
    forget_ids(repo, [s for s in repo.snapshot_ids() if s != keep])


def _checked_restore(repo: Repository, result: BackupResult, src: Path, out: Path) -> None:
    report = check(repo, read_data=True)
    assert report.ok, report
    stats = restore(repo, result.snapshot, out)
    assert stats.errors == []
    assert tree_differences(src, out) == []


def test_another_backup_sharing_the_cache_commits_while_one_starts(tmp_path: Path) -> None:
    """A backup reads the cache's generation with the table it belongs to, at its start
    (after the lock and the index sync), not when it was made."""
    from rekindle.repository.backup import Archiver

    src, away = _moved_away(tmp_path)
    opts = BackupOptions(paths=["."], cwd=str(src), settle_s=0.0)
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        _back_up_then_forget_all_but_one_without(repo, src, away)
        prune(repo, grace=timedelta(0))  # proj's chunks and trees are gone
        first = Archiver(repo, opts)
        run(repo, src)  # another backup: finds index files replaced, commits
        os.rename(away, src / "proj")
        result = first.run()
        assert result.stats.dirs_unmodified == 0
        _checked_restore(repo, result, src, tmp_path / "out")


def test_a_prune_during_a_backup_leaves_unused_rows_untrusted(tmp_path: Path) -> None:
    """A prune on the same machine (one index cache) while a backup runs: the backup's
    commit must not vouch for rows it did not use, whose content that prune removed."""
    from rekindle.repository.backup import Archiver

    src, away = _moved_away(tmp_path)
    opts = BackupOptions(paths=["."], cwd=str(src), settle_s=0.0)
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        _back_up_then_forget_all_but_one_without(repo, src, away)
        during = Archiver(repo, opts)
        put, pruned = during.files_cache.put, []

        def prune_first(path: bytes, entries: dict[bytes, list[object]]) -> None:
            if not pruned:  # prune never waits for backups
                pruned.append(prune(repo, grace=timedelta(0)))
            put(path, entries)

        during.files_cache.put = prune_first  # type: ignore[method-assign]
        during.run()
        assert pruned
        prune(repo, grace=timedelta(0))  # the sweep, once the backup's lock is gone
        os.rename(away, src / "proj")
        result = run(repo, src)
        assert result.stats.dirs_unmodified == 0
        _checked_restore(repo, result, src, tmp_path / "out")
