"""Local-disk backend: one file per object under a root directory.

Writes are crash-safe: the bytes go to a temporary file in the target directory, which is
fsynced, then linked (exclusive) or renamed (replace) into place, and the directory is
fsynced, so after a crash an object is either whole or absent. Packs are assembled in such a
temporary file from the start (`new_spool`) and linked into place the same way. Temporary
files start with ``.tmp-`` and are ignored by `list`; a crash can leave one behind,
`clean_temporaries` removes those older than an hour.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rekindle.core.errors import (
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
)
from rekindle.store.base import Backend, Buffer, ObjectInfo, check_name
from rekindle.store.spool import Spool

_TMP = ".tmp-"
_PACK_PREFIXES = ("data/", "tree/")
_MAX_OPEN_PACKS = 64


def _storage_error(e: OSError, what: str) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"no space left on the repository's disk while {what}")
    if e.errno == errno.ENOENT:
        return ObjectNotFoundError(f"{what}: not found")
    return StorageError(f"{what}: {e.strerror or e}")


@dataclass
class _OpenPack:
    fd: int
    users: int = 0
    evicted: bool = False


class LocalBackend(Backend):
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.location = str(self.root)
        self._fsync = fsync
        self._made_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._fds: dict[str, _OpenPack] = {}  # open pack files, least recently used first
        self._fds_lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._made_dirs:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _storage_error(e, f"creating {directory}") from None
        if self._fsync:
            self._fsync_dir(directory.parent)
        with self._dirs_lock:
            self._made_dirs.add(directory)

    def _fsync_dir(self, directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        path = self._path(name)
        self._ensure_dir(path.parent)
        tmp = path.parent / f"{_TMP}{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._place(tmp, path, name, exclusive=exclusive)
        except BaseException as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise _storage_error(e, f"writing {name}") from None
            raise

    def _place(self, tmp: Path, path: Path, name: str, *, exclusive: bool) -> None:
        """Put a synced temporary file in place: linked (exclusive: an existing object is
        an error, and the temporary name goes) or renamed over; then sync the directory."""
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ObjectExistsError(f"{name} already exists") from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        if self._fsync:
            self._fsync_dir(path.parent)

    def reader_factory(self) -> Callable[[], Backend] | None:
        return functools.partial(LocalBackend, str(self.root), fsync=False)

    def writer_factory(self) -> Callable[[], Backend] | None:
        return functools.partial(LocalBackend, str(self.root), fsync=self._fsync)

    def new_spool(self) -> Spool:
        """A temporary file in the repository's own root, so `write_spool` links it into
        place instead of copying it. A spool may stay open for hours (a pack that fills
        slowly), so it is flocked while open: `clean_temporaries` (prune) leaves it alone;
        after a crash the lock is gone and the file is cleaned like any `.tmp-` file."""
        self._ensure_dir(self.root)
        path = self.root / f"{_TMP}spool-{secrets.token_hex(8)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _storage_error(e, "creating a temporary pack file") from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        return Spool(fd, str(path), str(self.root))

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        if spool.path is None or Path(spool.path).parent != self.root:
            super().write_spool(name, spool, exclusive=exclusive)  # not one of ours
            return
        path = self._path(name)
        self._ensure_dir(path.parent)
        try:
            if self._fsync:
                os.fsync(spool.fd)
            self._place(Path(spool.path), path, name, exclusive=exclusive)
        except OSError as e:
            if e.errno == errno.EXDEV:  # data/ or tree/ is on another file system: copy
                super().write_spool(name, spool, exclusive=exclusive)
                return
            raise _storage_error(e, f"writing {name}") from None
        spool.path = None  # taken over: closing the spool must not remove it

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            if length is not None and name.startswith(_PACK_PREFIXES):
                # Packs are immutable and read blob by blob: keep a few open (one pread per
                # blob instead of open, seek, read, close).
                data = self._pread_pack(name, offset, length)
            else:
                with open(self._path(name), "rb") as f:
                    if offset:
                        f.seek(offset)
                    data = f.read() if length is None else f.read(length)
        except OSError as e:
            raise _storage_error(e, f"reading {name}") from None
        if length is not None and len(data) != length:
            raise StorageError(f"{name}: short read ({len(data)} of {length} bytes at {offset})")
        return data

    def _pread_pack(self, name: str, offset: int, length: int) -> bytes:
        # Keyed by name: a name in the cache was checked (check_name) when it was opened.
        with self._fds_lock:
            entry = self._fds.pop(name, None)
            if entry is not None:
                self._fds[name] = entry  # most recently used last
                entry.users += 1
        if entry is None:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
            with self._fds_lock:
                entry = self._fds.get(name)
                if entry is not None:  # another thread opened it meanwhile
                    os.close(fd)
                else:
                    entry = self._fds[name] = _OpenPack(fd)
                    while len(self._fds) > _MAX_OPEN_PACKS:
                        self._evict(next(iter(self._fds)))
                entry.users += 1
        try:
            return os.pread(entry.fd, length, offset)
        finally:
            with self._fds_lock:
                entry.users -= 1
                if entry.evicted and entry.users == 0:
                    os.close(entry.fd)

    def _evict(self, name: str) -> None:
        """Forget an open pack (lock held); it is closed once no thread reads through it."""
        entry = self._fds.pop(name, None)
        if entry is None:
            return
        entry.evicted = True
        if entry.users == 0:
            os.close(entry.fd)

    def close(self) -> None:
        with self._fds_lock:
            for name in list(self._fds):
                self._evict(name)

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(name))
        except OSError as e:
            raise _storage_error(e, f"stat {name}") from None
        return ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the top directory the prefix names, so listing "data/" skips "index/".
        top = prefix.split("/", 1)[0] if "/" in prefix else ""
        start = self.root / top if top else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for fn in sorted(filenames):
                if fn.startswith(_TMP):
                    continue
                rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if not rel.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fn))
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(rel, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self._fds_lock:
            self._evict(name)
        try:
            path.unlink()
        except OSError as e:
            raise _storage_error(e, f"deleting {name}") from None
        if self._fsync:
            self._fsync_dir(path.parent)

    def clean_temporaries(self, older_than: float = 3600.0) -> int:
        """Remove temporary files left by crashed writers; returns how many went."""
        removed = 0
        cutoff = time.time() - older_than
        for dirpath, _, filenames in os.walk(self.root):
            for fn in filenames:
                p = Path(dirpath) / fn
                with contextlib.suppress(OSError):
                    if fn.startswith(_TMP) and p.stat().st_mtime < cutoff and _unused(p):
                        p.unlink()
                        removed += 1
        return removed


def _unused(path: Path) -> bool:
    """No live writer holds this temporary file (spools are flocked while open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # the lock, if taken, goes with it
    return True
