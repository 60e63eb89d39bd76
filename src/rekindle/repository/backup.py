"""Backup: walk paths, store new content, write trees and a restore point.

The main thread walks directories (scandir + lstat) and builds tree nodes; worker threads
read files, cut them into chunks, hash, deduplicate, compress and encrypt (BLAKE3, zstd,
AES-GCM and FastCDC all release the GIL, so both cores work). Directories are finalized in
post-order, lazily, so the walker keeps submitting work while workers are busy.

Never fails a backup because one file cannot be read: such files are *missed* (recorded with
the reason in the restore point) and tried again next time. A file whose size or times change
while it is read is stored as read and flagged.
"""

from __future__ import annotations

import errno
import grp
import logging
import mmap
import os
import pwd
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rekindle import __version__

if TYPE_CHECKING:
    import pathspec

    from rekindle.repository.backup_procs import WorkerProcesses
from rekindle.core.errors import RekindleError, UsageError
from rekindle.format import codec
from rekindle.format.chunker import Chunker
from rekindle.format.registry import BlobKind, NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import TREE_VERSION, ContentItem, Node, encode_tree
from rekindle.repository.backup_worker import (
    FileOutcome,
    Xattrs,
    open_for_reading,
    read_small,
    read_xattrs,
    same_file,
    stat_key,
)
from rekindle.repository.filescache import DIR_RECORD, DirEntries, FilesCache, Owners
from rekindle.repository.locks import Lock
from rekindle.repository.repo import Repository
from rekindle.repository.writer import BlobWriter

log = logging.getLogger(__name__)

READ_SEGMENT = 2 * 1024 * 1024
# Files are handed to the reader threads in batches (one task per batch, not per file): a
# task costs more interpreter time than reading a small file.
BATCH_FILES = 64
# Small files for the worker processes are gathered across directories (a directory often
# holds a few dozen): fewer, larger batches mean fewer round trips through this process.
PROCESS_BATCH_FILES = 256
BATCH_BYTES = 8 * 1024 * 1024
MAX_INFLIGHT_FILES = 4096  # finalize finished directories beyond this many queued files
MAX_QUEUED_DIRS = 256  # ... or beyond this many walked directories (bounds memory)
# Worker processes cost a start-up (an interpreter and the imports, about 0.1 s of CPU
# each): a backup starts them once it has met this many small files to read.
PROCESS_AFTER_FILES = 1000


FIND_PARENT = "find"


@dataclass
class BackupOptions:
    paths: list[str]
    excludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    server: str | None = None
    workers: int = 3
    cwd: str | None = None  # where relative paths are resolved (default: os.getcwd())
    # Count the files ahead of the backup for an ETA. Costs interpreter time (the GIL), so
    # only worth it when someone watches the progress.
    estimate: bool = True
    #: Asked before each file: True stops the backup cleanly (a backup window closed, an
    #: admin cancelled). What was stored so far is indexed, so the next run skips it.
    should_stop: Callable[[], bool] | None = None
    #: Read a backup path's content from another directory (a filesystem snapshot of it),
    #: while the restore point records the path as given: {path as given: where to read}.
    read_from: dict[str, str] = field(default_factory=dict)
    #: The parent restore point to record: FIND_PARENT looks for the newest of this host and
    #: these paths (reads every restore point); a caller that knows it (the cloud's catalog)
    #: gives its id, or None for a first backup.
    parent: str | None = FIND_PARENT
    #: Worker processes that read and store small files (backup_worker.py). None: one per
    #: CPU, up to 2, when the repository can be written from another process (a local one
    #: or a storage node: `Backend.writer_factory`); 0: threads only.
    processes: int | None = None
    #: How many small files to read the backup meets before it starts the processes.
    process_after_files: int = PROCESS_AFTER_FILES
    #: Wait for the worker processes to start instead of going on with threads meanwhile
    #: (for tests).
    wait_for_processes: bool = False
    #: A directory with an entry whose ctime is this recent keeps no record for reusing its
    #: tree: a change in the same clock tick as the walk's lstat would not move the ctime.
    settle_s: float = 1.0


class BackupStopped(RekindleError):  # noqa: N818 - a stop on request, not a failure
    """The backup was stopped on request before it finished. No restore point was written;
    the data already uploaded is in the index and the next backup reuses it."""

    def __init__(self, stats: BackupStats) -> None:
        super().__init__(
            f"backup stopped on request after {stats.files_done} files; "
            "the next backup continues from what was stored"
        )
        self.stats = stats


@dataclass
class BackupStats:
    """Counters updated while a backup runs; read by progress displays."""

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    dirs_unmodified: int = 0  # directories whose tree was reused from the files cache
    bytes_total: int = 0  # size of every file seen
    bytes_read: int = 0  # bytes actually read
    bytes_added: int = 0  # stored bytes of new packs
    blobs_added: int = 0
    scan_files: int = 0  # totals from the scanner thread (for ETA)
    scan_bytes: int = 0
    scan_done: bool = False
    missed: list[tuple[str, str]] = field(default_factory=list)
    changed_while_read: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    worker_processes: int = 0  # worker processes that read small files (0: threads only)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def files_done(self) -> int:
        return self.files_new + self.files_changed + self.files_unmodified

    def as_dict(self) -> dict[str, int | float]:
        return {
            "files_new": self.files_new,
            "files_changed": self.files_changed,
            "files_unmodified": self.files_unmodified,
            "dirs": self.dirs,
            "dirs_unmodified": self.dirs_unmodified,
            "total_bytes": self.bytes_total,
            "bytes_read": self.bytes_read,
            "data_added": self.bytes_added,
            "blobs_added": self.blobs_added,
            "missed": len(self.missed),
            "changed_while_read": len(self.changed_while_read),
            "duration": round(time.monotonic() - self.started, 3),
        }


@dataclass
class BackupResult:
    snapshot: Snapshot
    stats: BackupStats


#: A file to read: its node, the path it is read from, its stat, and new|changed.
_Queued = tuple[Node, bytes, os.stat_result, bytes]

#: A file read: its content, whether it changed while read, its bytes not yet counted, and
#: its xattrs.
_Read = tuple[list[ContentItem], bool, int, Xattrs]


#: A file handed to a reader: its node, its batch's future and its place in the batch, its
#: stat, new|changed, and the path it is read from (with `read_from`, not the recorded one).
_Pending = tuple[Node, Future[list[FileOutcome]], int, os.stat_result, bytes, bytes]


@dataclass
class _Frame:
    """A walked directory waiting for its files' content before its tree can be written."""

    path: bytes
    node: Node | None  # the directory's node in its parent (None for the root)
    nodes: list[Node]
    pending: list[_Pending]
    cache_entries: DirEntries
    # Files found but not yet handed to a reader thread: (node, path, stat, new|changed).
    queued: list[_Queued] = field(default_factory=list)
    gathered: int = 0  # its files gathered for the worker processes, not yet sent
    # What the files cache holds for the directory: read once when its walk starts, dropped
    # when it ends (a walk returning from a subdirectory needs it again).
    cached: DirEntries | None = None
    # Whether what `cached` names is known to be in the repository (else: check the index).
    trusted: bool = False
    # While every entry is as the files cache recorded it: the directory's record there
    # (see `_reused_tree`); None once one differs.
    record: list[Any] | None = None
    # Unchanged files whose node is only built if the tree cannot be reused: name, path, stat
    # and cache entry.
    hits: list[tuple[bytes, bytes, os.stat_result, list[Any]]] = field(default_factory=list)
    # The identity of each entry that is not a regular file, for the directory's record.
    others: dict[bytes, list[Any]] = field(default_factory=dict)
    dev: int | None = None  # st_dev of every entry; None if they differ
    settled: bool = True  # no entry changed within `settle_s` of the backup's start


_NODE_TYPES = {
    stat.S_IFREG: NodeType.FILE,
    stat.S_IFDIR: NodeType.DIR,
    stat.S_IFLNK: NodeType.SYMLINK,
    stat.S_IFCHR: NodeType.CHARDEV,
    stat.S_IFBLK: NodeType.BLOCKDEV,
    stat.S_IFIFO: NodeType.FIFO,
    stat.S_IFSOCK: NodeType.SOCKET,
}


def _access(st: os.stat_result) -> list[int]:
    """Mode, owner and link count: kept for every entry, files included (they move the
    ctime, except where they come from a mapping: id-mapped mounts, user namespaces)."""
    return [st.st_mode, st.st_uid, st.st_gid, st.st_nlink]


def _file_entry(st: os.stat_result, content: list[ContentItem], xattrs: Xattrs) -> list[Any]:
    """A file's entry in the files cache (filescache.DirEntries)."""
    return [*stat_key(st), content, xattrs, *_access(st)]


def _same_content(cached: list[Any], st: os.stat_result) -> bool:
    """A file's files-cache entry still tells its content: the same `stat_key` (size,
    mtime, ctime and inode)."""
    return cached[:4] == list(stat_key(st))


def _from_cache(node: Node, cached: list[Any]) -> None:
    """An unchanged file's content and xattrs, from its files-cache entry (with six fields
    or more: setting or removing an xattr moves the ctime, so its xattrs are as cached)."""
    node.content = list(cached[4])
    node.xattrs = [(bytes(k), bytes(v)) for k, v in cached[5]]


def _identity(st: os.stat_result) -> list[int]:
    """What the record of a directory keeps of an entry that is not a regular file."""
    return [st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size, *_access(st)]


class _Owners:
    """User and group names by id, each looked up once per backup."""

    def __init__(self) -> None:
        self.names: Owners = {"u": {}, "g": {}}

    def lookup(self, uid: int, gid: int) -> tuple[str | None, str | None]:
        users, groups = self.names["u"], self.names["g"]
        if uid not in users:
            users[uid] = _user_name(uid)
        if gid not in groups:
            groups[gid] = _group_name(gid)
        return users[uid], groups[gid]

    def still(self, known: Owners) -> bool:
        """Whether every name in `known` is still the name of its id; they are kept if so
        (trees written with them may be reused, and the next backup checks them again)."""
        now: Owners = {
            "u": {uid: _user_name(uid) for uid in known.get("u", {})},
            "g": {gid: _group_name(gid) for gid in known.get("g", {})},
        }
        if now != known:
            return False
        for kind, names in now.items():
            self.names[kind].update(names)
        return True


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _gitignore(patterns: list[str]) -> pathspec.GitIgnoreSpec:
    import pathspec  # only when there are patterns: a tenth of the start-up otherwise

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _batch_end(sizes: Sequence[int], start: int, files: int) -> int:
    """Where the batch starting at `start` ends: at least one file, then up to `files`
    files or BATCH_BYTES bytes."""
    end = start + 1
    size = sizes[start]
    while end < len(sizes) and end - start < files and size < BATCH_BYTES:
        size += sizes[end]
        end += 1
    return end


def _sparse(st: os.stat_result) -> bool:
    return st.st_size > 0 and st.st_blocks * 512 < st.st_size


class Archiver:
    def __init__(
        self, repo: Repository, options: BackupOptions, stats: BackupStats | None = None
    ) -> None:
        self.repo = repo
        self.opts = options
        self.stats = stats or BackupStats()
        self.writer = BlobWriter(repo)
        self._chunkers = threading.local()
        self._owners = _Owners()
        self._reuse_trees = False  # decided in run(): no user or group name changed
        self._spec = _gitignore(options.excludes) if options.excludes else None
        cache_path = repo.cache_dir / "files.sqlite" if repo.cache_dir else None
        self.files_cache = FilesCache(cache_path)
        self._owners_epoch = 0  # decided in run(), with _reuse_trees
        self._settled_before_ns = 0
        self._frames: deque[_Frame] = deque()
        self._inflight = 0
        self._root_dev: int | None = None
        self._parent: str | None = None
        self._started_at = repo.clock.now()
        self._procs: WorkerProcesses | None = None
        #: Small files gathered for the worker processes: (frame, node, path, stat, how).
        self._for_procs: list[tuple[_Frame, Node, bytes, os.stat_result, bytes]] = []
        self._for_procs_bytes = 0
        self._procs_tried = False
        self._small_seen = 0

    # -- worker side ------------------------------------------------------------------------
    def _chunker(self) -> Chunker:
        c: Chunker | None = getattr(self._chunkers, "c", None)
        if c is None:
            c = self._chunkers.c = Chunker(self.repo.config, self.repo.keys.chunker_seed)
        return c

    def _store_chunk(self, chunk: bytes | memoryview) -> bytes:
        cid = self.repo.keys.chunk_id(chunk)
        if self.writer.reserve(cid):
            payload = codec.encode(chunk, self.repo.config.zstd_level)
            self.writer.store(BlobKind.DATA, cid, payload, len(chunk))
        return cid

    def _read_buffer(self) -> memoryview:
        """A read buffer for one file: a segment plus the largest possible carry (6 MiB).

        Anonymous memory of its own, unmapped when the file is done (the buffer's last view
        goes): a thread that read a large file does not keep 6 MiB through the thousands of
        small files that may follow (which need no buffer). Touching fresh pages costs about
        1 ms per 6 MiB, small beside reading a file this size."""
        return memoryview(mmap.mmap(-1, READ_SEGMENT + self.repo.config.chunk_max))

    def _chunk_stream(
        self,
        fd: int,
        start: int,
        length: int | None,
        content: list[ContentItem],
        buf: memoryview,
    ) -> int:
        """Chunk bytes [start, start+length) of fd (to EOF if length is None).

        Reads into `buf` (from `_read_buffer`); the unfinished last chunk of each segment
        moves to the buffer's front and is cut again with what follows, so boundaries depend
        on content alone, never on where a read ended."""
        chunker = self._chunker()
        filled = 0  # bytes carried over at the front of buf
        pos = start
        total = 0
        while True:
            if self._stop_requested():
                raise _StopRequested  # mid-file: what was stored stays; the file is redone
            want = READ_SEGMENT if length is None else min(READ_SEGMENT, start + length - pos)
            n = os.preadv(fd, [buf[filled : filled + want]], pos) if want > 0 else 0
            pos += n
            total += n
            eof = n < want or want == 0 or (length is not None and pos >= start + length)
            end = filled + n
            if end == 0:
                break
            pieces = list(chunker.cut(buf[:end]))
            carry = 0 if eof else len(pieces.pop())
            for piece in pieces:
                content.append(self._store_chunk(piece))
            del pieces
            with self.stats.lock:
                self.stats.bytes_read += n
            if eof:
                break
            buf[:carry] = buf[end - carry : end]
            filled = carry
        return total

    def _stop_requested(self) -> bool:
        return self.opts.should_stop is not None and self.opts.should_stop()

    def _read_batch(self, files: list[tuple[bytes, os.stat_result]]) -> list[FileOutcome]:
        return [self._read_one(path, st) for path, st in files]

    def _read_one(self, path: bytes, st: os.stat_result) -> _Read | OSError:
        try:
            return self._read_file(path, st)
        except OSError as e:
            return e

    def _outcome(
        self, fut: Future[list[FileOutcome]], k: int, path: bytes, st: os.stat_result
    ) -> _Read | OSError:
        """How reading one file went, once its batch is done."""
        res = fut.result()[k]
        if isinstance(res, str):  # GREW: a worker process met a file no longer small
            return self._read_one(path, st)
        return res

    def _read_file(self, path: bytes, st: os.stat_result) -> _Read:
        fd = open_for_reading(path)
        try:
            content: list[ContentItem] = []
            small = self.repo.config.chunk_min
            if _sparse(st):
                self._read_sparse(fd, st.st_size, content)
            elif st.st_size <= small:
                # A small file is one chunk (FORMAT.md): one read, no chunker.
                data = read_small(fd, st.st_size, small)
                if len(data) > small:  # it grew since the scan: chunk it properly
                    self._chunk_stream(fd, 0, None, content, self._read_buffer())
                else:
                    with self.stats.lock:
                        self.stats.bytes_read += len(data)
                    if data:
                        content.append(self._store_chunk(data))
            else:
                self._chunk_stream(fd, 0, None, content, self._read_buffer())
            after = os.fstat(fd)
            xattrs = read_xattrs(fd)
        finally:
            os.close(fd)
            self.writer.release_scratch()  # like the read buffer, not kept for the next file
        return content, not same_file(st, after), 0, xattrs  # its bytes are counted as read

    def _read_sparse(self, fd: int, size: int, content: list[ContentItem]) -> None:
        buf: memoryview | None = None  # one for all the file's data regions
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data_start = size  # only a hole remains
            if data_start > pos:
                content.append(data_start - pos)
                pos = data_start
            if pos >= size:
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            if buf is None:
                buf = self._read_buffer()
            self._chunk_stream(fd, pos, hole - pos, content, buf)
            pos = hole

    # -- walker side --------------------------------------------------------------------------
    def _excluded(self, rel: str, is_dir: bool) -> bool:
        if self._spec is None:
            return False
        return self._spec.match_file(rel + "/" if is_dir else rel)

    def _node(self, name: bytes, st: os.stat_result, path: bytes, *, xattrs: bool = True) -> Node:
        """The node of a directory entry; a regular file's xattrs are left to `_add_file`
        (`xattrs` False), which takes them from the files cache when the file is unchanged."""
        mode = st.st_mode
        t = _NODE_TYPES.get(stat.S_IFMT(mode), NodeType.SOCKET)
        user, group = self._owners.lookup(st.st_uid, st.st_gid)
        node = Node(
            name=name,
            type=t,
            mode=stat.S_IMODE(mode),
            uid=st.st_uid,
            gid=st.st_gid,
            user=user,
            group=group,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
        )
        if t is NodeType.FILE:
            node.size = st.st_size
            if st.st_nlink > 1:
                node.inode, node.device, node.nlink = st.st_ino, st.st_dev, st.st_nlink
        elif t is NodeType.SYMLINK:
            node.link_target = os.readlink(path)
        elif t in (NodeType.CHARDEV, NodeType.BLOCKDEV):
            node.rdev = st.st_rdev
        if t is not NodeType.SYMLINK and (xattrs or t is not NodeType.FILE):
            node.xattrs = read_xattrs(path)
        return node

    def _add_file(self, frame: _Frame, node: Node, path: bytes, st: os.stat_result) -> None:
        with self.stats.lock:
            self.stats.bytes_total += st.st_size
        cached = frame.cached.get(node.name) if frame.cached else None
        if (
            cached is not None
            and _same_content(cached, st)
            and self._cached_content_ok(cached[4], frame.trusted)
        ):
            if len(cached) > 5:  # one listxattr less per unchanged file
                _from_cache(node, cached)
            else:  # a cache entry from before xattrs were kept in it
                node.content, node.xattrs = list(cached[4]), read_xattrs(path)
            frame.cache_entries[node.name] = _file_entry(st, cached[4], node.xattrs)
            with self.stats.lock:
                self.stats.files_unmodified += 1
            return
        # Its xattrs are read with its content, from the open file.
        frame.queued.append((node, path, st, b"changed" if cached is not None else b"new"))
        self._inflight += 1

    def _submit_queued(self, frame: _Frame) -> None:
        """Hand the frame's queued files to the worker processes (small files, once they
        run) or the reader threads, in batches."""
        queued, frame.queued = frame.queued, []
        if not queued:
            return
        limit = self.repo.config.chunk_min
        small: list[_Queued] = []
        other: list[_Queued] = []
        for q in queued:
            (small if q[2].st_size <= limit and not _sparse(q[2]) else other).append(q)
        procs = self._processes(len(small))
        if procs is not None and small:
            queued = other
            for q in small:
                self._for_procs.append((frame, *q))
                self._for_procs_bytes += q[2].st_size
            frame.gathered += len(small)
            if len(self._for_procs) >= PROCESS_BATCH_FILES or self._for_procs_bytes >= BATCH_BYTES:
                self._submit_to_processes(procs)
        self._submit_to_threads(frame, queued)

    def _submit_to_threads(self, frame: _Frame, queued: list[_Queued]) -> None:
        sizes = [q[2].st_size for q in queued]
        i = 0
        while i < len(queued):
            end = _batch_end(sizes, i, BATCH_FILES)
            batch, i = queued[i:end], end
            fut = self._pool.submit(self._read_batch, [(p, st) for _, p, st, _ in batch])
            for k, (node, path, st, how) in enumerate(batch):
                frame.pending.append((node, fut, k, st, how, path))

    # -- worker processes ----------------------------------------------------------------------
    def _processes(self, small: int) -> WorkerProcesses | None:
        """The worker processes, started once the backup has met enough small files; None
        while there are none (not yet, not wanted, or the repository is not local)."""
        if self._procs is not None or self._procs_tried:
            return self._procs
        self._small_seen += small
        if self._small_seen < self.opts.process_after_files:
            return None
        self._procs_tried = True
        wanted = self.opts.processes
        if wanted is None:
            cpus = os.cpu_count() or 1
            wanted = min(2, cpus) if cpus > 1 else 0
        factory = self.repo.backend.writer_factory()
        if wanted <= 0 or factory is None:
            return None
        from rekindle.repository.backup_procs import WorkerProcesses
        from rekindle.repository.backup_worker import Setup

        def read(n: int) -> None:
            with self.stats.lock:
                self.stats.bytes_read += n

        try:
            self._procs = WorkerProcesses(
                Setup(master=self.repo.keys.master, config=self.repo.config, factory=factory),
                wanted,
                self.writer,
                read,
            )
        except OSError as e:  # cannot start a process at all: threads do everything
            log.warning("backup worker processes could not start (%s); using threads", e)
        return self._procs

    def _submit_to_processes(self, procs: WorkerProcesses, *, need: _Frame | None = None) -> None:
        """Hand the small files gathered so far to the worker processes in batches. While
        the workers are still starting, the files stay gathered (the limits on files in
        flight bound them), except those of `need`, a directory whose content is needed
        now: the threads read those, as they read all of them if no worker can start."""
        gathered = self._for_procs
        self._for_procs, self._for_procs_bytes = [], 0
        sizes = [g[3].st_size for g in gathered]
        i = 0
        while i < len(gathered):
            end = _batch_end(sizes, i, PROCESS_BATCH_FILES)
            batch = gathered[i:end]
            fut = procs.submit(
                [(p, stat_key(st)) for _, _, p, st, _ in batch],
                wait=self.opts.wait_for_processes,
            )
            if fut is None:
                break
            i = end
            for k, (frame, node, path, st, how) in enumerate(batch):
                frame.pending.append((node, fut, k, st, how, path))
                frame.gathered -= 1
        rest = gathered[i:]
        if rest and procs.starting:
            self._for_procs = [g for g in rest if g[0] is not need]
            self._for_procs_bytes = sum(g[3].st_size for g in self._for_procs)
            rest = [g for g in rest if g[0] is need]
        # To the threads, each directory's files together.
        j = 0
        while j < len(rest):
            frame = rest[j][0]
            end = j
            while end < len(rest) and rest[end][0] is frame:
                end += 1
            frame.gathered -= end - j
            self._submit_to_threads(frame, [(n, p, st, how) for _, n, p, st, how in rest[j:end]])
            j = end

    def _send_gathered(self, frame: _Frame) -> None:
        """Before waiting for a directory's content: none of its files may still wait to be
        sent."""
        if frame.gathered and self._procs is not None:
            self._submit_to_processes(self._procs, need=frame)

    def _cached_content_ok(self, content: list[ContentItem], trusted: bool) -> bool:
        if trusted:
            return True
        ids = [c for c in content if isinstance(c, bytes)]
        return not self.repo.index.missing(ids)

    def _walk_dir(self, path: bytes, rel: str, node: Node | None) -> None:
        """Walk one directory (recursively); queue it for finalization."""
        frame = _Frame(path, node, [], [], {})
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self._miss(path, e)
            if node is not None:
                node.subtree = []
            entries = []
        with self.stats.lock:
            self.stats.dirs += 1
        got = self.files_cache.get(path) if entries else None
        if got is not None:
            frame.cached, frame.trusted = got
            if self._reuse_trees:
                frame.record = frame.cached.get(DIR_RECORD)
        prefix = path if path.endswith(b"/") else path + b"/"
        spec = self._spec  # the relative paths are only built when there are excludes
        child_rel = ""
        dev: int | None = -1  # the st_dev of every entry: -1 before the first, None if they differ
        for entry in entries:
            if self._stop_requested():
                raise _StopRequested
            name = entry.name if isinstance(entry.name, bytes) else os.fsencode(entry.name)
            child = prefix + name
            try:
                st = entry.stat(follow_symlinks=False)
                if spec is not None:
                    child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
                    if self._excluded(child_rel, stat.S_ISDIR(st.st_mode)):
                        continue
                if dev is not None and st.st_dev != dev:
                    dev = st.st_dev if dev == -1 else None
                if st.st_ctime_ns >= self._settled_before_ns:
                    frame.settled = False
                if frame.record is not None and self._unchanged_file(frame, name, child, st):
                    continue
                child_node = self._node(name, st, child, xattrs=not stat.S_ISREG(st.st_mode))
            except OSError as e:
                self._miss(child, e)
                continue
            frame.nodes.append(child_node)
            if child_node.type is NodeType.FILE:
                frame.record = None
                self._add_file(frame, child_node, child, st)
                continue
            ident = _identity(st)
            frame.others[name] = ident
            if frame.record is not None and frame.record[1].get(name, [])[:8] != ident:
                frame.record = None
            if child_node.type is NodeType.DIR:
                if self.opts.one_file_system and st.st_dev != self._root_dev:
                    continue  # a mount point: recorded as an empty directory
                self._submit_queued(frame)  # keep the readers busy while we descend
                self._walk_dir(child, child_rel, child_node)
        frame.dev = dev if dev != -1 else None
        record = frame.record
        if record is not None and (
            len(frame.hits) + len(frame.others) != record[4]
            or frame.dev is None
            or record[2] != frame.dev
            or record[3] != TREE_VERSION
            or record[5] != self._owners_epoch
        ):
            # An entry is gone, or the device, the tree format or a user's name changed.
            frame.record = None
        frame.cached = None
        self._submit_queued(frame)
        self._frames.append(frame)
        while len(self._frames) > 1 and (
            self._inflight > MAX_INFLIGHT_FILES or len(self._frames) > MAX_QUEUED_DIRS
        ):
            self._finalize(self._frames.popleft())

    def _unchanged_file(self, frame: _Frame, name: bytes, path: bytes, st: os.stat_result) -> bool:
        """A regular file as the files cache recorded it, while the directory's tree may
        still be reused: its node is left to `_hit_nodes`."""
        if not stat.S_ISREG(st.st_mode):
            return False
        cached = frame.cached.get(name) if frame.cached else None
        if (
            cached is None
            or len(cached) < 10
            or not _same_content(cached, st)
            or cached[6:10] != _access(st)
            or not self._cached_content_ok(cached[4], frame.trusted)
        ):
            return False
        frame.hits.append((name, path, st, cached))
        frame.cache_entries[name] = cached
        with self.stats.lock:
            self.stats.bytes_total += st.st_size
            self.stats.files_unmodified += 1
        return True

    def _hit_nodes(self, frame: _Frame) -> list[Node]:
        """The nodes of the unchanged files `_unchanged_file` left, for a tree that is
        encoded after all."""
        nodes = []
        for name, path, st, cached in frame.hits:
            node = self._node(name, st, path, xattrs=False)
            _from_cache(node, cached)
            nodes.append(node)
        return nodes

    def _reused_tree(self, frame: _Frame) -> list[bytes] | None:
        """The directory's tree ids from its record in the files cache, if the walk found
        every entry as recorded (`_walk_dir`: files by `_unchanged_file`, other entries by
        `_identity`, the entry count, device, tree version and owners epoch) and each
        subdirectory's tree came out the same; checked against the index unless the row is
        trusted (docs/architecture.md, "Files cache")."""
        record = frame.record
        if record is None or frame.pending:
            return None
        for node in frame.nodes:
            if node.type is NodeType.DIR and record[1][node.name][8:] != [node.subtree]:
                return None
        ids: list[bytes] = record[0]
        if not frame.trusted and self.repo.index.missing(ids):
            return None
        with self.stats.lock:
            self.stats.dirs_unmodified += 1
        return ids

    def _finalize(self, frame: _Frame) -> list[bytes]:
        self._send_gathered(frame)
        missed: set[int] = set()
        for node, fut, k, st, how, path in frame.pending:
            self._inflight -= 1
            res = self._outcome(fut, k, path, st)
            if isinstance(res, OSError):
                self._miss(os.path.join(frame.path, node.name), res)
                missed.add(id(node))
                continue
            content, changed, _, node.xattrs = res
            node.content = content
            with self.stats.lock:
                if how == b"new":
                    self.stats.files_new += 1
                else:
                    self.stats.files_changed += 1
            if changed:
                node.changed_while_read = True
                self.stats.changed_while_read.append(
                    os.fsdecode(os.path.join(frame.path, node.name))
                )
            else:
                frame.cache_entries[node.name] = _file_entry(st, content, node.xattrs)
        count = len(frame.nodes) - len(missed) + len(frame.hits)  # entries in the tree
        ids = self._reused_tree(frame)
        if ids is None:
            nodes = [n for n in frame.nodes if id(n) not in missed]
            nodes.extend(self._hit_nodes(frame))
            ids = self.store_tree(nodes)
        frame.hits = []
        if frame.node is not None:
            frame.node.subtree = ids
        if frame.dev is not None and frame.settled:
            for n in frame.nodes:
                if n.type is NodeType.DIR:
                    frame.others[n.name].append(n.subtree)
            frame.cache_entries[DIR_RECORD] = [
                ids,
                frame.others,
                frame.dev,
                TREE_VERSION,
                count,
                self._owners_epoch,
            ]
        self.files_cache.put(frame.path, frame.cache_entries)
        return ids

    def store_tree(self, nodes: list[Node]) -> list[bytes]:
        data = encode_tree(nodes)
        ids = []
        for piece in self._chunker().cut(data):
            cid = self.repo.keys.chunk_id(piece)
            if self.writer.reserve(cid):
                self.writer.store_plain(BlobKind.TREE, cid, bytes(piece))
            ids.append(cid)
        return ids

    def _miss(self, path: bytes, e: OSError) -> None:
        reason = e.strerror or type(e).__name__
        with self.stats.lock:
            self.stats.missed.append((os.fsdecode(path), reason))

    # -- top level ----------------------------------------------------------------------------
    def run(self) -> BackupResult:
        from rekindle.repository.scan import start_scanner

        cwd = self.opts.cwd or os.getcwd()
        layout = plan_paths(self.opts.paths, cwd)
        recorded = [p for _, p in layout.leaves]
        if self.opts.read_from:
            layout = _read_elsewhere(layout, self.opts.read_from, cwd)
        with (
            Lock(self.repo, "backup"),
            ThreadPoolExecutor(self.opts.workers, thread_name_prefix="read") as pool,
        ):
            # Look at the index only after taking the lock: a prune that condemned blobs
            # before this point has already removed them from the index files, and one
            # that condemns them later waits for this lock (FORMAT.md section 12).
            self.repo.sync_index()
            self.files_cache.begin(self.repo.index_file_names())
            epoch, known = self.files_cache.owners()
            self._reuse_trees = self._owners.still(known)
            # A renamed user or group: trees recorded before are never reused again.
            self._owners_epoch = epoch if self._reuse_trees else epoch + 1
            self._settled_before_ns = time.time_ns() - int(self.opts.settle_s * 1e9)
            self._pool = pool
            scanner = (
                start_scanner([p for _, p in layout.leaves], self.stats)
                if self.opts.estimate
                else None
            )
            try:
                try:
                    root_ids = self._backup_layout(layout, recorded)
                except _StopRequested:
                    # Let the files being read finish, then index everything stored.
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._flush()
                    stopped = True
                else:
                    self._flush()
                    stopped = False
            finally:
                if scanner is not None:
                    scanner.stop()
                # No reader may still be storing when the writer closes its pack files.
                pool.shutdown(wait=True, cancel_futures=True)
                if self._procs is not None:
                    self.stats.worker_processes = self._procs.count
                    self._procs.close()
                self.writer.close()
            with self.stats.lock:
                self.stats.bytes_added = self.writer.bytes_added
                self.stats.blobs_added = self.writer.blobs_added
            if stopped:
                raise BackupStopped(self.stats)
            snap = Snapshot(
                time=self._started_at,
                host=self.opts.host or os.uname().nodename,
                server=self.opts.server,
                paths=[p.decode("utf-8", "surrogateescape") for p in recorded],
                tree=root_ids,
                program=f"rekindle {__version__}",
                parent=self._parent,
                tags=list(self.opts.tags),
                user=_user(),
                excludes=list(self.opts.excludes),
                stats=self.stats.as_dict(),
                missed=list(self.stats.missed),
            )
            self.repo.write_snapshot(snap)
        # Only a completed backup updates the files cache.
        self.files_cache.commit(
            self.repo.index_file_names(), self._owners.names, self._owners_epoch
        )
        self.files_cache.close()
        return BackupResult(snap, self.stats)

    def _flush(self) -> None:
        """Everything stored so far, by threads and worker processes, into packs in the
        backend and named by index files."""
        if self._procs is not None:
            self._procs.flush()
        self.writer.flush()

    def _backup_layout(self, layout: PathLayout, recorded: list[bytes]) -> list[bytes]:
        self._started_at = self.repo.clock.now()
        if self.opts.parent == FIND_PARENT:
            self._parent = self._find_parent(recorded)
        else:
            self._parent = self.opts.parent
        if layout.root_dir is not None:
            self._root_dev = os.lstat(layout.root_dir).st_dev
            self._walk_dir(layout.root_dir, "", None)
            while len(self._frames) > 1:
                self._finalize(self._frames.popleft())
            return self._finalize(self._frames.popleft())
        return self._build_virtual(layout.tree, layout.origin, "")

    def _build_virtual(self, tree: dict[bytes, object], base: bytes, rel: str) -> list[bytes]:
        """Top and intermediate directories of the given paths: metadata from the real dirs.
        `base` is the directory on disk that `tree`'s names lie in."""
        nodes: list[Node] = []
        holder = _Frame(base, None, nodes, [], {})
        got = self.files_cache.get(base)
        if got is not None:
            holder.cached, holder.trusted = got
        for name, sub in sorted(tree.items()):
            # A leaf holds where to read it (normally base/name; a snapshot's copy with
            # `read_from`); intermediate directories are read where they are.
            real = sub if isinstance(sub, bytes) else os.path.join(base, name)
            child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
            try:
                st = os.lstat(real)
            except OSError as e:
                self._miss(real, e)
                continue
            node = self._node(name, st, real)
            nodes.append(node)
            if isinstance(sub, dict):
                node.subtree = self._build_virtual(sub, real, child_rel)
            elif node.type is NodeType.DIR:
                self._root_dev = st.st_dev
                self._walk_dir(real, child_rel, node)
                while self._frames:
                    self._finalize(self._frames.popleft())
            elif node.type is NodeType.FILE:
                self._add_file(holder, node, real, st)
        self._submit_queued(holder)
        self._send_gathered(holder)
        for node, fut, k, st, _how, path in holder.pending:
            self._inflight -= 1
            res = self._outcome(fut, k, path, st)
            if isinstance(res, OSError):
                self._miss(os.path.join(base, node.name), res)
                nodes.remove(node)
                continue
            node.content, node.xattrs = res[0], res[3]
            with self.stats.lock:
                self.stats.files_new += 1
        return self.store_tree(nodes)

    def _find_parent(self, leaves: list[bytes]) -> str | None:
        want = sorted(p.decode("utf-8", "surrogateescape") for p in leaves)
        host = self.opts.host or os.uname().nodename
        best: Snapshot | None = None
        for sid in self.repo.snapshot_ids():
            try:
                s = self.repo.read_snapshot(sid)
            except Exception as e:  # noqa: BLE001 - a damaged restore point is not a parent
                log.warning("restore point %s unreadable, not used as parent: %s", sid, e)
                continue
            if s.host == host and sorted(s.paths) == want and (best is None or s.time > best.time):
                best = s
        return best.id if best else None


def _read_elsewhere(layout: PathLayout, read_from: dict[str, str], cwd: str) -> PathLayout:
    """The same layout (names in the tree), reading each mapped path from its substitute."""
    subst = {
        os.fsencode(os.path.normpath(os.path.join(cwd, k))): os.fsencode(v)
        for k, v in read_from.items()
    }

    def one(sub: object) -> object:
        if isinstance(sub, dict):
            return remap(sub)
        return subst.get(sub, sub) if isinstance(sub, bytes) else sub

    def remap(tree: dict[bytes, object]) -> dict[bytes, object]:
        return {name: one(sub) for name, sub in tree.items()}

    root = subst.get(layout.root_dir, layout.root_dir) if layout.root_dir else None
    return PathLayout(
        root, remap(layout.tree), [(r, subst.get(p, p)) for r, p in layout.leaves], layout.origin
    )


class _StopRequested(Exception):  # noqa: N818 - a signal inside the walk, never escapes
    pass


@dataclass
class PathLayout:
    root_dir: bytes | None  # set when the backup root is one directory ('.')
    tree: dict[bytes, object]  # otherwise: nested components; leaves map to the path bytes
    leaves: list[tuple[str, bytes]]
    #: Where the tree's top level lies on disk: '/' for absolute paths, else the cwd.
    origin: bytes = b"/"


def plan_paths(paths: list[str], cwd: str) -> PathLayout:
    """Normalize backup paths into the tree layout of FORMAT.md section 10."""
    if not paths:
        raise UsageError("nothing to back up: give at least one path")
    leaves: list[tuple[str, bytes]] = []
    tree: dict[bytes, object] = {}
    root_dir: bytes | None = None
    kinds = {os.path.isabs(p) for p in paths}
    if len(kinds) > 1:
        raise UsageError(
            "give all backup paths absolute or all relative to the current directory, "
            "not a mix (they would collide in the restore point's tree)"
        )
    origin = b"/" if kinds == {True} else os.fsencode(os.path.normpath(cwd))
    for p in paths:
        if ".." in Path(p).parts:
            raise UsageError(f"path {p!r} contains '..': give it as an absolute path")
        absolute = os.path.normpath(p if os.path.isabs(p) else os.path.join(cwd, p))
        if not os.path.lexists(absolute):
            raise UsageError(f"path {p!r} does not exist")
        rel = os.path.normpath(p).lstrip("/") if os.path.isabs(p) else os.path.normpath(p)
        if rel in (".", ""):
            if not os.path.isdir(absolute):
                raise UsageError(f"{p!r} is not a directory")
            if len(paths) > 1:
                raise UsageError("'.' (or '/') cannot be combined with other paths")
            root_dir = os.fsencode(absolute)
            leaves.append((rel, root_dir))
            break
        parts = [os.fsencode(x) for x in rel.split("/")]
        node = tree
        for part in parts[:-1]:
            sub = node.setdefault(part, {})
            if not isinstance(sub, dict):
                raise UsageError(f"path {p!r} lies inside another backup path")
            node = sub
        if parts[-1] in node:
            raise UsageError(f"path {p!r} is given twice or contains another backup path")
        node[parts[-1]] = os.fsencode(absolute)
        leaves.append((rel, os.fsencode(absolute)))
    return PathLayout(root_dir, tree, leaves, origin)


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def backup(
    repo: Repository, options: BackupOptions, stats: BackupStats | None = None
) -> BackupResult:
    return Archiver(repo, options, stats).run()
