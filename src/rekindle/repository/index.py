"""The local index cache: chunk id -> (pack, offset, length), kept in SQLite on disk.

The backend holds the truth (index files under `index/`); this cache mirrors their union so
that lookups cost a B-tree probe and memory stays flat however large the repository grows.
`sync` loads index files that appeared and drops rows of index files that disappeared.

The *cold set* (packs in or bound for the archive tier, from the tier records, FORMAT.md
section 12) is kept beside it: lookups list copies in warm packs first, and `contains_warm`
is what deduplication asks, so a backup never comes to depend on an archived pack.
Safe for several threads (one connection behind a lock) and several processes (WAL mode).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS index_files (
    rowid INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB NOT NULL,
    pack BLOB NOT NULL,
    kind INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw INTEGER NOT NULL,
    src INTEGER NOT NULL,
    PRIMARY KEY (id, pack, src)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_src ON blobs (src);
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs (pack);
"""


_SELECT_LOCATIONS = "SELECT DISTINCT id, pack, kind, offset, length, raw FROM blobs "
_SELECT_ENTRIES = "SELECT DISTINCT pack, id, kind, offset, length, raw FROM blobs"
_BLOOM_AFTER = 4096  # lookups answered by SQLite before the Bloom filter is built


class _Bloom:
    """A Bloom filter over chunk ids, so that the common "not stored yet" answer of a backup
    costs no database query. Ids are keyed hashes, already uniformly random: the filter's
    hash functions are just slices of the id. Never removes ids (a stale "maybe" is checked
    against the database, so it costs a query, never a wrong answer). About 10 bits per id:
    ~1% false positives, 1.2 MiB per million chunks."""

    _K = 7

    def __init__(self, expected: int) -> None:
        self._bits_log2 = max(23, (max(expected, 1) * 10 - 1).bit_length())
        self._mask = (1 << self._bits_log2) - 1
        self._bits = bytearray(1 << (self._bits_log2 - 3))
        self.count = 0

    def _positions(self, chunk_id: bytes) -> list[int]:
        return [
            int.from_bytes(chunk_id[4 * i : 4 * i + 4], "little") & self._mask
            for i in range(self._K)
        ]

    def add(self, chunk_id: bytes) -> None:
        self.count += 1
        bits = self._bits
        for p in self._positions(chunk_id):
            bits[p >> 3] |= 1 << (p & 7)

    def may_contain(self, chunk_id: bytes) -> bool:
        bits = self._bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(chunk_id))

    def full(self) -> bool:
        return self.count * 10 > 1 << self._bits_log2


@dataclass(frozen=True, slots=True)
class Location:
    pack: bytes
    entry: BlobEntry


class LocalIndex:
    def __init__(self, path: Path | None, *, read_only: bool = False) -> None:
        """path None: an in-memory database (tests, in-memory repositories). read_only:
        another process's view of an index it must not change (restore's workers)."""
        import sqlite3  # here, not at import: see format/codec.py

        reader = path is not None and read_only  # an in-memory index is made, read-only or not
        if path is not None and reader:
            self._db = sqlite3.connect(
                f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
        else:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            target = ":memory:" if path is None else str(path)
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 60000")
            if reader:
                # Read now: a file that is no index fails here, not at the first lookup.
                self._db.execute("SELECT 1 FROM blobs LIMIT 1").fetchall()
            else:
                if path is not None:
                    self._db.execute("PRAGMA journal_mode = WAL")
                # The cache can always be rebuilt from the backend: durability is not needed.
                self._db.execute("PRAGMA synchronous = OFF")
                self._db.executescript(_SCHEMA)
        self._bloom: _Bloom | None = None  # built once lookups are many (see `contains`)
        self._lookups = 0
        self._cold: frozenset[bytes] = frozenset()
        self.path = path
        # (st_dev, st_ino) of the file opened: another process that opens `path` can check
        # it finds this same index there, not one made since.
        st = os.stat(path) if path is not None else None
        self.file_id = (st.st_dev, st.st_ino) if st is not None else (0, 0)

    # -- the cold set ---------------------------------------------------------------------------
    def set_cold(self, packs: Iterable[bytes]) -> None:
        self._cold = frozenset(packs)

    @property
    def cold(self) -> frozenset[bytes]:
        return self._cold

    def _warm_first(self, locations: list[Location]) -> list[Location]:
        cold = self._cold
        if not cold or len(locations) < 2:
            return locations
        return sorted(locations, key=lambda loc: loc.pack in cold)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- sync with the backend -------------------------------------------------------------
    def known_files(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM index_files")}

    def drop_files(self, names: Iterable[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            for name in names:
                row = self._db.execute(
                    "SELECT rowid FROM index_files WHERE name = ?", (name,)
                ).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM blobs WHERE src = ?", (row[0],))
                    self._db.execute("DELETE FROM index_files WHERE rowid = ?", (row[0],))
            self._db.execute("COMMIT")

    def add_file(self, name: str, packs: Iterable[tuple[bytes, list[BlobEntry]]]) -> None:
        """Record an index file's entries (idempotent: a file already known is skipped)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO index_files (name) VALUES (?)", (name,)
                )
                if cur.rowcount == 0:
                    self._db.execute("ROLLBACK")
                    return
                src = cur.lastrowid
                rows = [
                    (e.id, pack, int(e.kind), e.offset, e.length, e.raw_length, src)
                    for pack, entries in packs
                    for e in entries
                ]
                rows.sort()  # in key order: about 2.5 times faster to insert than random ids
                self._db.executemany(
                    "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
                if self._bloom is not None:
                    for r in rows:
                        self._bloom.add(r[0])
                    if self._bloom.full():
                        self._bloom = None  # outgrown: rebuilt, larger, at the next lookup
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- lookups ------------------------------------------------------------------------------
    def lookup(self, chunk_id: bytes) -> Location | None:
        """One copy of the chunk, a warm one if there is any."""
        if self._cold:
            found = self.lookup_all(chunk_id)
            return found[0] if found else None
        with self._lock:
            row = self._db.execute(
                "SELECT pack, kind, offset, length, raw FROM blobs WHERE id = ? LIMIT 1",
                (chunk_id,),
            ).fetchone()
        if row is None:
            return None
        return Location(row[0], BlobEntry(chunk_id, BlobKind(row[1]), row[2], row[3], row[4]))

    def lookup_all(self, chunk_id: bytes) -> list[Location]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT pack, kind, offset, length, raw FROM blobs WHERE id = ?",
                (chunk_id,),
            ).fetchall()
        return self._warm_first(
            [Location(r[0], BlobEntry(chunk_id, BlobKind(r[1]), r[2], r[3], r[4])) for r in rows]
        )

    def lookup_many(self, ids: Iterable[bytes]) -> dict[bytes, list[Location]]:
        """Every known location of each id, warm ones first, in one query per 500 ids
        (restore batches)."""
        out: dict[bytes, list[Location]] = {}
        with self._lock:
            for r in self._rows_in(_SELECT_LOCATIONS, "id", ids):
                out.setdefault(r[0], []).append(
                    Location(r[1], BlobEntry(r[0], BlobKind(r[2]), r[3], r[4], r[5]))
                )
        if self._cold:
            out = {k: self._warm_first(v) for k, v in out.items()}
        return out

    def contains(self, chunk_id: bytes) -> bool:
        """Whether any pack holds the chunk."""
        return self._probe(chunk_id, warm=False)

    def contains_warm(self, chunk_id: bytes) -> bool:
        """Whether a pack outside the cold set holds the chunk: what deduplication asks."""
        return self._probe(chunk_id, warm=True)

    def _probe(self, chunk_id: bytes, *, warm: bool) -> bool:
        with self._lock:
            bloom = self._bloom
            if bloom is None:
                # Building the filter reads every id once: worth it for a backup that stores
                # new data (thousands of lookups), not for one that finds nothing new.
                self._lookups += 1
                if self._lookups > _BLOOM_AFTER:
                    bloom = self._bloom = self._build_bloom()
            if bloom is not None and not bloom.may_contain(chunk_id):
                return False
            cold = self._cold if warm else frozenset()
            if cold:
                packs = self._db.execute("SELECT pack FROM blobs WHERE id = ?", (chunk_id,))
                return any(pack not in cold for (pack,) in packs)
            row = self._db.execute(
                "SELECT 1 FROM blobs WHERE id = ? LIMIT 1", (chunk_id,)
            ).fetchone()
        return row is not None

    def _build_bloom(self) -> _Bloom:
        """Called with the lock held."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM blobs").fetchone()
        bloom = _Bloom(max(int(n) * 2, 1 << 20))
        for (chunk_id,) in self._db.execute("SELECT id FROM blobs"):
            bloom.add(chunk_id)
        return bloom

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        """The ids among `ids` that the index does not know, in batches."""
        todo = set(ids)
        with self._lock:
            found = {r[0] for r in self._rows_in("SELECT DISTINCT id FROM blobs", "id", todo)}
        return todo - found

    def missing_warm(self, ids: Iterable[bytes], *, also_cold: Iterable[bytes] = ()) -> set[bytes]:
        """The ids among `ids` that no pack outside the cold set (and `also_cold`) holds."""
        todo = set(ids)
        cold = self._cold | frozenset(also_cold)
        if not cold:
            return self.missing(todo)
        located = self.lookup_many(todo)
        return {i for i in todo if not any(loc.pack not in cold for loc in located.get(i, ()))}

    def packs(self) -> dict[bytes, int]:
        """Every indexed pack and its blob kind."""
        with self._lock:
            return {r[0]: r[1] for r in self._db.execute("SELECT DISTINCT pack, kind FROM blobs")}

    def entries(self) -> Iterator[tuple[bytes, BlobEntry]]:
        """Every (pack, blob entry), one per distinct location, ordered by pack."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT pack, id, kind, offset, length, raw FROM blobs"
                " ORDER BY pack, offset"
            ).fetchall()
        for r in rows:
            yield r[0], BlobEntry(r[1], BlobKind(r[2]), r[3], r[4], r[5])

    def entries_of(self, packs: Iterable[bytes]) -> dict[bytes, list[BlobEntry]]:
        """The blob entries of each of `packs` that the index names."""
        out: dict[bytes, list[BlobEntry]] = {}
        with self._lock:
            for r in self._rows_in(_SELECT_ENTRIES, "pack", packs):
                out.setdefault(r[0], []).append(BlobEntry(r[1], BlobKind(r[2]), *r[3:6]))
        return out

    def _rows_in(self, select: str, column: str, values: Iterable[bytes]) -> list[Any]:
        """The rows of `select` whose `column` is one of `values`, 500 values per query.
        Called with the lock held; `select` and `column` are constants of this module."""
        todo = list(set(values))
        rows: list[Any] = []
        for i in range(0, len(todo), 500):
            batch = todo[i : i + 500]
            marks = ",".join("?" * len(batch))
            query = f"{select} WHERE {column} IN ({marks})"
            rows += self._db.execute(query, batch).fetchall()
        return rows

    def counts(self) -> tuple[int, int]:
        """(distinct blobs, distinct packs)."""
        with self._lock:
            b = self._db.execute("SELECT COUNT(DISTINCT id) FROM blobs").fetchone()[0]
            p = self._db.execute("SELECT COUNT(DISTINCT pack) FROM blobs").fetchone()[0]
        return int(b), int(p)

    def stored_size(self) -> tuple[int, int]:
        """(sum of stored lengths, sum of plaintext lengths) over distinct blobs."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(l), 0), COALESCE(SUM(r), 0) FROM "
                "(SELECT MIN(length) AS l, MIN(raw) AS r FROM blobs GROUP BY id)"
            ).fetchone()
        return int(row[0]), int(row[1])
