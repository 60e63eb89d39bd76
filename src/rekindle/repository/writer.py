"""Writes new blobs: deduplicates, fills packs of each kind, uploads them, writes index files.

Thread-safe: worker threads call `store` with already-compressed payloads; a small pool of
upload threads writes finished packs; `flush` writes the index file naming them. Write order
(FORMAT.md section 11): a pack is in the backend before any index file names it, and an
index file is written before the restore point that needs it.

Packs are assembled in spool files (store/spool.py), not in memory: a backup's memory does not
grow with the pack size or with the number of packs waiting for their upload (at most
`max_pending_uploads`). Each pack being filled has one scratch buffer for encrypting a blob;
those are recycled, so a long backup touches the same few buffers instead of fresh memory.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from rekindle.format import codec
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import PackBuilder
from rekindle.format.registry import BlobKind
from rekindle.repository.repo import Repository, pack_name
from rekindle.store.spool import Spool

# Write an index file after this many packs, so an interrupted backup's uploads are found
# (and not sent again) by the next run.
INDEX_EVERY_PACKS = 32


class BlobWriter:
    def __init__(
        self, repo: Repository, *, upload_threads: int = 2, max_pending_uploads: int = 2
    ) -> None:
        self.repo = repo
        self._level = repo.config.zstd_level
        self._lock = threading.Lock()
        self._builders: dict[BlobKind, tuple[PackBuilder, Spool]] = {}
        self._reserved: set[bytes] = set()  # ids stored (or being stored) by this writer
        self._uploads = ThreadPoolExecutor(upload_threads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max_pending_uploads)
        self._futures: list[Future[None]] = []
        self._done_packs: list[PackEntries] = []
        self._free_scratch: list[bytearray] = []
        self._spools: set[Spool] = set()  # open ones, closed by `close` if never stored
        self._error: BaseException | None = None
        self.bytes_added = 0  # stored bytes of new blobs
        self.blobs_added = 0
        self.packs_written = 0

    # -- deduplication ------------------------------------------------------------------------
    def reserve(self, chunk_id: bytes) -> bool:
        """True if the caller must store this chunk; False if it exists or is being stored."""
        with self._lock:
            if chunk_id in self._reserved:
                return False
            self._reserved.add(chunk_id)
        # A copy only in the archive tier does not count: a warm restore must never wait.
        return not self.repo.index.contains_warm(chunk_id)

    def known(self, chunk_id: bytes) -> bool:
        with self._lock:
            if chunk_id in self._reserved:
                return True
        return self.repo.index.contains_warm(chunk_id)

    def store(self, kind: BlobKind, chunk_id: bytes, payload: bytes, raw_length: int) -> None:
        """Add an encoded blob (codec byte + payload, see format.codec) to a pack."""
        self._raise_pending()
        finished: tuple[PackBuilder, Spool] | None = None
        with self._lock:
            open_pack = self._builders.get(kind)
            if open_pack is None:
                open_pack = self._builders[kind] = self._new_pack(kind)
            builder = open_pack[0]
            builder.add_encoded(chunk_id, payload, raw_length)
            self.blobs_added += 1
            if builder.size >= self.repo.config.pack_size:
                finished = self._builders.pop(kind)
        if finished is not None:
            self._submit(*finished)

    def _new_pack(self, kind: BlobKind) -> tuple[PackBuilder, Spool]:
        spool = self.repo.backend.new_spool()
        self._spools.add(spool)
        scratch = self._free_scratch.pop() if self._free_scratch else None
        return PackBuilder(self.repo.keys, kind, self._level, spool.write, scratch=scratch), spool

    def store_plain(self, kind: BlobKind, chunk_id: bytes, plaintext: bytes) -> None:
        self.store(kind, chunk_id, codec.encode(plaintext, self._level), len(plaintext))

    # -- packs and index -----------------------------------------------------------------------
    def _submit(self, builder: PackBuilder, spool: Spool) -> None:
        self._slots.acquire()
        try:
            fut = self._uploads.submit(self._upload, builder, spool)
        except BaseException:
            self._slots.release()
            self._close_spool(spool)
            raise
        with self._lock:
            self._futures.append(fut)

    def _upload(self, builder: PackBuilder, spool: Spool) -> None:
        try:
            pack_id = builder.finish()
            self.repo.backend.write_spool(pack_name(builder.kind, pack_id), spool)
            with self._lock:
                self._free_scratch.append(builder.scratch)
                self._done_packs.append(PackEntries(pack_id, builder.kind, builder.entries))
                self.bytes_added += spool.size
                self.packs_written += 1
                write_index = len(self._done_packs) >= INDEX_EVERY_PACKS
                packs = self._done_packs if write_index else []
                if write_index:
                    self._done_packs = []
            if packs:
                self.repo.write_index(packs)
        except BaseException as e:
            with self._lock:
                self._error = self._error or e
            raise
        finally:
            self._close_spool(spool)
            self._slots.release()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Upload partly filled packs, wait for every upload, write the index file."""
        with self._lock:
            open_packs = list(self._builders.values())
            self._builders.clear()
        for builder, spool in open_packs:
            if len(builder):
                self._submit(builder, spool)
            else:
                self._close_spool(spool)
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        self._raise_pending()
        with self._lock:
            packs, self._done_packs = self._done_packs, []
        if packs:
            self.repo.write_index(packs)

    def _close_spool(self, spool: Spool) -> None:
        spool.close()
        with self._lock:
            self._spools.discard(spool)

    def close(self) -> None:
        self._uploads.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left, self._spools = self._spools, set()
            self._builders.clear()
        for spool in left:  # a backup that failed or stopped: nothing more is stored
            spool.close()
