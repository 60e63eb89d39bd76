"""Backup with worker processes (backup_worker.py, backup_procs.py): the same chunks, trees
and deduplication as the threads give, and a worker that fails or dies fails the backup
without damaging the repository."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rekindle.core.errors import ExitCode
from rekindle.format.crypto import RepoKeys
from rekindle.format.registry import BlobKind
from rekindle.format.snapshot import Snapshot
from rekindle.repository.backup import Archiver, BackupOptions, backup
from rekindle.repository.backup_procs import WorkerProcessError
from rekindle.repository.backup_worker import (
    GREW,
    open_for_reading,
    read_small,
    read_small_file,
    stat_key,
)
from rekindle.repository.check import check
from rekindle.repository.repo import Repository, Secret, parse_pack_name
from rekindle.repository.restore import RestoreOptions, restore
from rekindle.repository.writer import INDEX_EVERY_PACKS
from rekindle.store.local import LocalBackend
from tests.helpers import PASSWORD, make_repo, tree_differences
from tests.unit.repository.test_restore_processes import _varied_tree


def _options(src: Path, **kw: object) -> BackupOptions:
    opts = BackupOptions(
        paths=["."], cwd=str(src), processes=2, process_after_files=0, wait_for_processes=True
    )
    for k, v in kw.items():
        setattr(opts, k, v)
    return opts


def _repo(tmp_path: Path) -> Repository:
    return make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache")


def _data_blobs(repo: Repository) -> list[bytes]:
    repo.sync_index()
    return [e.id for _, e in repo.index.entries() if e.kind is BlobKind.DATA]


def _reopen(tmp_path: Path) -> Repository:
    return Repository.open(
        LocalBackend(tmp_path / "repo"), _password, cache_root=tmp_path / "cache"
    )


def test_processes_store_exactly_what_threads_store(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _varied_tree(src)
    _many_files(src / "many", dirs=4, per_dir=150, largest=4000)  # batches for both
    with _repo(tmp_path) as repo:
        first = backup(repo, _options(src))
        assert first.stats.worker_processes == 2  # both really read files
        assert check(repo, read_data=True).ok
        stored = _data_blobs(repo)
        assert len(stored) == len(set(stored))  # nothing stored twice
        # Without the files cache, threads read everything again: every chunk and every
        # tree they make must already be there, identical.
        (tmp_path / "cache").rename(tmp_path / "cache-old")
    with _reopen(tmp_path) as repo:
        again = backup(repo, _options(src, processes=0))
        assert again.stats.worker_processes == 0
        assert again.stats.files_new == first.stats.files_new
        assert again.stats.blobs_added == 0
        assert again.snapshot.tree == first.snapshot.tree
        _checks_and_restores(repo, first.snapshot, src, tmp_path / "out")


def _password() -> Secret:
    return PASSWORD


def _checks_and_restores(repo: Repository, snap: Snapshot, src: Path, out: Path) -> None:
    """`check --read-data` finds nothing, and the restore point restores (by threads) to
    exactly `src`."""
    report = check(repo, read_data=True)
    assert report.ok, report.errors
    restore(repo, snap, out, RestoreOptions(processes=0))
    assert tree_differences(src, out) == []


def test_a_chunk_two_workers_meet_is_stored_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    contents = [os.urandom(3000 + i) for i in range(5)]
    rng = random.Random(3)
    for d in range(12):
        sub = src / f"d{d:02d}"
        sub.mkdir(parents=True)
        for i in range(90):
            (sub / f"f{i}").write_bytes(rng.choice(contents))
    with _repo(tmp_path) as repo:
        result = backup(repo, _options(src))
        assert result.stats.worker_processes == 2
        stored = _data_blobs(repo)
        assert sorted(stored) == sorted({repo.keys.chunk_id(c) for c in contents})
        _checks_and_restores(repo, result.snapshot, src, tmp_path / "out")


def test_read_small_file_reports_growth_errors_and_changes(tmp_path: Path) -> None:
    keys = RepoKeys.from_master(b"m" * 32)
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    kept: dict[bytes, bytes] = {}
    os.setxattr(f, b"user.note", b"kept")
    st = stat_key(os.stat(f))  # after the xattr, which changed its ctime
    assert read_small_file(bytes(f), st, 100, keys, kept) == (
        [keys.chunk_id(b"x" * 100)],
        False,
        100,
        [(b"user.note", b"kept")],
    )
    assert kept == {keys.chunk_id(b"x" * 100): b"x" * 100}
    assert read_small_file(bytes(f), st, 99, keys, {}) == GREW  # no longer small: the parent reads
    f.write_bytes(b"y" * 50)
    os.utime(f, ns=(st[1] + 10**9, st[1] + 10**9))
    changed = read_small_file(bytes(f), st, 100, keys, {})
    assert isinstance(changed, tuple) and changed[1] is True and changed[2] == 50
    missing = read_small_file(bytes(tmp_path / "gone"), st, 100, keys, {})
    assert isinstance(missing, FileNotFoundError)
    os.symlink(f, tmp_path / "link")  # never followed
    assert isinstance(read_small_file(bytes(tmp_path / "link"), st, 100, keys, {}), OSError)


@pytest.mark.parametrize(
    ("seen", "actual", "expected"),
    [
        (100, 100, 100),  # as the walk saw it
        (100, 40, 40),  # shrank
        (0, 60, 60),  # was empty, grew: read on past the first buffer
        (100, 150, 150),  # grew, still small
        (100, 300, 257),  # grew past the limit: limit + 1 tells it
        (1000, 300, 257),  # the walk saw it large (the caller reads it as large then)
    ],
)
def test_read_small_reads_the_whole_content_up_to_one_past_the_limit(
    tmp_path: Path, seen: int, actual: int, expected: int
) -> None:
    content = os.urandom(actual)
    f = tmp_path / "f"
    f.write_bytes(content)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert read_small(fd, seen, 256) == content[:expected]
    finally:
        os.close(fd)


def _many_files(src: Path, dirs: int = 8, per_dir: int = 80, largest: int = 6000) -> None:
    rng = random.Random(11)
    for d in range(dirs):
        sub = src / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(per_dir):
            (sub / f"f{i}").write_bytes(rng.randbytes(rng.randrange(100, largest)))


def _afterwards_all_is_well(tmp_path: Path, src: Path) -> None:
    """The repository checks clean, and the next backup (threads) completes and restores."""
    with _reopen(tmp_path) as repo:
        report = check(repo, read_data=True)
        assert report.ok, report.errors
        result = backup(repo, _options(src, processes=0))
        _checks_and_restores(repo, result.snapshot, src, tmp_path / "out")


def test_a_worker_that_fails_fails_the_backup_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _many_files(src)
    (tmp_path / "not-a-dir").write_bytes(b"")
    with _repo(tmp_path) as repo:
        backup(repo, _options(src / "d0", processes=0))  # a restore point before
        # The workers start, then cannot create a pack file: ENOTDIR even for root.
        broken = functools.partial(LocalBackend, str(tmp_path / "not-a-dir" / "repo"))
        monkeypatch.setattr(repo.backend, "writer_factory", lambda: broken)
        with pytest.raises(WorkerProcessError, match=r"backup worker process \d+ failed") as e:
            backup(repo, _options(src))
        assert "Not a directory" in str(e.value)  # the worker's own reason, not a symptom
        assert len(repo.snapshot_ids()) == 1
    _afterwards_all_is_well(tmp_path, src)


def test_a_worker_killed_mid_backup_fails_it_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _many_files(src)
    killed: list[int] = []

    with _repo(tmp_path) as repo:
        archiver: Archiver

        def kill_one_busy_worker() -> bool:
            procs = archiver._procs  # the test reaches in to time the kill
            if procs is not None and not killed:
                busy = [p for p in procs._procs if p.batches]
                if busy:
                    killed.append(busy[0].popen.pid)
                    os.kill(busy[0].popen.pid, signal.SIGKILL)
                    busy[0].popen.wait()
            return False

        archiver = Archiver(repo, _options(src, should_stop=kill_one_busy_worker))
        with pytest.raises(WorkerProcessError) as e:
            archiver.run()
        assert killed
        assert f"backup worker process {killed[0]} failed" in str(e.value)
        assert repo.snapshot_ids() == []
    _afterwards_all_is_well(tmp_path, src)


def _worker_pids_of(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"rekindle.repository.backup_worker" in cmd:
            pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_end_when_the_backup_is_killed(tmp_path: Path) -> None:
    """kill -9 of the backup: its workers see the socket close and exit; nothing is damaged."""
    src = tmp_path / "src"
    # 6,000 files, about 700 MB: past the default start threshold, and seconds of work
    _many_files(src, dirs=40, per_dir=150, largest=240_000)
    repo_dir = tmp_path / "repo"
    env = {
        **os.environ,
        "REKINDLE_REPO": str(repo_dir),
        "REKINDLE_PASSWORD": "test password",
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }
    cli = [str(Path(sys.executable).parent / "rekindle")]
    subprocess.run([*cli, "repo", "init"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*cli, "repo", "backup", str(src)], env=env)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while not workers and proc.poll() is None and time.monotonic() < deadline:
        workers = _worker_pids_of(proc.pid)
        time.sleep(0.005)
    if not workers:
        proc.wait()
        pytest.fail(f"the backup ended ({proc.returncode}) before its workers were seen")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a worker outlived the killed backup"
    done = subprocess.run(
        [*cli, "repo", "check", "--read-data"], env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_module_planted_in_the_working_directory_never_runs_in_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers get the master key: `python -m` would import from the working directory,
    which may be the very directory being backed up, writable by others."""
    src = tmp_path / "src"
    _many_files(src, dirs=2, per_dir=40)
    marker = tmp_path / "planted-code-ran"
    for name in ("dataclasses.py", "typing.py", "contextlib.py"):
        (src / name).write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(9)\n")
    monkeypatch.chdir(src)
    with _repo(tmp_path) as repo:
        result = backup(repo, _options(src))
    assert result.stats.worker_processes >= 1
    assert not marker.exists()


def test_a_fifo_swapped_in_for_a_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(OSError, match="no longer a regular file"):
        open_for_reading(bytes(fifo))
    assert time.monotonic() - started < 5


def test_index_files_written_while_workers_report_packs_name_every_pack(tmp_path: Path) -> None:
    """More than INDEX_EVERY_PACKS packs from the workers: index files are written along the
    way (by an upload thread) and at the end, and together they name every pack."""
    src = tmp_path / "src"
    _many_files(src, dirs=40, per_dir=150, largest=4000)  # ~12 MB in files under 4 KiB
    with _repo(tmp_path) as repo:
        result = backup(repo, _options(src))
        assert result.stats.worker_processes == 2
        assert len(repo.index_file_names()) >= 2
        stored = {parse_pack_name(info.name) for info in repo.backend.list("data/")}
        assert len(stored) > INDEX_EVERY_PACKS
        indexed = {(BlobKind(kind), pack) for pack, kind in repo.index.packs().items()}
        assert {p for p in indexed if p[0] is BlobKind.DATA} == stored
        _checks_and_restores(repo, result.snapshot, src, tmp_path / "out")


def test_workers_that_cannot_start_leave_every_file_to_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Small files gathered while the workers start are not lost when none ever does. The
    walk waits for the workers' start (`wait_for_processes`), so their failure is seen."""
    src = tmp_path / "src"
    _many_files(src, dirs=10, per_dir=150, largest=4000)
    with _repo(tmp_path) as repo:
        # The worker fails while opening its backend, before it says it is ready.
        monkeypatch.setattr(
            repo.backend, "writer_factory", lambda: functools.partial(int, "not a backend")
        )
        result = backup(repo, _options(src))
        assert result.stats.worker_processes == 0
        assert result.stats.files_new == 1500
        _checks_and_restores(repo, result.snapshot, src, tmp_path / "out")
    assert caplog.text.count("a backup worker process could not start") == 2


def test_a_file_that_grew_is_read_again_from_where_it_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `read_from` (a filesystem snapshot of a path), a file a worker found grown is
    read again from the snapshot, never from the live path the restore point records."""
    from concurrent.futures import Future

    from rekindle.repository.backup_procs import WorkerProcesses

    live = tmp_path / "live.txt"
    frozen = tmp_path / "frozen.txt"
    live.write_bytes(b"LIVE content, changed after the snapshot\n")
    frozen.write_bytes(b"FROZEN content, as of the snapshot\n")

    def grew(self: WorkerProcesses, files: list[object], *, wait: bool = False) -> Future[object]:
        fut: Future[object] = Future()
        fut.set_result([GREW] * len(files))
        return fut

    monkeypatch.setattr(WorkerProcesses, "submit", grew)
    with _repo(tmp_path) as repo:
        opts = _options(tmp_path, paths=[str(live)], read_from={str(live): str(frozen)})
        result = backup(repo, opts)
        restore(repo, result.snapshot, tmp_path / "out", RestoreOptions(processes=0))
    restored = tmp_path / "out" / str(live).lstrip("/")
    assert restored.read_bytes() == frozen.read_bytes()


def test_a_full_disk_under_a_worker_fails_the_backup_with_the_no_space_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's own error reaches the user with its exit status: a worker that runs out of
    space for its pack file fails the backup with exit 9, as the threads' would."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
        check=False,
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        src = tmp_path / "src"
        _many_files(src, dirs=8, per_dir=150, largest=4000)  # ~2.4 MB: far more than 256 KiB
        with _repo(tmp_path) as repo:
            full = functools.partial(LocalBackend, str(small))
            monkeypatch.setattr(repo.backend, "writer_factory", lambda: full)
            with pytest.raises(WorkerProcessError) as e:
                backup(repo, _options(src))
            assert e.value.exit_code == ExitCode.NO_SPACE
            assert "no space left" in str(e.value)
            assert repo.snapshot_ids() == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
    _afterwards_all_is_well(tmp_path, src)
