"""Backup's worker processes: read, hash, compress, encrypt and pack small files.

Backing up tens of thousands of small files is a few system calls per file plus a hash, a
compression and an encryption. In threads, each of those calls hands the GIL to another
thread, and on a small virtual machine the hand-offs cost more than the work
(docs/benchmarks.md). A worker process has no GIL to share.

The parent (backup_procs.py) still walks the tree, builds every node and decides what is
stored: deduplication across the whole backup stays in one place. A batch goes through a
worker in two steps. The worker reads the batch's files and answers with their chunk ids,
keeping the data. The parent reserves the ids that are new, and the worker stores exactly
those from what it kept, into packs of its own, written to the backend like the parent's.
It reports each pack; the parent indexes it with its own packs, so the write order of
FORMAT.md section 11 holds (a pack is stored before an index file names it).

The worker is its own program (`python -m rekindle.repository.backup_worker FD`), not a
multiprocessing child: it imports only what it needs, and it gets its setup, including the
master key, through the socket it shares with the parent, never through its arguments or
environment. It exits when the parent asks or when the socket closes (the parent died).

Messages (pickled, multiprocessing.connection framing):

- parent to worker: the Setup, then ("read", n, [(path, StatKey)]), ("store", n, [ids]),
  ("flush",), ("exit",);
- worker to parent: ("ready", pid), ("ids", n, [FileOutcome]),
  ("pack", pack_id, [(id, offset, length, raw_length)], size), ("flushed",),
  ("failed", reason, exit status).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rekindle.core.errors import ExitCode, RekindleError
from rekindle.core.memory import return_freed_memory
from rekindle.format import codec
from rekindle.format.config import RepoConfig
from rekindle.format.crypto import RepoKeys
from rekindle.format.pack import PackBuilder
from rekindle.format.registry import BlobKind
from rekindle.repository.writer import STAGE_BYTES, store_pack
from rekindle.store.base import Backend

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from rekindle.store.spool import Spool

#: A file that is no longer small when the worker reads it: the parent reads it instead.
GREW = "grew"

#: File data a worker drops between two requests to malloc to return freed memory.
TRIM_AFTER_BYTES = 32 * 1024 * 1024

#: A file's extended attributes: (name, value) pairs.
Xattrs = list[tuple[bytes, bytes]]

#: How one file of a batch went: (its content, changed while read, bytes read, its xattrs),
#: the OSError that kept it from being read, or GREW.
FileOutcome = tuple[list[bytes | int], bool, int, Xattrs] | OSError | str

#: What a worker reports about a pack it stored: its id, each blob's
#: (id, offset, length, raw_length), and its size.
PackReport = tuple[bytes, list[tuple[bytes, int, int, int]], int]


@dataclass(frozen=True)
class Setup:
    """What a worker process needs. Holds the master key: never log it."""

    master: bytes = field(repr=False)
    config: RepoConfig
    factory: Callable[[], Backend] = field(repr=False)  # may hold a storage token


#: What tells a file unchanged (the files cache and the changed-while-read check): size,
#: mtime_ns, ctime_ns and inode. A worker gets this, not the whole stat (less to pickle).
StatKey = tuple[int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def same_file(st: os.stat_result, other: os.stat_result) -> bool:
    """The same file, unchanged."""
    return stat_key(st) == stat_key(other)


def open_for_reading(path: bytes) -> int:
    """Open a regular file to back it up: never through a symlink, without touching its
    access time where the caller may (O_NOATIME needs ownership or CAP_FOWNER), and without
    waiting: O_NONBLOCK, so a FIFO or device swapped in since the walk is refused, never
    waited on (it changes nothing for a regular file)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_up_to(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from the start of fd, to its end if it is shorter; a read may
    return less than asked (network and FUSE file systems), so read until the end."""
    first = os.read(fd, limit)
    if not first or len(first) == limit:
        return first
    parts = [first]
    got = len(first)
    while got < limit:
        more = os.read(fd, limit - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_small(fd: int, size: int, limit: int) -> bytes:
    """A small file's content: up to `limit` + 1 bytes (more than `limit`: it grew past the
    small size), read with a first buffer of the size the walk saw plus one byte.

    Not one of `limit` + 1 (256 KiB by default) for every file: malloc would hand out and
    shrink a large block per file, and a process reading thousands of small files would keep
    a heap fragmented to several times the data it holds."""
    first = min(size, limit) + 1
    data = read_up_to(fd, first)
    if len(data) == first and first <= limit:  # it grew since the walk: read on to the limit
        data += read_up_to(fd, limit + 1 - first)
    return data


def read_xattrs(target: bytes | int) -> Xattrs:
    """The extended attributes of a path (never through a symlink) or an open file; those
    that cannot be read are left out."""
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in names:
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError:
            continue
        out.append((name.encode(), value))
    return out


def read_small_file(
    path: bytes, seen: StatKey, limit: int, keys: RepoKeys, keep: dict[bytes, bytes]
) -> FileOutcome:
    """Read a file of at most `limit` bytes as one chunk (FORMAT.md: a small file is one
    chunk); its data goes into `keep` under its id."""
    try:
        fd = open_for_reading(path)
        try:
            data = read_small(fd, seen[0], limit)
            after = os.fstat(fd)
            xattrs = read_xattrs(fd) if len(data) <= limit else []
        finally:
            os.close(fd)
    except OSError as e:
        return e
    if len(data) > limit:
        return GREW
    ids: list[bytes | int] = []
    if data:
        cid = keys.chunk_id(data)
        keep[cid] = data
        ids.append(cid)
    changed = stat_key(after) != seen
    return ids, changed, len(data), xattrs


class Packer:
    """Fills data packs one after another in spool files and stores each one when full.
    Single-threaded: a worker process has one."""

    def __init__(self, backend: Backend, keys: RepoKeys, config: RepoConfig) -> None:
        self._backend = backend
        self._keys = keys
        self._config = config
        self._builder: PackBuilder | None = None
        self._spool: Spool | None = None
        self._stage = bytearray()
        self._stage_at = 0

    def add(self, chunk_id: bytes, data: bytes) -> PackReport | None:
        """Store one chunk; the report of the pack it filled, if it did."""
        payload = codec.encode(data, self._config.zstd_level)
        if self._builder is None:
            self._builder = PackBuilder(self._keys, BlobKind.DATA)
            self._spool = self._backend.new_spool()
        entry = self._builder.place(chunk_id, len(payload), len(data))
        if not self._stage:
            self._stage_at = entry.offset
        start = len(self._stage)
        self._stage.extend(bytes(entry.length))
        with memoryview(self._stage)[start:] as view:
            self._builder.seal_into(entry, payload, view)
        if len(self._stage) >= STAGE_BYTES:
            self._write_stage()
        if self._builder.size >= self._config.pack_size:
            return self.finish()
        return None

    def _write_stage(self) -> None:
        if self._stage and self._spool is not None:
            self._spool.write_at(self._stage, self._stage_at)
        self._stage = bytearray()

    def finish(self) -> PackReport | None:
        """Store the pack being filled (if any blob is in it)."""
        builder, spool = self._builder, self._spool
        if builder is None or spool is None:
            return None
        try:
            self._write_stage()
            pack_id = store_pack(self._backend, builder, spool)
            size = spool.size
        finally:
            self.close()
        blobs = [(e.id, e.offset, e.length, e.raw_length) for e in builder.entries]
        return pack_id, blobs, size

    def close(self) -> None:
        """Forget the pack being filled; its spool file is removed."""
        if self._spool is not None:
            self._spool.close()
        self._builder, self._spool, self._stage = None, None, bytearray()


def serve(conn: Connection, setup: Setup) -> None:
    """Answer the parent's messages until it says exit (or goes away)."""
    keys = RepoKeys.from_master(setup.master)
    packer = Packer(setup.factory(), keys, setup.config)
    limit = setup.config.chunk_min
    kept: dict[int, dict[bytes, bytes]] = {}  # batch number: the data of its chunks
    freed = 0  # bytes of file data dropped since malloc was last asked to return memory
    conn.send(("ready", os.getpid()))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "read":
                _, n, files = msg
                keep: dict[bytes, bytes] = {}
                outcomes = [read_small_file(path, st, limit, keys, keep) for path, st in files]
                kept[n] = keep
                conn.send(("ids", n, outcomes))
            elif msg[0] == "store":
                _, n, ids = msg
                keep = kept.pop(n)
                for cid in ids:
                    report = packer.add(cid, keep[cid])
                    if report is not None:
                        conn.send(("pack", *report))
                # The batches' file data, freed, stays with malloc (the worker would keep
                # its high-water mark); asking for it back after each batch would cost
                # faults on the next one's pages (0.7 s of system time on the benchmark),
                # so it is asked after every TRIM_AFTER_BYTES.
                freed += sum(len(d) for d in keep.values())
                del keep
                if freed >= TRIM_AFTER_BYTES:
                    return_freed_memory()
                    freed = 0
            elif msg[0] == "flush":
                report = packer.finish()
                if report is not None:
                    conn.send(("pack", *report))
                conn.send(("flushed",))
            elif msg[0] == "exit":
                return
            else:
                raise ValueError(f"unknown message {msg[0]!r}")
    finally:
        packer.close()


def main() -> int:
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]))
    try:
        setup = conn.recv()
        serve(conn, setup)
    except (EOFError, ConnectionError):
        return 0  # the parent is gone: what it did not index, prune collects
    except BaseException as e:  # noqa: BLE001 - told to the parent, which fails the backup
        code = e.exit_code if isinstance(e, RekindleError) else ExitCode.ERROR
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(e).__name__}: {e}", int(code)))
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
