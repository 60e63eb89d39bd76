"""What a storage node remembers beside the repositories: which job wrote each lock, and the
grants the cloud registered for restores.

Both live in one small SQLite file, shared by the node's worker processes and kept across
restarts: a running backup can still refresh and remove its lock after a node restart, and a
queued restore still finds its grant. Without a path the ledger is an in-memory database
shared by the threads of one process (tests).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

from rekindle.core.errors import UsageError
from rekindle.storagenode.scope import is_pack

#: Grants kept decoded in memory: a restore asks for one on every pack it reads.
_CACHED_GRANTS = 32
#: A grant is forgotten this long after it was registered; a restore still queued by then
#: fails with a clear error and is started again.
GRANT_LIFETIME_S = 30 * 86400
_memory_ids = itertools.count()


def grant_digest(body: bytes) -> str:
    """The name a grant is known by: SHA-256 of its text, which the restore token carries."""
    return hashlib.sha256(body).hexdigest()


def parse_grant(body: bytes) -> frozenset[str]:
    """A grant is UTF-8 text, one pack object name a line, sorted, without duplicates."""
    try:
        names = body.decode("ascii").split("\n") if body else []
    except UnicodeDecodeError:
        raise UsageError("a grant must be ASCII text") from None
    for name in names:
        if not is_pack(name):
            raise UsageError(f"not a pack name in grant: {name[:80]!r}")
    if names != sorted(set(names)):
        raise UsageError("a grant lists its packs sorted, each once")
    return frozenset(names)


class NodeLedger:
    def __init__(self, path: Path | None) -> None:
        if path is None:
            self._target = f"file:rekindle-ledger-{os.getpid()}-{next(_memory_ids)}"
            self._target += "?mode=memory&cache=shared"
            # An in-memory database lives as long as one connection to it does.
            self._keepalive: sqlite3.Connection | None = self._connect()
        else:
            self._target, self._keepalive = str(path), None
        self._local = threading.local()
        self._cache: OrderedDict[tuple[int, str], frozenset[str]] = OrderedDict()
        self._cache_lock = threading.Lock()
        db = self._connect()
        try:
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS lock_owner "
                "(org INTEGER, name TEXT, job INTEGER, PRIMARY KEY (org, name))"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS grant_packs "
                "(org INTEGER, digest TEXT, packs BLOB, created REAL, PRIMARY KEY (org, digest))"
            )
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self._target, timeout=30, isolation_level=None, uri=self._target.startswith("file:")
        )

    def _db(self) -> sqlite3.Connection:
        # One connection per thread and process: worker processes fork after start-up.
        key = (os.getpid(), threading.get_ident())
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "key", None) != key:
            db = self._connect()
            self._local.db, self._local.key = db, key
        return db

    # -- lock owners: a token may refresh or delete only the locks its own job wrote --------
    def lock_owner(self, org: int, name: str) -> int | None:
        row = (
            self._db()
            .execute("SELECT job FROM lock_owner WHERE org = ? AND name = ?", (org, name))
            .fetchone()
        )
        return int(row[0]) if row else None

    def set_lock_owner(self, org: int, name: str, job: int) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO lock_owner (org, name, job) VALUES (?, ?, ?)",
            (org, name, job),
        )

    def forget_lock(self, org: int, name: str) -> None:
        self._db().execute("DELETE FROM lock_owner WHERE org = ? AND name = ?", (org, name))

    # -- grants: the packs one restore may read ---------------------------------------------
    def add_grant(self, org: int, digest: str, body: bytes) -> None:
        """Register a grant under its digest; raises UsageError when the body does not hash to
        `digest` or is not a grant. Registering the same grant again is harmless."""
        if grant_digest(body) != digest:
            raise UsageError("the grant does not match its digest")
        parse_grant(body)
        now = time.time()
        db = self._db()
        db.execute("DELETE FROM grant_packs WHERE created < ?", (now - GRANT_LIFETIME_S,))
        # Registering again renews it: the restore it serves was started again.
        db.execute(
            "INSERT OR REPLACE INTO grant_packs (org, digest, packs, created) VALUES (?, ?, ?, ?)",
            (org, digest, body, now),
        )

    def grant(self, org: int, digest: str) -> frozenset[str] | None:
        key = (org, digest)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        row = (
            self._db()
            .execute("SELECT packs FROM grant_packs WHERE org = ? AND digest = ?", key)
            .fetchone()
        )
        if row is None:
            return None
        packs = parse_grant(bytes(row[0]))
        with self._cache_lock:
            self._cache[key] = packs
            while len(self._cache) > _CACHED_GRANTS:
                self._cache.popitem(last=False)
        return packs
