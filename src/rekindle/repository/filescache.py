"""The files cache: what each directory held at the last backup, so unchanged files are not
read again.

One SQLite row per directory (absolute path, as bytes) holding, for each file, the stat
fields that identify an unchanged file (size, mtime_ns, ctime_ns, inode), its content list
and its xattrs (an xattr change moves the ctime, so an unchanged file's xattrs need not be
listed again). A second table remembers which index files existed when the cache was written: if all
of them still exist, every cached chunk is still in the repository (prune removes chunks
only by replacing index files); otherwise cached chunks are checked against the index.
Each directory's row also holds, under the key DIR_RECORD (a name no file can have), the
record of the directory itself: its tree ids, the identity of every entry that is not a
regular file, and the device; a walk that finds every entry as recorded reuses the tree
ids instead of encoding the tree again. The user and group names the trees were written
with are kept too: if a name changed since, no tree is reused.

The cache is a hint: losing it costs a re-read, never data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

# name -> [size, mtime_ns, ctime_ns, inode, content, xattrs as [[name, value], ...]]
# (entries written before xattrs were kept have five fields)
DirEntries = dict[bytes, list[Any]]

#: The key of a directory's own record in its DirEntries:
#: [tree ids, {name: [ino, ctime_ns, mtime_ns, size, mode(, subtree ids)]} for the entries
#: that are not regular files, st_dev of every entry, tree version, entries in the tree].
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
        self._db.execute("CREATE TABLE IF NOT EXISTS dirs (path BLOB PRIMARY KEY, data BLOB)")
        self._db.execute("CREATE TABLE IF NOT EXISTS generation (name TEXT PRIMARY KEY)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS owners (kind TEXT, id INTEGER, name TEXT,"
            " PRIMARY KEY (kind, id))"
        )
        # Staged rows live in a temporary table, not in memory: memory stays flat however
        # many directories a backup walks. A crashed backup's staged rows vanish with it.
        self._db.execute("CREATE TEMP TABLE staged (path BLOB PRIMARY KEY, data BLOB)")
        self._batch: list[tuple[bytes, bytes]] = []

    def get(self, path: bytes) -> DirEntries | None:
        row = self._db.execute("SELECT data FROM dirs WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        try:
            entries: DirEntries = msgpack.unpackb(row[0], raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException):
            return None
        return entries

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

    def generation_valid(self, current_index_files: set[str]) -> bool:
        names = {r[0] for r in self._db.execute("SELECT name FROM generation")}
        return bool(names) and names <= current_index_files

    def owners(self) -> Owners:
        """The user and group names the cached trees were written with."""
        known: Owners = {"u": {}, "g": {}}
        for kind, num, name in self._db.execute("SELECT kind, id, name FROM owners"):
            if kind in known:
                known[kind][num] = name
        return known

    def commit(self, index_files: set[str], owners: Owners) -> None:
        self._flush()
        self._db.execute("BEGIN")
        self._db.execute("INSERT OR REPLACE INTO dirs SELECT path, data FROM staged")
        self._db.execute("DELETE FROM staged")
        self._db.execute("DELETE FROM generation")
        self._db.executemany("INSERT INTO generation VALUES (?)", ((n,) for n in index_files))
        self._db.execute("DELETE FROM owners")
        self._db.executemany(
            "INSERT INTO owners VALUES (?, ?, ?)",
            ((kind, num, name) for kind, names in owners.items() for num, name in names.items()),
        )
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
