"""Backup then restore gives back exactly what was there, for generated trees with the
cases that break backup tools: odd and unicode names, empty files, huge sparse files,
symlinks, hard links, xattrs, permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rekindle.format.registry import NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node, encode_tree
from rekindle.repository.backup import BackupOptions, backup, plan_paths
from rekindle.repository.restore import Existing, RestoreOptions, restore
from rekindle.store.memory import MemoryBackend
from tests.helpers import growing_file, make_repo, tree_differences

name_chars = st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",))
names = st.text(name_chars, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and len(s.encode()) < 200
)
entry = st.tuples(
    st.sampled_from(["file", "empty", "sparse", "symlink", "hardlink", "dir", "xattr"]),
    st.binary(max_size=70_000),
    st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o4755, 0o1777]),
)


def build_tree(root: Path, spec: list[tuple[str, tuple[str, bytes, int]]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    cwd = root
    for i, (name, (kind, data, mode)) in enumerate(spec):
        p = cwd / name
        if p.exists() or p.is_symlink():
            continue
        if kind == "dir":
            p.mkdir()
            cwd = p if i % 2 == 0 else cwd
            continue
        if kind == "symlink":
            p.symlink_to(data.decode("latin-1").replace("\0", "") or "target")
            continue
        if kind == "hardlink" and files:
            os.link(files[-1], p)
            continue
        if kind == "sparse":
            with p.open("wb") as f:
                f.seek(64 * 1024 * 1024)  # a 64 MiB hole, then some data
                f.write(data or b"x")
                f.truncate(96 * 1024 * 1024)
        else:
            p.write_bytes(b"" if kind == "empty" else data)
        if kind == "xattr":
            os.setxattr(p, "user.rekindle", data[:100] or b"v")
        os.chmod(p, mode)
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i))
        files.append(p)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.tuples(names, entry), min_size=1, max_size=25))
def test_backup_restore_roundtrip(
    tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[str, tuple[str, bytes, int]]]
) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    src = tmp / "src"
    build_tree(src, spec)
    repo = make_repo(MemoryBackend(), tmp / "cache")
    with repo:
        result = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert not result.snapshot.missed
        stats = restore(repo, repo.find_snapshot("latest"), tmp / "out")
    assert stats.errors == []
    assert tree_differences(src, tmp / "out") == []


def test_incremental_reads_only_changed_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(3000))
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        first = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert first.stats.files_new == 50
        (src / "f3").write_bytes(b"changed")
        (src / "new").write_bytes(b"new file")
        second = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert second.stats.files_unmodified == 49
        assert second.stats.files_changed == 1
        assert second.stats.files_new == 1
        assert second.stats.bytes_read == len(b"changed") + len(b"new file")
        assert second.snapshot.parent == first.snapshot.id
        restore(repo, second.snapshot, tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []


def test_unchanged_files_keep_their_xattrs_and_a_changed_xattr_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(3000))
        os.setxattr(src / f"f{i}", "user.tag", f"v{i}".encode())
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        # an unchanged file's xattrs come from the files cache, not from listxattr
        listed: list[bytes] = []
        real = os.listxattr

        def counting(path: bytes, **kw: bool) -> list[str]:
            listed.append(path)
            return real(path, **kw)

        monkeypatch.setattr(os, "listxattr", counting)
        second = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert second.stats.files_unmodified == 3
        assert not [p for p in listed if os.path.basename(p).startswith(b"f")]
        restore(repo, second.snapshot, tmp_path / "out2")
        assert tree_differences(src, tmp_path / "out2") == []  # xattrs included
        # setting an xattr moves the ctime: the next backup sees the new value
        os.setxattr(src / "f1", "user.tag", b"changed")
        os.setxattr(src / "f2", "user.more", b"added")
        third = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert third.stats.files_unmodified == 1
        restore(repo, third.snapshot, tmp_path / "out3")
    assert os.getxattr(tmp_path / "out3" / "f1", "user.tag") == b"changed"
    assert os.getxattr(tmp_path / "out3" / "f2", "user.more") == b"added"
    assert tree_differences(src, tmp_path / "out3") == []


def test_unreadable_file_is_missed_not_fatal_and_retried(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file: permissions cannot make one unreadable")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("fine")
    locked = src / "locked"
    locked.write_text("secret")
    locked.chmod(0)
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert [m[0] for m in r.snapshot.missed] == [str(locked)]
        locked.chmod(0o600)
        r2 = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert not r2.snapshot.missed
        assert r2.stats.files_new == 1  # tried again, now read


def test_file_that_vanishes_is_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "stays").write_text("x")
    (src / "goes").write_text("y")
    from rekindle.repository import backup as backup_mod

    real = backup_mod.Archiver._read_file

    def vanish(self: backup_mod.Archiver, path: bytes, st: os.stat_result) -> object:
        if path.endswith(b"goes"):
            os.unlink(path)
        return real(self, path, st)

    monkeypatch.setattr(backup_mod.Archiver, "_read_file", vanish)
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
    assert len(r.snapshot.missed) == 1
    assert r.snapshot.missed[0][0].endswith("goes")
    assert "No such file" in r.snapshot.missed[0][1]


def test_absolute_paths_keep_their_structure(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("deep")
    (tmp_path / "c").write_text("top file")
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=[str(tmp_path / "a" / "b"), str(tmp_path / "c")]))
        out = tmp_path / "out"
        restore(repo, r.snapshot, out)
    rel = str(tmp_path).lstrip("/")
    assert (out / rel / "a" / "b" / "f").read_text() == "deep"
    assert (out / rel / "c").read_text() == "top file"


def test_relative_paths_are_read_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("deep")
    (tmp_path / "a" / "skip").write_text("not chosen")
    (tmp_path / "c").write_text("top file")
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["a/b", "c"], cwd=str(tmp_path)))
        assert r.snapshot.missed == []
        assert r.stats.files_new == 2
        out = tmp_path / "out"
        restore(repo, r.snapshot, out)
    assert (out / "a" / "b" / "f").read_text() == "deep"
    assert (out / "c").read_text() == "top file"
    assert not (out / "a" / "skip").exists()
    assert (out / "a").stat().st_mode == (tmp_path / "a").stat().st_mode


def test_plan_paths_refuses_a_mix_of_absolute_and_relative(tmp_path: Path) -> None:
    from rekindle.core.errors import UsageError

    (tmp_path / "x").mkdir()
    with pytest.raises(UsageError, match="not a mix"):
        plan_paths([str(tmp_path / "x"), "x"], str(tmp_path))


def test_plan_paths_refuses_dotdot_and_missing(tmp_path: Path) -> None:
    from rekindle.core.errors import UsageError

    with pytest.raises(UsageError, match=r"\.\."):
        plan_paths(["../x"], str(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        plan_paths(["nope"], str(tmp_path))


def test_excludes_are_gitignore_style(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "x").write_text("x")
    (src / "keep.txt").write_text("k")
    (src / "drop.log").write_text("d")
    (src / "sub").mkdir()
    (src / "sub" / "deep.log").write_text("d")
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src), excludes=["*.log", "cache/"]))
        restore(repo, r.snapshot, tmp_path / "out")
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert got == ["keep.txt", "sub"]


def _hostile_snapshot(repo_: object, nodes: list[Node]) -> Snapshot:
    from datetime import UTC, datetime

    from rekindle.repository.writer import BlobWriter

    repo = repo_  # type: ignore[assignment]
    w = BlobWriter(repo)  # type: ignore[arg-type]
    data = encode_tree(nodes)
    cid = repo.keys.chunk_id(data)  # type: ignore[attr-defined]
    from rekindle.format.registry import BlobKind

    w.store_plain(BlobKind.TREE, cid, data)
    w.flush()
    w.close()
    snap = Snapshot(time=datetime.now(UTC), host="evil", paths=["/"], tree=[cid], program="x")
    repo.write_snapshot(snap)  # type: ignore[attr-defined]
    return snap


@pytest.mark.parametrize("bad", [b"..", b".", b"a/../../escape", b"/etc/passwd", b"x\0y"])
def test_hostile_names_never_escape_the_target(tmp_path: Path, bad: bytes) -> None:
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        snap = _hostile_snapshot(repo, [Node(name=bad, type=NodeType.FILE, mode=0o644)])
        target = tmp_path / "deep" / "target"
        stats = restore(repo, snap, target)
    assert len(stats.errors) == 1
    assert "unsafe name" in stats.errors[0][1]
    outside_cache = sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.relative_to(tmp_path).parts[0] != "cache"
    )
    assert outside_cache == ["deep", "deep/target"]


def test_symlink_then_directory_of_same_name_cannot_redirect(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        # Duplicate name: a symlink to outside, then a directory holding a file.
        from rekindle.repository.backup import Archiver

        arch = Archiver(repo, BackupOptions(paths=["."]))
        inner = arch.store_tree([Node(name=b"pwned", type=NodeType.FILE, mode=0o644)])
        arch.writer.flush()
        arch.writer.close()
        nodes = [
            Node(name=b"d", type=NodeType.SYMLINK, link_target=str(outside).encode()),
            Node(name=b"d", type=NodeType.DIR, mode=0o755, subtree=inner),
        ]
        snap = _hostile_snapshot(repo, nodes)
        stats = restore(repo, snap, tmp_path / "target")
    assert list(outside.iterdir()) == []
    assert any("duplicate" in r for _, r in stats.errors)


def test_symlink_planted_in_destination_is_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("data")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "d").symlink_to(outside)  # an attacker prepared the destination
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        stats = restore(repo, r.snapshot, target)
    assert list(outside.iterdir()) == []
    assert stats.errors and stats.errors[0][0] == "d"


@pytest.mark.parametrize("mode", list(Existing))
def test_existing_files_policy(tmp_path: Path, mode: Existing) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("from backup")
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    target = tmp_path / "t"
    target.mkdir()
    (target / "f").write_text("already here")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        restore(repo, r.snapshot, target, RestoreOptions(existing=mode))
    if mode is Existing.OVERWRITE:
        assert (target / "f").read_text() == "from backup"
    elif mode is Existing.SKIP:
        assert (target / "f").read_text() == "already here"
    else:
        assert (target / "f").read_text() == "already here"
        assert (target / "f.restored-1").read_text() == "from backup"


@pytest.mark.parametrize("mode", list(Existing))
def test_restoring_hard_links_again_over_themselves(tmp_path: Path, mode: Existing) -> None:
    """The second name of a hard link follows the --existing policy as a file does (it
    used to fail with "File exists" when restored again into the same target)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "h1").write_text("linked")
    os.link(src / "h1", src / "h2")
    target = tmp_path / "t"
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        assert restore(repo, snap, target).errors == []
        stats = restore(repo, snap, target, RestoreOptions(existing=mode))
    assert stats.errors == []
    h1, h2 = (target / "h1").stat(), (target / "h2").stat()
    assert h1.st_ino == h2.st_ino  # still one file with two names
    if mode is Existing.SKIP:
        assert stats.skipped == 2
    elif mode is Existing.RENAME:
        r1, r2 = (target / "h1.restored-1").stat(), (target / "h2.restored-1").stat()
        assert r1.st_ino == r2.st_ino != h1.st_ino
        assert (target / "h2.restored-1").read_text() == "linked"
    else:
        assert (target / "h2").read_text() == "linked"
        assert sorted(p.name for p in target.iterdir()) == ["h1", "h2"]


@pytest.mark.parametrize("mode", list(Existing))
def test_symlinks_and_fifos_follow_the_existing_policy(tmp_path: Path, mode: Existing) -> None:
    """Every kind of entry meets an existing one as a file does: with rename, a file that
    stood where a symlink is restored is kept (it used to be replaced), and an existing
    FIFO no longer fails the entry."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to("somewhere")
    os.mkfifo(src / "fifo")
    target = tmp_path / "t"
    target.mkdir()
    (target / "link").write_text("a file of mine")
    os.mkfifo(target / "fifo")
    with make_repo(MemoryBackend(), tmp_path / "cache") as repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        stats = restore(repo, snap, target, RestoreOptions(existing=mode))
    assert stats.errors == []
    if mode is Existing.OVERWRITE:
        assert os.readlink(target / "link") == "somewhere"
        assert sorted(p.name for p in target.iterdir()) == ["fifo", "link"]
    elif mode is Existing.SKIP:
        assert (target / "link").read_text() == "a file of mine"
        assert stats.skipped == 2
    else:
        assert (target / "link").read_text() == "a file of mine"
        assert os.readlink(target / "link.restored-1") == "somewhere"
        assert stat.S_ISFIFO((target / "fifo.restored-1").lstat().st_mode)


def test_include_restores_only_selected_paths(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "want").write_text("1")
    (src / "a" / "other").write_text("2")
    (src / "z").write_text("3")
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        restore(repo, r.snapshot, tmp_path / "out", RestoreOptions(includes=["a/b"]))
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert got == ["a", "a/b", "a/b/want"]


def test_dedup_across_files_and_backups(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    blob = os.urandom(300_000)
    (src / "one").write_bytes(blob)
    (src / "two").write_bytes(blob)
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        r = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert r.stats.bytes_added < 1.2 * len(blob)
        (src / "three").write_bytes(b"prefix" + blob)
        r2 = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        # Content-defined chunking: only chunks around the insertion are new.
        assert r2.stats.bytes_added < 0.5 * len(blob)


def test_chunk_boundaries_do_not_depend_on_read_segments(tmp_path: Path) -> None:
    """A file several read segments long is cut exactly as if chunked in one piece."""
    import random

    from rekindle.format.chunker import Chunker
    from rekindle.repository.backup import READ_SEGMENT

    rng = random.Random(11)
    data = rng.randbytes(2 * READ_SEGMENT + 123_457)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(data)
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        (node,) = repo.load_tree(snap.tree)
        expected = [
            repo.keys.chunk_id(c) for c in Chunker(repo.config, repo.keys.chunker_seed).cut(data)
        ]
        assert node.content == expected
        assert len(expected) > 100
        restore(repo, snap, tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data


def test_big_files_restore_in_parallel_parts_and_damage_fails_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from rekindle.repository import restore as restore_mod

    monkeypatch.setattr(restore_mod, "PART_BYTES", 200_000)  # many parts per file
    rng = random.Random(3)
    src = tmp_path / "src"
    src.mkdir()
    big = rng.randbytes(3_000_000)
    (src / "big").write_bytes(big)
    with (src / "sparse").open("wb") as f:
        f.write(rng.randbytes(300_000))
        f.seek(5_000_000)
        f.write(rng.randbytes(300_000))
    for i in range(100):
        (src / f"small{i}").write_bytes(rng.randbytes(i * 37))
    backend = MemoryBackend()
    repo = make_repo(backend, tmp_path / "cache")
    with repo:
        snap = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        stats = restore(repo, snap, tmp_path / "out")
        assert stats.errors == []
        assert tree_differences(src, tmp_path / "out") == []
        # Damage one chunk in the middle of the big file: only that file fails.
        node = next(n for n in repo.load_tree(snap.tree) if n.name == b"big")
        victim = node.content[len(node.content) // 2]
        assert isinstance(victim, bytes)
        loc = repo.index.lookup(victim)
        assert loc is not None
        from rekindle.repository.repo import pack_name

        name = pack_name(loc.entry.kind, loc.pack)
        raw = bytearray(backend.raw(name))
        raw[loc.entry.offset + 20] ^= 1
        backend.poke(name, bytes(raw))
        stats2 = restore(repo, snap, tmp_path / "out2")
    assert [p for p, _ in stats2.errors] == ["big"]
    assert stats2.damaged == 1
    assert (tmp_path / "out2" / "small99").read_bytes() == (src / "small99").read_bytes()


def test_a_file_changed_while_read_is_flagged_and_read_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    read_then_append = growing_file(src)

    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        monkeypatch.setattr(os, "read", read_then_append)
        first = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        monkeypatch.undo()
        assert first.stats.changed_while_read == [str(src / "growing.log")]
        nodes = {n.name: n for n in repo.load_tree(first.snapshot.tree)}
        assert nodes[b"growing.log"].changed_while_read
        assert not nodes[b"still"].changed_while_read
        # Not trusted by the files cache: the next backup reads it again.
        second = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        assert second.stats.files_unmodified == 1  # "still" came from the cache
        assert second.stats.bytes_read == (src / "growing.log").stat().st_size
        assert second.stats.changed_while_read == []


def test_one_file_system_records_mount_points_empty(tmp_path: Path) -> None:
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs inside the source")
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "here").write_text("same file system")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "mnt")], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        (src / "mnt" / "other").write_text("other file system")
        repo = make_repo(MemoryBackend(), tmp_path / "cache")
        with repo:
            one = backup(repo, BackupOptions(paths=["."], cwd=str(src), one_file_system=True))
            both = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
            restore(repo, one.snapshot, tmp_path / "one")
            restore(repo, both.snapshot, tmp_path / "both")
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)
    assert (tmp_path / "one" / "here").read_text() == "same file system"
    assert (tmp_path / "one" / "mnt").is_dir()
    assert list((tmp_path / "one" / "mnt").iterdir()) == []
    assert (tmp_path / "both" / "mnt" / "other").read_text() == "other file system"


def test_a_stopped_backup_indexes_what_it_stored_and_the_next_run_reuses_it(
    tmp_path: Path,
) -> None:
    from rekindle.repository.backup import BackupStats, BackupStopped

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):  # one file per directory: the walk hands each to the readers
        (src / f"d{i:02}").mkdir()
        (src / f"d{i:02}" / "f").write_bytes(os.urandom(100_000))
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    stats = BackupStats()

    def stop_after_a_third() -> bool:
        return stats.bytes_read >= 40 * 100_000 // 3

    with repo:
        with pytest.raises(BackupStopped, match="next backup continues") as stopped:
            opts = BackupOptions(paths=["."], cwd=str(src), should_stop=stop_after_a_third)
            backup(repo, opts, stats)
        assert repo.snapshot_ids() == []  # no restore point for a stopped backup
        stored = stopped.value.stats.bytes_added
        assert 10 * 100_000 <= stored < 30 * 100_000
        full = backup(repo, BackupOptions(paths=["."], cwd=str(src)))
        # the files stored before the stop are deduplicated, not sent again
        assert full.stats.bytes_added <= 40 * 100_000 - stored + 64 * 1024
        restore(repo, full.snapshot, tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []


def test_the_parent_is_found_or_taken_as_given(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo = make_repo(MemoryBackend(), tmp_path / "cache")
    with repo:
        first = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        found = backup(repo, BackupOptions(paths=["."], cwd=str(src))).snapshot
        # the cloud knows the parent: the engine records it without reading restore points
        given = backup(repo, BackupOptions(paths=["."], cwd=str(src), parent=first.id)).snapshot
        none = backup(repo, BackupOptions(paths=["."], cwd=str(src), parent=None)).snapshot
    assert first.parent is None
    assert found.parent == first.id
    assert given.parent == first.id
    assert none.parent is None
