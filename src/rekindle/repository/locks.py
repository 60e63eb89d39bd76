"""Repository locks (FORMAT.md section 12).

| operation | lock | may run with |
| --- | --- | --- |
| backup | shared | backups, restores, prune, check |
| check | shared | backups, restores; not prune |
| prune | exclusive among prunes | backups, restores |
| tier | exclusive among prunes and tiers | backups, restores, check |
| restore | shared (only so that tiering waits for it) | anything but repair |
| repair, key changes | exclusive | nothing |

A lock is an encrypted file under `locks/`, rewritten every REFRESH seconds by a background
thread while its operation runs; one not refreshed for STALE seconds is ignored (its process
died), and so is one of this host whose process no longer exists. Locks never block backups
against prune: prune's safety comes from its two phases and
the lock *creation times*, not from waiting (see prune.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rekindle.core.errors import (
    AccessDeniedError,
    IntegrityError,
    ObjectNotFoundError,
    ReadOnlyError,
    RepositoryLockedError,
    StorageError,
)
from rekindle.format.registry import FileKind
from rekindle.repository.repo import Repository

log = logging.getLogger(__name__)

REFRESH = timedelta(minutes=5)
STALE = timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class LockInfo:
    name: str
    kind: str
    exclusive: bool
    host: str
    pid: int
    created: datetime
    refreshed: datetime


def list_locks(repo: Repository, *, include_stale: bool = False) -> list[LockInfo]:
    now = repo.clock.now()
    out = []
    for info in repo.backend.list("locks/"):
        try:
            doc = repo.unseal(FileKind.LOCK, repo.backend.read(info.name), info.name)
            lock = LockInfo(
                name=info.name,
                kind=str(doc["kind"]),
                exclusive=bool(doc["exclusive"]),
                host=str(doc["host"]),
                pid=int(doc["pid"]),
                created=datetime.fromisoformat(doc["created"]),
                refreshed=datetime.fromisoformat(doc["refreshed"]),
            )
        except (ObjectNotFoundError, IntegrityError, KeyError, TypeError, ValueError):
            continue  # released meanwhile, or unreadable: not a live lock we can honour
        if include_stale or not _is_stale(lock, now):
            out.append(lock)
    return out


def _is_stale(lock: LockInfo, now: datetime) -> bool:
    if now - lock.refreshed >= STALE:
        return True
    # A lock of this host whose process is gone is stale at once (killed, rebooted): waiting
    # 30 minutes for it would only delay the next prune.
    if lock.host == socket.gethostname():
        try:
            os.kill(lock.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


class Lock:
    """Context manager holding a lock for the duration of an operation."""

    def __init__(
        self,
        repo: Repository,
        kind: str,
        *,
        exclusive: bool = False,
        conflicts: frozenset[str] = frozenset(),
    ) -> None:
        self.repo = repo
        self.kind = kind
        self.exclusive = exclusive
        self.conflicts = conflicts  # kinds that may not run at the same time as this one
        self.name = f"locks/{os.urandom(32).hex()}"
        self.created = repo.clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> dict[str, Any]:
        return {
            "v": 1,
            "kind": self.kind,
            "exclusive": self.exclusive,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": self.created.isoformat(),
            "refreshed": self.repo.clock.now().isoformat(),
        }

    def _write(self) -> None:
        self.repo.backend.write(
            self.name, self.repo.seal(FileKind.LOCK, self._doc()), exclusive=False
        )

    def __enter__(self) -> Lock:
        self._write()
        others = [lk for lk in list_locks(self.repo) if lk.name != self.name]
        blocking = [
            lk for lk in others if lk.exclusive or self.exclusive or lk.kind in self.conflicts
        ]
        if blocking:
            self._release()
            b = blocking[0]
            raise RepositoryLockedError(
                f"repository is locked by {b.kind} on {b.host} (pid {b.pid}) since "
                f"{b.created:%Y-%m-%d %H:%M:%S}; try again later, or remove a stale lock "
                "with 'rekindle repo unlock'"
            )
        self._thread = threading.Thread(
            target=self._refresh_loop, daemon=True, name=f"lock-{self.kind}"
        )
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH.total_seconds()):
            try:
                self._write()
            except StorageError:
                continue  # try again at the next tick; staleness takes 30 minutes

    def _release(self) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self.repo.backend.delete(self.name)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._release()


@contextlib.contextmanager
def shared_lock_if_writable(repo: Repository, kind: str) -> Iterator[None]:
    """A shared lock for an operation that only reads (a restore): it tells tiering to wait
    for it (FORMAT.md section 12). Through a read-only view of the repository there is no
    lock; the operation runs all the same."""
    try:
        lock = Lock(repo, kind)
        lock.__enter__()
    except (ReadOnlyError, AccessDeniedError) as e:
        log.debug("%s without a lock: %s", kind, e)
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def remove_stale(repo: Repository, *, all_locks: bool = False) -> int:
    """Delete stale locks (or every lock, when the operator knows nothing runs)."""
    live = {lk.name for lk in list_locks(repo)}
    n = 0
    for lk in list_locks(repo, include_stale=True):
        if all_locks or lk.name not in live:
            try:
                repo.backend.delete(lk.name)
                n += 1
            except ObjectNotFoundError:
                pass
    return n
