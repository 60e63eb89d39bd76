"""The files cache: what each directory held at the last backup, so unchanged files are not
read again, and unchanged directories are not encoded again.

One SQLite row per directory (absolute path, as bytes) holding, for each file, the stat
fields that identify an unchanged file (size, mtime_ns, ctime_ns, inode), its content list,
its xattrs (an xattr change moves the ctime, so an unchanged file's xattrs need not be
listed again) and its mode, owner and link count.

Each row also holds, under the key DIR_RECORD (a name no file can have), the record of the
directory itself: its tree ids and the identity of every entry that is not a regular file;
a walk that finds every entry as recorded reuses the tree ids instead of encoding the tree
again (docs/architecture.md, "Files cache").

What the rows name must still be in the repository. A table remembers which index files
existed when the cache was last written: if all of them still exist, nothing was removed
since (prune removes chunks only by replacing index files). Each row carries the
generation it was checked in; a backup that finds index files replaced checks every row it
uses against the index and writes its rows in a new generation, so a row it did not use is
never trusted again without a check.

The user and group names the trees were written with are kept, with an epoch: if a name
changed, the epoch moves on, and no tree recorded in an older epoch is reused.

The cache is a hint: losing it costs a re-read, never data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

#: name -> [size, mtime_ns, ctime_ns, inode, content, xattrs as [[name, value], ...], mode,
#: uid, gid, nlink]. Entries of older versions have five (no xattrs) or six fields.
DirEntries = dict[bytes, list[Any]]

#: The key of a directory's own record in its DirEntries: [tree ids, {name: [ino, ctime_ns,
#: mtime_ns, size, mode, uid, gid, nlink(, subtree ids)]} for the entries that are not
#: regular files, st_dev of every entry, tree version, entries in the tree, owners epoch].
#: Only written when every entry is on one device.
DIR_RECORD = b"/"

#: User and group names by id, as trees were written with them: {"u": {uid: name}, "g": ...}
Owners = dict[str, dict[int, str | None]]


class FilesCache:
    def __init__(self, path: Path | None) -> None:
        target = ":memory:" if path is None else str(path)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        import sqlite3  # here, not at import: see format/codec.py

        self._db = sqlite3.connect(target, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dirs (path BLOB PRIMARY KEY, data BLOB,"
            " gen INTEGER NOT NULL DEFAULT -1)"
        )
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(dirs)")}
        if "gen" not in columns:  # a cache of an older version: its rows are checked
            self._db.execute("ALTER TABLE dirs ADD COLUMN gen INTEGER NOT NULL DEFAULT -1")
        self._db.execute("CREATE TABLE IF NOT EXISTS generation (name TEXT PRIMARY KEY)")
        self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS owners (kind TEXT, id INTEGER, name TEXT,"
            " PRIMARY KEY (kind, id))"
        )
        # Staged rows live in a temporary table, not in memory: memory stays flat however
        # many directories a backup walks. A crashed backup's staged rows vanish with it.
        self._db.execute("CREATE TEMP TABLE staged (path BLOB PRIMARY KEY, data BLOB)")
        self._batch: list[tuple[bytes, bytes]] = []
        self._gen = 0  # the generation trusted rows belong to: read by `begin`
        self._trusted = False
        self._begin_files: set[str] = set()

    def _state(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def begin(self, current_index_files: set[str]) -> None:
        """At the start of a backup, once the index is synced: decide whether the rows of
        the current generation are trusted (every index file the cache was written with
        still exists). Rows of older generations never are."""
        # One read transaction: the generation number with the table it belongs to (another
        # backup sharing this cache may have committed since this one opened it).
        self._db.execute("BEGIN")
        names = {r[0] for r in self._db.execute("SELECT name FROM generation")}
        self._gen = self._state("gen")
        self._db.execute("COMMIT")
        self._trusted = bool(names) and names <= current_index_files
        self._begin_files = set(current_index_files)

    def get(self, path: bytes) -> tuple[DirEntries, bool] | None:
        """A directory's entries, and whether what they name is known to be in the
        repository (otherwise check it against the index before use)."""
        row = self._db.execute("SELECT data, gen FROM dirs WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        try:
            entries: DirEntries = msgpack.unpackb(row[0], raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            return None
        return entries, self._trusted and row[1] == self._gen

    def put(self, path: bytes, entries: DirEntries) -> None:
        """Staged until `commit`: the cache only changes once a backup has succeeded."""
        self._batch.append((path, msgpack.packb(entries, use_bin_type=True)))
        if len(self._batch) >= 256:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO staged VALUES (?, ?)", self._batch)
            self._db.execute("COMMIT")
            self._batch = []

    def owners(self) -> tuple[int, Owners]:
        """The owners epoch, and the user and group names trees of that epoch were written
        with."""
        known: Owners = {"u": {}, "g": {}}
        for kind, num, name in self._db.execute("SELECT kind, id, name FROM owners"):
            if kind in known:
                known[kind][num] = name
        return self._state("owners_epoch"), known

    def commit(self, index_files: set[str], owners: Owners, owners_epoch: int) -> None:
        """Every row this backup wrote was checked: in the generation it trusted, or, if it
        trusted none, or if an index file it started with is gone (a prune ran meanwhile:
        rows it did not use may name what that prune removed), in a new one."""
        self._flush()
        # IMMEDIATE: the write lock first (with busy_timeout), not a read lock to upgrade,
        # which SQLite refuses at once when another commit holds one too.
        self._db.execute("BEGIN IMMEDIATE")
        same = self._trusted and self._begin_files <= index_files
        latest = self._state("gen")  # another backup sharing the cache may have moved it on
        gen = self._gen if same else max(self._gen, latest) + 1
        self._db.execute("INSERT OR REPLACE INTO dirs SELECT path, data, ? FROM staged", (gen,))
        self._db.execute("DELETE FROM staged")
        self._db.execute("DELETE FROM generation")
        self._db.executemany("INSERT INTO generation VALUES (?)", ((n,) for n in index_files))
        self._db.executemany(
            "INSERT OR REPLACE INTO state VALUES (?, ?)",
            [("gen", max(gen, latest)), ("owners_epoch", owners_epoch)],
        )
        self._db.execute("DELETE FROM owners")
        self._db.executemany(
            "INSERT INTO owners VALUES (?, ?, ?)",
            ((kind, num, name) for kind, names in owners.items() for num, name in names.items()),
        )
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
