"""Restore's worker processes: create, write and finish batches of small files.

Restoring tens of thousands of small files is a few system calls per file (open, write,
fchmod, utime, close) plus a decryption and a hash. In threads, every one of those calls
hands the GIL to another thread, and on a virtual machine most of the time went into those
hand-offs (docs/benchmarks.md). Worker processes have no GIL to share. The main process
still walks the tree, creates every directory and decides every name; a worker only creates
files inside directories that already exist, opening them component by component with
O_NOFOLLOW from the target, so it never follows a symlink either.

A worker gets the repository's keys and config, a factory for its own backend (a process
must not share the parent's open files or connections) and the path of the local index,
which it opens read-only to look up the chunks of each batch itself. Batches and answers
cross as plain tuples: pickling dataclasses runs Python code for every object, and for the
parent that was more work than walking the tree (docs/benchmarks.md).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rekindle.core.clock import SystemClock
from rekindle.core.errors import IntegrityError, ObjectNotFoundError, RekindleError
from rekindle.format.config import RepoConfig
from rekindle.format.crypto import RepoKeys
from rekindle.format.registry import NodeType
from rekindle.format.tree import ContentItem, Node
from rekindle.repository.index import LocalIndex, Location
from rekindle.repository.repo import Repository
from rekindle.store.base import Backend

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

T = TypeVar("T")

#: What to do with an existing file (the values of restore.Existing).
OVERWRITE, SKIP, RENAME = "overwrite", "skip", "rename"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one file of a batch went."""

    state: str  # "done", "skipped" or "failed"
    written: int = 0
    reason: str = ""
    damaged: bool = False  # failed because of damaged or missing repository data

    def wire(self) -> Answer:
        return (self.state, self.written, self.reason, self.damaged)


#: An Outcome as it crosses from a worker: (state, written, reason, damaged).
Answer = tuple[str, int, str, bool]

#: A file of a batch as it crosses to a worker: (directory below the target, name, size,
#: mode, uid, gid, mtime_ns, xattrs, content).
Job = tuple[bytes, bytes, int, int, int, int, int, list[tuple[bytes, bytes]], list[ContentItem]]


def job(relb: bytes, node: Node) -> Job:
    """What a worker needs of a file to restore it."""
    return (
        relb,
        node.name,
        node.size,
        node.mode,
        node.uid,
        node.gid,
        node.mtime_ns,
        node.xattrs,
        node.content,
    )


def make_new(
    name: bytes, dir_fd: int, existing: str, create: Callable[[bytes], T]
) -> tuple[T, bytes] | None:
    """Make the entry `name` in `dir_fd` with `create(name)` (which raises FileExistsError
    if something is there): an existing entry is replaced (never a directory), skipped
    (None) or kept, with the new entry named `<name>.restored-N` beside it. Files, hard
    links, symlinks and special files all follow the --existing policy this way."""
    try:
        return create(name), name
    except FileExistsError:
        pass
    if existing == SKIP:
        return None
    if existing == RENAME:
        for n in range(1, 10000):
            alt = name + b".restored-" + str(n).encode()
            try:
                return create(alt), alt
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, "too many restored copies exist")
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, "a directory is in the way")
    os.unlink(name, dir_fd=dir_fd)
    return create(name), name


def open_new(name: bytes, dir_fd: int, existing: str) -> tuple[int, bytes] | None:
    """Create `name` in `dir_fd` for writing, under the --existing policy (`make_new`)."""
    return make_new(name, dir_fd, existing, lambda n: os.open(n, _NEW_FLAGS, 0o600, dir_fd=dir_fd))


def set_meta(fd: int, node: Node, *, restore_owner: bool) -> None:
    if restore_owner:
        os.fchown(fd, node.uid, node.gid)
    for key, value in node.xattrs:
        try:
            os.setxattr(fd, key, value)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
    os.fchmod(fd, node.mode)
    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))


def write_content(
    repo: Repository,
    fd: int,
    items: list[bytes | int],
    *,
    start: int,
    end: int,
    where: dict[bytes, list[Location]] | None,
    scratch: bytearray,
) -> int:
    """Write chunks (and skip holes) into bytes [start, end) of a file; returns the bytes
    written. Content that does not add up to exactly that range is an IntegrityError."""
    pos = start
    written = 0
    for item in items:
        if isinstance(item, int):
            pos += item  # a hole: seek over it, it stays sparse
            continue
        data = repo.read_blob_view(item, where.get(item) if where else None, scratch)
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, pos)
            pos += n
            written += n
            view = view[n:]
    if pos != end:
        raise IntegrityError(f"content adds up to {pos - start} bytes, expected {end - start}")
    return written


def finish_file(fd: int, node: Node, *, restore_owner: bool) -> None:
    """Once all content is written into the new file: the recorded size if the content ends
    with a hole (otherwise the writes reached it, and a truncate would only cost a journal
    entry), then metadata."""
    if node.content and isinstance(node.content[-1], int):
        os.ftruncate(fd, node.size)
    set_meta(fd, node, restore_owner=restore_owner)


def is_damage(e: BaseException) -> bool:
    """Damaged or missing repository data, as opposed to a problem at the destination."""
    return isinstance(e, IntegrityError | ObjectNotFoundError)


def reason_of(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)


@dataclass(frozen=True)
class Setup:
    """What a worker process needs besides its backend. Holds the master key: never log it."""

    master: bytes = field(repr=False)
    config: RepoConfig
    target: str  # the restore's target directory
    existing: str  # OVERWRITE, SKIP or RENAME
    restore_owner: bool
    target_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the target the walk opened
    index_path: str | None = None  # the local index, opened read-only
    index_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the index the walk has open
    cold: frozenset[bytes] = frozenset()  # packs in cold storage: read from warm copies first


class _Worker:
    def __init__(self, backend: Backend, setup: Setup) -> None:
        index = LocalIndex(Path(setup.index_path) if setup.index_path else None, read_only=True)
        if setup.index_path and index.file_id != setup.index_id:
            index.close()
            raise RuntimeError(f"{setup.index_path} is no longer the index the restore reads")
        self.repo = Repository(
            backend,
            config=setup.config,
            keys=RepoKeys.from_master(setup.master),
            index=index,
            cache_dir=None,
            clock=SystemClock(),
        )
        self.root_fd = os.open(setup.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.root_fd)
        if (st.st_dev, st.st_ino) != setup.target_id:
            os.close(self.root_fd)
            raise RuntimeError(f"{setup.target} is no longer the directory the restore opened")
        self.repo.index.set_cold(setup.cold)
        self.existing = setup.existing
        self.restore_owner = setup.restore_owner
        self.scratch = bytearray(setup.config.chunk_max + 1)

    def _open_dir(self, relb: bytes, cache: dict[bytes, int]) -> int:
        fd = cache.get(relb)
        if fd is not None:
            return fd
        fd = self.root_fd
        opened: list[int] = []
        try:
            for part in relb.split(b"/") if relb else []:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                opened.append(fd)
        finally:
            for extra in opened[:-1]:
                os.close(extra)
        cache[relb] = fd
        return fd

    def write_batch(
        self, batch: list[Job], where: dict[bytes, list[Location]] | None
    ) -> list[Answer]:
        files = [(j[0], _node(j)) for j in batch]
        if where is None:
            where = self.repo.index.lookup_many(
                c for _, node in files for c in node.content if isinstance(c, bytes)
            )
        dirs: dict[bytes, int] = {}
        try:
            return [self._write_one(relb, node, where, dirs).wire() for relb, node in files]
        finally:
            for fd in dirs.values():
                if fd != self.root_fd:
                    os.close(fd)

    def _write_one(
        self, relb: bytes, node: Node, where: dict[bytes, list[Location]], dirs: dict[bytes, int]
    ) -> Outcome:
        try:
            opened = open_new(node.name, self._open_dir(relb, dirs), self.existing)
        except OSError as e:
            return Outcome("failed", reason=reason_of(e))
        if opened is None:
            return Outcome("skipped")
        fd = opened[0]
        try:
            written = write_content(
                self.repo,
                fd,
                node.content,
                start=0,
                end=node.size,
                where=where,
                scratch=self.scratch,
            )
            finish_file(fd, node, restore_owner=self.restore_owner)
            return Outcome("done", written=written)
        except (OSError, RekindleError) as e:
            return Outcome("failed", reason=reason_of(e), damaged=is_damage(e))
        finally:
            os.close(fd)


_worker: _Worker | None = None


def start(factory: Callable[[], Backend], setup: Setup) -> None:
    """The process pool's initializer."""
    global _worker  # noqa: PLW0603 - one worker per process, made once
    _worker = _Worker(factory(), setup)


def ping(linger: float) -> int:
    """Proves a worker started (its initializer ran); lingering lets the others answer too."""
    time.sleep(linger)
    return os.getpid()


def _node(j: Job) -> Node:
    return Node(
        name=j[1],
        type=NodeType.FILE,
        size=j[2],
        mode=j[3],
        uid=j[4],
        gid=j[5],
        mtime_ns=j[6],
        xattrs=j[7],
        content=j[8],
    )


def write_batch(batch: list[Job], where: dict[bytes, list[Location]] | None) -> list[Answer]:
    """Create, write and finish the files of a batch (in a worker process); the chunks'
    locations are looked up in the index unless given."""
    if _worker is None:
        raise RuntimeError("restore worker used before start()")
    return _worker.write_batch(batch, where)
