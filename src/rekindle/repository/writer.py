"""Writes new blobs: deduplicates, fills packs of each kind, uploads them, writes index files.

Thread-safe: worker threads call `store` with already-compressed payloads; a small pool of
upload threads writes finished packs; `flush` writes the index file naming them. Write order
(FORMAT.md section 11): a pack is in the backend before any index file names it, and an
index file is written before the restore point that needs it.

Packs are assembled in spool files (store/spool.py), not in memory: a backup's memory does not
grow with the pack size or with the number of packs waiting for their upload (at most
`max_pending_uploads`). A thread that stores a blob seals it into its own reusable scratch
buffer and writes it at the place the pack's layout gave it, outside the writer's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from rekindle.core.memory import return_freed_memory
from rekindle.format import codec
from rekindle.format.crypto import content_hasher
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import BlobEntry, PackBuilder
from rekindle.format.registry import BlobKind
from rekindle.repository.repo import Repository, pack_name
from rekindle.store.base import Backend
from rekindle.store.spool import Spool

# Write an index file after this many packs, so an interrupted backup's uploads are found
# (and not sent again) by the next run; and after this many blobs, so the entries waiting
# for their index file (kept in memory until it is written) stay few when the blobs are
# small files (about 2 MiB for 8,192; 32 packs of small files hold some 40,000).
INDEX_EVERY_PACKS = 32
INDEX_EVERY_BLOBS = 8192


# Blobs up to this size (small files are one blob each) are sealed into the pack's staging
# buffer under the writer's lock and reach the spool file in runs of STAGE_BYTES: a system
# call per small blob would cost more in GIL hand-offs than it saves. Larger blobs are sealed
# and written by the thread that stores them, in parallel with the others.
SMALL_BLOB = 320 * 1024
STAGE_BYTES = 1024 * 1024


@dataclass(eq=False)
class _OpenPack:
    """A pack being filled: its layout, its spool file, the run of small blobs not yet
    written (`stage`, which starts at offset `stage_at`), and how many writes are still
    under way in other threads."""

    builder: PackBuilder
    spool: Spool
    stage: bytearray = field(default_factory=bytearray)
    stage_at: int = 0
    writing: int = 0
    failed: BaseException | None = None
    written: threading.Condition = field(default_factory=threading.Condition)

    def take_stage(self) -> tuple[bytearray, int] | None:
        """The staged run, to be written by the caller (counted in `writing`)."""
        if not self.stage:
            return None
        run = (self.stage, self.stage_at)
        self.stage = bytearray()
        with self.written:
            self.writing += 1
        return run


class BlobWriter:
    def __init__(
        self, repo: Repository, *, upload_threads: int = 2, max_pending_uploads: int = 2
    ) -> None:
        self.repo = repo
        self._level = repo.config.zstd_level
        self._lock = threading.Lock()
        self._open: dict[BlobKind, _OpenPack] = {}
        self._reserved: set[bytes] = set()  # ids stored (or being stored) by this writer
        self._uploads = ThreadPoolExecutor(upload_threads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max_pending_uploads)
        self._futures: list[Future[None]] = []
        self._done_packs: list[PackEntries] = []
        self._packs: set[_OpenPack] = set()  # not stored yet: `close` closes their spools
        self._closed = False
        self._local = threading.local()
        self._error: BaseException | None = None
        self.bytes_added = 0  # stored bytes of new blobs
        self.blobs_added = 0
        self.packs_written = 0

    @property
    def unindexed(self) -> int:
        """Ids this writer stored (or is storing) that no index file names yet."""
        with self._lock:
            return len(self._reserved)

    # -- deduplication ------------------------------------------------------------------------
    def reserve(self, chunk_id: bytes) -> bool:
        """True if the caller must store this chunk; False if it exists or is being stored.

        `_reserved` holds only the ids stored (or being stored) and not yet in an index file:
        once indexed they are found in the index, so the set does not grow with the backup."""
        with self._lock:
            if chunk_id in self._reserved:
                return False
            self._reserved.add(chunk_id)
        # A copy only in the archive tier does not count: a warm restore must never wait.
        if self.repo.index.contains_warm(chunk_id):
            with self._lock:
                self._reserved.discard(chunk_id)
            return False
        return True

    def store(self, kind: BlobKind, chunk_id: bytes, payload: bytes, raw_length: int) -> None:
        """Add an encoded blob (codec byte + payload, see format.codec) to a pack.

        Only placing the blob (and sealing a small one) happens under the lock; sealing a
        large blob and writing to the pack's spool file happen in the calling thread, in
        parallel with other threads."""
        self._raise_pending()
        finished: _OpenPack | None = None
        run: tuple[bytearray, int] | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the blob writer is closed")
            op = self._open.get(kind)
            if op is None:
                op = self._open[kind] = self._new_pack(kind)
            entry = op.builder.place(chunk_id, len(payload), raw_length)
            large = entry.length > SMALL_BLOB
            if large:
                run = op.take_stage()  # the run ends where this blob starts
                with op.written:
                    op.writing += 1
            else:
                if not op.stage:
                    op.stage_at = entry.offset
                op.stage.extend(bytes(entry.length))
                with memoryview(op.stage)[entry.offset - op.stage_at :] as view:
                    op.builder.seal_into(entry, payload, view)
            self.blobs_added += 1
            if op.builder.size >= self.repo.config.pack_size:
                finished = self._open.pop(kind)
            if not large and (finished is not None or len(op.stage) >= STAGE_BYTES):
                run = op.take_stage()
        # Each counted write runs (and is uncounted) even if another failed, so an upload
        # waiting for the pack's writes always wakes up and sees the failure.
        try:
            if run is not None:
                self._write(op, lambda: op.spool.write_at(run[0], run[1]))
        finally:
            try:
                if large:
                    self._write(op, lambda: self._seal_and_write(op, entry, payload))
            finally:
                if finished is not None:
                    self._submit(finished)

    def _seal_and_write(self, op: _OpenPack, entry: BlobEntry, payload: bytes) -> None:
        with self._scratch(entry.length) as view:
            op.builder.seal_into(entry, payload, view)
            op.spool.write_at(view, entry.offset)

    @staticmethod
    def _write(op: _OpenPack, write: Callable[[], None]) -> None:
        """Do one write counted in `op.writing`; a failure fails the pack and the caller."""
        try:
            write()
        except BaseException as e:
            with op.written:
                op.failed = op.failed or e
            raise
        finally:
            with op.written:
                op.writing -= 1
                op.written.notify_all()

    def _scratch(self, length: int) -> memoryview:
        """This thread's reusable buffer for sealing a blob (fresh memory is slow to touch,
        reused memory is not); a view of exactly `length` bytes."""
        buf: bytearray | None = getattr(self._local, "scratch", None)
        if buf is None or len(buf) < length:
            buf = self._local.scratch = bytearray(length)
        return memoryview(buf)[:length]

    def release_scratch(self) -> None:
        """Free this thread's scratch buffer (up to the largest blob it sealed): a thread
        done with a large file need not keep it through the small files that follow."""
        self._local.__dict__.pop("scratch", None)

    def _new_pack(self, kind: BlobKind) -> _OpenPack:
        op = _OpenPack(PackBuilder(self.repo.keys, kind), self.repo.backend.new_spool())
        self._packs.add(op)
        return op

    def store_plain(self, kind: BlobKind, chunk_id: bytes, plaintext: bytes) -> None:
        self.store(kind, chunk_id, codec.encode(plaintext, self._level), len(plaintext))

    # -- packs and index -----------------------------------------------------------------------
    def _submit(self, op: _OpenPack) -> None:
        self._slots.acquire()
        try:
            fut = self._uploads.submit(self._upload, op)
        except BaseException:
            self._slots.release()
            self._close_pack(op)
            raise
        with self._lock:
            self._futures.append(fut)

    def _upload(self, op: _OpenPack) -> None:
        builder, spool = op.builder, op.spool
        try:
            run = op.take_stage()  # a pack flushed part-full may end in a staged run
            if run is not None:
                self._write(op, lambda: spool.write_at(run[0], run[1]))
            with op.written:
                while op.writing:
                    op.written.wait()
                if op.failed is not None:
                    raise op.failed
            pack_id = store_pack(self.repo.backend, builder, spool)
            packs = self._stored(PackEntries(pack_id, builder.kind, builder.entries), spool.size)
            if packs:
                self._index(packs)
        except BaseException as e:
            with self._lock:
                self._error = self._error or e
            raise
        finally:
            self._close_pack(op)
            self._slots.release()

    def _stored(self, pack: PackEntries, size: int) -> list[PackEntries]:
        """A pack is in the backend: its entries go into the next index file. Returns the
        packs an index file must now be written for (every INDEX_EVERY_PACKS packs or
        INDEX_EVERY_BLOBS blobs)."""
        with self._lock:
            self._done_packs.append(pack)
            self.bytes_added += size
            self.packs_written += 1
            write_index = (
                len(self._done_packs) >= INDEX_EVERY_PACKS
                or sum(len(p.blobs) for p in self._done_packs) >= INDEX_EVERY_BLOBS
            )
            packs = self._done_packs if write_index else []
            if write_index:
                self._done_packs = []
        return packs

    def add_stored_pack(self, pack: PackEntries, size: int) -> None:
        """Account for a pack another process stored (backup's worker processes): its blobs
        were reserved here, and the pack is indexed with this writer's. An index file due is
        written by an upload thread: the caller answers a worker process and must not wait."""
        self._raise_pending()
        with self._lock:
            self.blobs_added += len(pack.blobs)
        packs = self._stored(pack, size)
        if packs:
            fut = self._uploads.submit(self._write_index, packs)
            with self._lock:
                self._futures.append(fut)

    def _write_index(self, packs: list[PackEntries]) -> None:
        try:
            self._index(packs)
        except BaseException as e:
            with self._lock:
                self._error = self._error or e
            raise

    def _index(self, packs: list[PackEntries]) -> None:
        """Write the index file naming these stored packs. Their ids are then found in the
        index (`write_index` adds them to it before returning), so `_reserved` lets them go;
        and the entries just freed are given back to the system."""
        self.repo.write_index(packs)
        with self._lock:
            for p in packs:
                self._reserved.difference_update(e.id for e in p.blobs)
        return_freed_memory()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Upload partly filled packs, wait for every upload, write the index file."""
        with self._lock:
            open_packs = list(self._open.values())
            self._open.clear()
        for op in open_packs:
            if len(op.builder):
                self._submit(op)
            else:
                self._close_pack(op)
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        self._raise_pending()
        with self._lock:
            packs, self._done_packs = self._done_packs, []
        if packs:
            self._index(packs)

    def _close_pack(self, op: _OpenPack) -> None:
        op.spool.close()
        with self._lock:
            self._packs.discard(op)

    def close(self) -> None:
        """Stop: no blob is stored from now on, and the spool files of packs never stored
        are removed once the writes under way into them are over."""
        with self._lock:
            self._closed = True
        self._uploads.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left, self._packs = self._packs, set()
            self._open.clear()
        for op in left:  # a backup that failed or stopped: nothing more is stored
            with op.written:
                while op.writing:
                    op.written.wait()
            op.spool.close()


def store_pack(backend: Backend, builder: PackBuilder, spool: Spool) -> bytes:
    """Finish a pack whose blobs are all written into `spool` (its header and tail), name it
    by the hash of its bytes and store it; returns the pack id."""
    spool.write_at(builder.header, 0)
    spool.write_at(builder.tail(), builder.size)
    hasher = content_hasher()  # the pack's name: the hash of all its bytes
    for piece in spool.pieces():
        hasher.update(piece)
    pack_id = hasher.digest()
    backend.write_spool(pack_name(builder.kind, pack_id), spool)
    return pack_id
