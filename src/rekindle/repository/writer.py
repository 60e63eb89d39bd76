"""Writes new blobs: deduplicates, fills packs of each kind, uploads them, writes index files.

Thread-safe: worker threads call `store` with already-compressed payloads; a small pool of
upload threads writes finished packs; `flush` writes the index file naming them. Write order
(FORMAT.md section 11): a pack is in the backend before any index file names it, and an
index file is written before the restore point that needs it.

Memory is bounded: at most `max_pending_uploads` finished packs wait in memory, and pack
buffers are recycled (one per blob kind being filled plus one per pending upload), so a long
backup touches the same few buffers again and again instead of fresh memory.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from rekindle.format import codec
from rekindle.format.crypto import content_hash
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import PackBuilder
from rekindle.format.registry import BlobKind
from rekindle.repository.repo import Repository, pack_name

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
        self._builders: dict[BlobKind, PackBuilder] = {}
        self._reserved: set[bytes] = set()  # ids stored (or being stored) by this writer
        self._uploads = ThreadPoolExecutor(upload_threads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(max_pending_uploads)
        self._futures: list[Future[None]] = []
        self._done_packs: list[PackEntries] = []
        self._free_buffers: list[bytearray] = []
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
        finished: PackBuilder | None = None
        with self._lock:
            b = self._builders.get(kind)
            if b is None:
                buf = self._free_buffers.pop() if self._free_buffers else None
                b = self._builders[kind] = PackBuilder(
                    self.repo.keys, kind, self._level, buffer=buf
                )
            b.add_encoded(chunk_id, payload, raw_length)
            self.blobs_added += 1
            if b.size >= self.repo.config.pack_size:
                finished = self._builders.pop(kind)
        if finished is not None:
            self._submit(finished)

    def store_plain(self, kind: BlobKind, chunk_id: bytes, plaintext: bytes) -> None:
        self.store(kind, chunk_id, codec.encode(plaintext, self._level), len(plaintext))

    # -- packs and index -----------------------------------------------------------------------
    def _submit(self, builder: PackBuilder) -> None:
        self._slots.acquire()
        try:
            fut = self._uploads.submit(self._upload, builder)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._futures.append(fut)

    def _upload(self, builder: PackBuilder) -> None:
        try:
            with builder.finish() as data:
                pack_id = content_hash(data)
                self.repo.backend.write(pack_name(builder.kind, pack_id), data)
                size = len(data)
            with self._lock:
                self._free_buffers.append(builder.buffer)
                self._done_packs.append(PackEntries(pack_id, builder.kind, builder.entries))
                self.bytes_added += size
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
            self._slots.release()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Upload partly filled packs, wait for every upload, write the index file."""
        with self._lock:
            builders = [b for b in self._builders.values() if len(b)]
            self._builders.clear()
        for b in builders:
            self._submit(b)
        with self._lock:
            futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        self._raise_pending()
        with self._lock:
            packs, self._done_packs = self._done_packs, []
        if packs:
            self.repo.write_index(packs)

    def close(self) -> None:
        self._uploads.shutdown(wait=True, cancel_futures=True)
