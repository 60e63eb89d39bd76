"""Restore: recreate a restore point's files below a target directory.

Safety rules this module must never break:
- Nothing is written outside the target. Every directory is opened relative to its parent's
  file descriptor with O_NOFOLLOW, every name is checked (`format.tree.safe_name`), and
  duplicate names in a tree are refused. A symlink in the destination (planted or restored)
  is therefore never followed.
- Every chunk is authenticated and re-hashed before a byte of it is written (Repository
  .read_blob). A damaged chunk fails its file, which is reported; the others are restored.

The walk runs on the main thread and creates every directory (so names exist in a
deterministic order). File contents are written by worker threads; on a restore of many
small files from a local repository, batches of small files go to worker processes instead
(restore_worker.py), which create, write and finish them without sharing a GIL.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from rekindle.core.errors import IntegrityError, ObjectNotFoundError, RekindleError, UsageError
from rekindle.format.registry import NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node, safe_name
from rekindle.repository import restore_worker
from rekindle.repository.index import Location
from rekindle.repository.locks import shared_lock_if_writable
from rekindle.repository.repo import Repository
from rekindle.repository.restore_worker import (
    Outcome,
    finish_file,
    is_damage,
    make_new,
    open_new,
    reason_of,
    set_meta,
    write_content,
)

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)

MAX_INFLIGHT = 256
IS_ROOT = os.geteuid() == 0
# Small files go to the writer threads in batches (a task costs more interpreter time than
# writing a small file); big files are split into parts written in parallel.
BATCH_FILES = 64
PART_BYTES = 32 * 1024 * 1024
# Worker processes cost a start-up (an interpreter and the imports, about 0.2 s each): a
# restore turns to them once it has met this many small files.
PROCESS_AFTER_FILES = 2000
PROCESS_START_S = 120


@dataclass
class _Dir:
    """An open destination directory. Writer threads create small files in it, so it stays
    open, and its metadata (times, mode) waits, until the walk and every such file are done."""

    fd: int
    node: Node | None  # None: the target itself (its metadata is left alone)
    full: bool
    relb: bytes  # its path below the target (b"" for the target)
    #: Held until this directory is done: worker processes reach a directory by its path
    #: through its ancestors, so an ancestor's mode (maybe without search permission) waits.
    parent: _Dir | None = None
    refs: int = 1  # the walk's own reference
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _OpenFile:
    """A file being written, possibly by several threads (one per part)."""

    fd: int  # -1: not created yet; the writer thread creates it in `dir`
    node: Node
    relb: bytes
    parts: int
    dir: _Dir | None = None  # set when the writer thread creates the file
    failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Starting:
    """Worker processes being started: the pings each must answer."""

    pool: ProcessPoolExecutor
    wanted: int
    deadline: float
    pings: list[Future[int]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # pids that answered

    def ping(self) -> None:
        self.pings = [self.pool.submit(restore_worker.ping, 0.05) for _ in range(self.wanted)]


class Existing(StrEnum):
    """What to do with a file that already exists at the destination."""

    OVERWRITE = "overwrite"
    SKIP = "skip"
    RENAME = "rename"  # keep both: the restored file gets a ".restored-N" suffix


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    bytes_total: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    damaged: int = 0  # errors caused by damaged or missing repository data (not local I/O)
    worker_processes: int = 0  # how many worker processes wrote small files (0: threads only)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class RestoreOptions:
    includes: list[str] = field(default_factory=list)
    existing: Existing = Existing.OVERWRITE
    workers: int = 3
    restore_owner: bool = IS_ROOT
    #: Worker processes for batches of small files (None: one per CPU, up to 2, when the
    #: backend can be opened in another process; 0: threads only).
    processes: int | None = None
    #: How many small files the restore meets before it starts the worker processes.
    process_after_files: int = PROCESS_AFTER_FILES
    #: Wait for the worker processes to start instead of going on with threads meanwhile
    #: (a restore too small to outlast their start-up would otherwise never use them).
    wait_for_processes: bool = False


def norm_include(p: str) -> str:
    """An include path as the tree spells it: no leading or doubled '/', no '.'."""
    parts = [x for x in p.strip().split("/") if x not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"include path {p!r} may not contain '..'")
    return "/".join(parts)


def is_selected(rel: str, includes: list[str]) -> bool:
    """Does a restore of (normalized) `includes` restore the entry at `rel` (everything when
    there are none)?"""
    return not includes or any(rel == inc or rel.startswith(inc + "/") for inc in includes)


class Restorer:
    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        target: Path,
        options: RestoreOptions | None = None,
        progress: Callable[[RestoreStats], None] | None = None,
    ) -> None:
        self.repo = repo
        self.snapshot = snapshot
        self.target = target
        self.opts = options or RestoreOptions()
        self.stats = RestoreStats()
        self._includes = [norm_include(p) for p in self.opts.includes]
        self._slots = threading.BoundedSemaphore(MAX_INFLIGHT)
        self._links: dict[tuple[int, int], bytes] = {}  # (device, inode) -> path from root
        self._futures: list[Future[None]] = []
        self._small: list[tuple[_OpenFile, list[bytes | int], int, int]] = []
        self._local = threading.local()
        self._progress = progress
        self._small_seen = 0
        self._procs: ProcessPoolExecutor | None = None
        self._proc_batches = 0  # submitted to the processes and not yet accounted for
        self._proc_done = threading.Condition()
        self._procs_broken = False  # a worker process died: threads do the rest
        self._starting: _Starting | None = None  # worker processes starting up

    # -- selection -----------------------------------------------------------------------------
    def _wanted(self, rel: str) -> tuple[bool, bool]:
        """(restore this node fully, descend into it to reach an included path)."""
        if is_selected(rel, self._includes):
            return True, True
        return False, any(inc.startswith(rel + "/") for inc in self._includes)

    # -- top level -----------------------------------------------------------------------------
    def run(self) -> RestoreStats:
        self.target.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY)
        self._root_fd = root_fd
        try:
            with (
                shared_lock_if_writable(self.repo, "restore"),
                ThreadPoolExecutor(self.opts.workers, thread_name_prefix="restore") as pool,
            ):
                # After the lock: a tiering mark made since the repository was opened is
                # seen (its warm copies are read), or waits for this restore to end.
                self.repo.sync_index()
                self._pool = pool
                nodes = self.repo.load_tree(self.snapshot.tree)
                root = _Dir(root_fd, None, full=False, relb=b"", refs=2)  # never closed by refs
                try:
                    self._restore_dir(nodes, root, b"", "", full=not self._includes)
                    self._flush_small()
                    for f in self._futures:
                        f.result()
                    self._wait_processes()
                finally:
                    if self._starting is not None:  # never used
                        self._starting.pool.shutdown(wait=False, cancel_futures=True)
                    if self._procs is not None:
                        self._procs.shutdown(wait=True, cancel_futures=True)
        finally:
            os.close(root_fd)
        return self.stats

    def _error(self, path: bytes | str, reason: str, *, damaged: bool = False) -> None:
        p = os.fsdecode(path) if isinstance(path, bytes) else path
        with self.stats.lock:
            self.stats.errors.append((p, reason))
            self.stats.damaged += damaged

    def _restore_dir(
        self, nodes: list[Node], parent: _Dir, relb: bytes, rel: str, *, full: bool
    ) -> None:
        dir_fd = parent.fd
        seen: set[bytes] = set()
        for node in nodes:
            name = node.name
            child_relb = relb + b"/" + name if relb else name
            if not safe_name(name):
                self._error(child_relb, "unsafe name in restore point: not restored", damaged=True)
                continue
            if name in seen:
                self._error(
                    child_relb, "duplicate name in restore point: not restored", damaged=True
                )
                continue
            seen.add(name)
            child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
            restore_all, descend = (True, True) if full else self._wanted(child_rel)
            if not restore_all and not (descend and node.type is NodeType.DIR):
                continue
            try:
                if node.type is NodeType.DIR:
                    self._dir(node, parent, child_relb, child_rel, full=restore_all)
                elif node.type is NodeType.FILE:
                    self._file(node, parent, child_relb)
                elif node.type is NodeType.SYMLINK:
                    self._symlink(node, dir_fd)
                elif node.type in (NodeType.FIFO, NodeType.CHARDEV, NodeType.BLOCKDEV):
                    self._special(node, dir_fd)
                else:
                    continue  # sockets are recorded, never restored
            except (OSError, RekindleError) as e:
                self._error(child_relb, reason_of(e), damaged=is_damage(e))
        if len(self._small) >= BATCH_FILES // 4:
            self._flush_small()

    def _dir(self, node: Node, parent: _Dir, relb: bytes, rel: str, *, full: bool) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(node.name, 0o700, dir_fd=parent.fd)
        # O_NOFOLLOW: an existing symlink at this name fails here instead of being followed.
        fd = os.open(node.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent.fd)
        with parent.lock:
            parent.refs += 1
        d = _Dir(fd, node, full, relb, parent)
        try:
            with self.stats.lock:
                self.stats.dirs += 1
            children = self.repo.load_tree(node.subtree) if node.subtree else []
            self._restore_dir(children, d, relb, rel, full=full)
        finally:
            self._release_dir(d)

    def _release_dir(self, d: _Dir) -> None:
        with d.lock:
            d.refs -= 1
            last = d.refs == 0
        if not last:
            return
        try:
            if d.full and d.node is not None:
                set_meta(d.fd, d.node, restore_owner=self.opts.restore_owner)
        except OSError as e:
            self._error(d.relb, reason_of(e))
        finally:
            os.close(d.fd)
            if d.parent is not None:
                self._release_dir(d.parent)

    def _open_new(self, node: Node, dir_fd: int) -> tuple[int, bytes] | None:
        opened = open_new(node.name, dir_fd, self.opts.existing.value)
        if opened is None:
            with self.stats.lock:
                self.stats.skipped += 1
        return opened

    def _file(self, node: Node, parent: _Dir, relb: bytes) -> None:
        dir_fd = parent.fd
        linked = bool(node.nlink and node.nlink > 1 and node.inode is not None)
        if not linked and node.size <= PART_BYTES:
            # Created and written by a writer thread: file creation is the slow part of
            # restoring many small files, and it runs in parallel there.
            with self.stats.lock:
                self.stats.bytes_total += node.size
            self._slots.acquire()
            with parent.lock:
                parent.refs += 1
            f = _OpenFile(-1, node, relb, parts=1, dir=parent)
            self._small.append((f, list(node.content), 0, node.size))
            self._small_seen += 1
            if len(self._small) >= BATCH_FILES:
                self._flush_small()
            return
        if node.nlink and node.nlink > 1 and node.inode is not None and node.device is not None:
            key = (node.device, node.inode)
            first = self._links.get(key)
            if first is not None:
                self._link(first, node.name, dir_fd)
                return
        opened = self._open_new(node, dir_fd)
        if opened is None:
            return
        fd, actual = opened
        if node.nlink and node.nlink > 1 and node.inode is not None and node.device is not None:
            up = relb.rsplit(b"/", 1)[0] if b"/" in relb else b""
            self._links[(node.device, node.inode)] = up + b"/" + actual if up else actual
        with self.stats.lock:
            self.stats.bytes_total += node.size
        self._slots.acquire()
        try:
            parts = self._split(node)
        except BaseException:
            self._slots.release()
            os.close(fd)
            raise
        f = _OpenFile(fd, node, relb, parts=len(parts))
        if len(parts) == 1:
            self._small.append((f, *parts[0]))
            if len(self._small) >= BATCH_FILES:
                self._flush_small()
            return
        for items, start, end in parts:
            self._futures.append(self._pool.submit(self._write_part, f, items, start, end))

    def _split(self, node: Node) -> list[tuple[list[bytes | int], int, int]]:
        """Cut a file's content into parts of about PART_BYTES: (items, start, end)."""
        if node.size <= PART_BYTES:
            return [(list(node.content), 0, node.size)]
        parts: list[tuple[list[bytes | int], int, int]] = []
        items: list[bytes | int] = []
        start = pos = 0
        for i, item in enumerate(node.content):
            if isinstance(item, int):
                pos += item
            else:
                loc = self.repo.index.lookup(item)
                if loc is None:
                    # Missing chunk: the last part takes the rest and reports it.
                    return [*parts, ([*items, *node.content[i:]], start, node.size)]
                pos += loc.entry.raw_length
            items.append(item)
            if pos - start >= PART_BYTES:
                parts.append((items, start, pos))
                items, start = [], pos
        if items or not parts:
            parts.append((items, start, node.size))
        else:
            items_, start_, _ = parts[-1]
            parts[-1] = (items_, start_, node.size)
        return parts

    def _flush_small(self) -> None:
        batch, self._small = self._small, []
        procs = self._processes()
        if procs is not None:
            # Files the walk opened itself (hard links) stay with the threads: their
            # descriptors live in this process.
            theirs = [x for x in batch if x[0].fd < 0]
            batch = [x for x in batch if x[0].fd >= 0]
            if theirs and not self._submit_to_processes(procs, theirs):
                batch += theirs
        if batch:
            self._futures.append(self._pool.submit(self._write_batch, batch))

    # -- worker processes ----------------------------------------------------------------------
    def _processes(self) -> ProcessPoolExecutor | None:
        """The worker processes once they are running; None while threads do (before the
        restore has met enough small files, while the processes start, or when they cannot
        be used)."""
        if self._procs_broken:
            return None
        if self._procs is not None:
            return self._procs
        if self._starting is None:
            self._start_processes()
        while self._starting is not None:
            if self._check_started() is not None or not self.opts.wait_for_processes:
                break
            time.sleep(0.02)
        return self._procs

    def _start_processes(self) -> None:
        wanted = self.opts.processes
        if wanted is None:
            wanted = min(2, os.cpu_count() or 1) if (os.cpu_count() or 1) > 1 else 0
        if wanted <= 0 or self._small_seen < self.opts.process_after_files:
            return
        factory = self.repo.backend.reader_factory()
        if factory is None:  # a remote or rate-limited backend: threads do
            return
        # Imported here: backups import this module (through reach), and memory matters there.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        root = os.fstat(self._root_fd)
        # The workers look chunks up in the index file themselves (an in-memory index
        # cannot be shared: its locations go with each batch then).
        index_path = self.repo.index.path
        pool = ProcessPoolExecutor(
            wanted,
            # spawn, not fork: this process has threads (and their locks) by now.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=restore_worker.start,
            initargs=(
                factory,
                restore_worker.Setup(
                    master=self.repo.keys.master,
                    config=self.repo.config,
                    target=os.fsdecode(self.target.absolute()),
                    existing=self.opts.existing.value,
                    restore_owner=self.opts.restore_owner,
                    target_id=(root.st_dev, root.st_ino),
                    index_path=str(index_path.absolute()) if index_path else None,
                    index_id=self.repo.index.file_id,
                    cold=self.repo.index.cold,
                ),
            ),
        )
        self._starting = _Starting(pool, wanted, time.monotonic() + PROCESS_START_S)
        try:
            self._starting.ping()
        except Exception as e:  # noqa: BLE001 - any failure to start means: use threads
            self._processes_failed(e)

    def _check_started(self) -> ProcessPoolExecutor | None:
        """Every worker is started, and seen answering, before the first batch goes to them:
        once all are running, a submit never starts a process (and cannot half-fail doing
        so). The walk goes on with threads meanwhile; if they cannot start, threads do all."""
        st = self._starting
        if st is None:
            return self._procs
        try:
            if not all(p.done() for p in st.pings):
                if time.monotonic() > st.deadline:
                    raise TimeoutError(f"not started in {PROCESS_START_S} s")
                return None
            st.seen.update(p.result() for p in st.pings)
            if len(st.seen) < st.wanted:
                st.ping()  # one worker answered for another: ask again
                return None
        except Exception as e:  # noqa: BLE001 - any failure to start means: use threads
            self._processes_failed(e)
            return None
        self._starting = None
        self.stats.worker_processes = st.wanted
        self._procs = st.pool
        return st.pool

    def _processes_failed(self, e: BaseException) -> None:
        log.warning("restore worker processes could not start (%s); using threads", e)
        if self._starting is not None:
            self._starting.pool.shutdown(wait=False, cancel_futures=True)
            self._starting = None
        self._procs_broken = True

    def _submit_to_processes(
        self, procs: ProcessPoolExecutor, batch: list[tuple[_OpenFile, list[bytes | int], int, int]]
    ) -> bool:
        """Hand a batch to the worker processes; False if they are gone (nothing was done)."""
        where = None if self.repo.index.path else self._locations(batch)
        from concurrent.futures.process import BrokenProcessPool

        work = [restore_worker.job(f.dir.relb if f.dir else b"", f.node) for f, _, _, _ in batch]
        try:
            fut = procs.submit(restore_worker.write_batch, work, where)
        except BrokenProcessPool:
            self._procs_broken = True
            return False
        with self._proc_done:
            self._proc_batches += 1
        fut.add_done_callback(lambda done: self._processes_done(batch, done))
        return True

    def _processes_done(
        self,
        batch: list[tuple[_OpenFile, list[bytes | int], int, int]],
        fut: Future[list[restore_worker.Answer]],
    ) -> None:
        """Account for a batch the worker processes wrote (on the pool's result thread)."""
        try:
            outcomes = [Outcome(*a) for a in fut.result()]
            failure = "" if len(outcomes) == len(batch) else "a wrong number of answers"
        except BaseException as e:  # noqa: BLE001 - a worker that died fails its files, loudly
            outcomes, failure = [], f"{type(e).__name__}: {e}"
        if failure:
            # Its files may be partly written: they are reported, never retried over.
            why = f"the restore worker process failed ({failure}); restore this file again"
            outcomes = [Outcome("failed", reason=why)] * len(batch)
        try:
            for (f, _, _, _), o in zip(batch, outcomes, strict=True):
                try:
                    self._account(f, o)
                finally:
                    self._slots.release()
                    if f.dir is not None:
                        self._release_dir(f.dir)
        finally:
            with self._proc_done:
                self._proc_batches -= 1
                self._proc_done.notify_all()

    def _account(self, f: _OpenFile, o: Outcome) -> None:
        if o.state == "done":
            self._file_done(o.written)
        elif o.state == "skipped":
            with self.stats.lock:
                self.stats.skipped += 1
        else:
            self._error(f.relb, o.reason, damaged=o.damaged)

    def _file_done(self, written: int) -> None:
        """A file restored whole (`written`: its bytes not yet counted)."""
        with self.stats.lock:
            self.stats.files += 1
            self.stats.bytes_written += written
        if self._progress is not None:
            try:
                self._progress(self.stats)
            except Exception:
                log.exception("restore progress callback failed")  # the restore goes on

    def _wait_processes(self) -> None:
        with self._proc_done:
            while self._proc_batches:
                self._proc_done.wait()

    def _locations(
        self, batch: list[tuple[_OpenFile, list[bytes | int], int, int]]
    ) -> dict[bytes, list[Location]]:
        """One index query for the chunks of a whole batch instead of one per chunk."""
        return self.repo.index.lookup_many(
            i for _, items, _, _ in batch for i in items if isinstance(i, bytes)
        )

    def _write_batch(self, batch: list[tuple[_OpenFile, list[bytes | int], int, int]]) -> None:
        where = self._locations(batch)
        for f, items, start, end in batch:
            self._write_part(f, items, start, end, where)

    def _write_part(
        self,
        f: _OpenFile,
        items: list[bytes | int],
        start: int,
        end: int,
        where: dict[bytes, list[Location]] | None = None,
    ) -> None:
        if f.fd < 0:
            self._create_and_write(f, items, end, where)
            return
        try:
            if not f.failed:
                written = write_content(
                    self.repo,
                    f.fd,
                    items,
                    start=start,
                    end=end,
                    where=where,
                    scratch=self._scratch(),
                )
                with self.stats.lock:
                    self.stats.bytes_written += written
        except (OSError, IntegrityError, ObjectNotFoundError, RekindleError) as e:
            with f.lock:
                first = not f.failed
                f.failed = True
            if first:
                self._error(f.relb, reason_of(e), damaged=is_damage(e))
        with f.lock:
            f.parts -= 1
            last = f.parts == 0
        if last:
            self._finish_file(f)

    def _scratch(self) -> bytearray:
        """This thread's reusable decryption buffer."""
        buf: bytearray | None = getattr(self._local, "scratch", None)
        if buf is None:
            # The largest blob plaintext plus the codec byte: never needs to grow.
            buf = self._local.scratch = bytearray(self.repo.config.chunk_max + 1)
        return buf

    def _create_and_write(
        self,
        f: _OpenFile,
        items: list[bytes | int],
        end: int,
        where: dict[bytes, list[Location]] | None,
    ) -> None:
        assert f.dir is not None  # noqa: S101 - only queued that way
        try:
            opened = self._open_new(f.node, f.dir.fd)
        except OSError as e:
            self._error(f.relb, reason_of(e))
            opened = None
        if opened is None:  # skipped (existing file) or failed
            self._slots.release()
            self._release_dir(f.dir)
            return
        f.fd = opened[0]
        try:
            self._write_part(f, items, 0, end, where)
        finally:
            self._release_dir(f.dir)

    def _finish_file(self, f: _OpenFile) -> None:
        try:
            if not f.failed:
                finish_file(f.fd, f.node, restore_owner=self.opts.restore_owner)
                self._file_done(0)
        except OSError as e:
            self._error(f.relb, reason_of(e))
        finally:
            os.close(f.fd)
            self._slots.release()

    def _make_new(self, name: bytes, dir_fd: int, create: Callable[[bytes], None]) -> bytes | None:
        """An entry that is not a regular file, under the --existing policy: the name it got,
        or None if skipped (counted)."""
        made = make_new(name, dir_fd, self.opts.existing.value, create)
        if made is None:
            with self.stats.lock:
                self.stats.skipped += 1
            return None
        return made[1]

    def _link(self, first: bytes, name: bytes, dir_fd: int) -> None:
        """Another name of a file already restored (at `first`, below the target)."""

        def link(to: bytes) -> None:
            os.link(first, to, src_dir_fd=self._root_fd, dst_dir_fd=dir_fd, follow_symlinks=False)

        if self._make_new(name, dir_fd, link) is not None:
            with self.stats.lock:
                self.stats.files += 1

    def _symlink(self, node: Node, dir_fd: int) -> None:
        target = node.link_target
        if target is None:
            raise IntegrityError("symlink without target")
        name = self._make_new(node.name, dir_fd, lambda n: os.symlink(target, n, dir_fd=dir_fd))
        if name is None:
            return
        if self.opts.restore_owner:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _special(self, node: Node, dir_fd: int) -> None:
        if node.type is NodeType.FIFO:

            def create(n: bytes) -> None:
                os.mkfifo(n, 0o600, dir_fd=dir_fd)
        else:
            if not IS_ROOT:
                raise OSError(errno.EPERM, "device nodes can be restored by root only")
            kind = stat.S_IFCHR if node.type is NodeType.CHARDEV else stat.S_IFBLK

            def create(n: bytes) -> None:
                os.mknod(n, kind | 0o600, node.rdev or 0, dir_fd=dir_fd)

        name = self._make_new(node.name, dir_fd, create)
        if name is None:
            return
        if self.opts.restore_owner:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(name, node.mode, dir_fd=dir_fd)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd)


def restore(
    repo: Repository,
    snapshot: Snapshot,
    target: Path,
    options: RestoreOptions | None = None,
    progress: Callable[[RestoreStats], None] | None = None,
) -> RestoreStats:
    return Restorer(repo, snapshot, target, options, progress).run()
