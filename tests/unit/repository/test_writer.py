"""The blob writer: packs written in parallel from several threads are whole, and a closed
writer stores nothing more."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from rekindle.format.registry import BlobKind
from rekindle.repository import writer as writer_module
from rekindle.repository.check import check
from rekindle.repository.writer import SMALL_BLOB, BlobWriter
from rekindle.store.local import LocalBackend
from tests.helpers import make_repo


def test_threads_storing_small_and_large_blobs_make_whole_packs(tmp_path: Path) -> None:
    with make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache") as repo:
        writer = BlobWriter(repo)
        blobs: dict[bytes, bytes] = {}

        def store(seed: int) -> None:
            rng = random.Random(seed)
            for i in range(40):
                # small (staged) and large (written by this thread) blobs interleave
                size = rng.randrange(1, 2000) if i % 3 else SMALL_BLOB + rng.randrange(1, 9000)
                data = rng.randbytes(size)
                cid = repo.keys.chunk_id(data)
                if writer.reserve(cid):
                    writer.store_plain(BlobKind.DATA, cid, data)
                    blobs[cid] = data

        threads = [threading.Thread(target=store, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writer.flush()
        writer.close()
        assert writer.packs_written >= 2
        for cid, data in blobs.items():
            assert bytes(repo.read_blob(cid)) == data
        assert check(repo, read_data=True).ok
    leftovers = [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_a_closed_writer_stores_nothing_and_leaves_no_spool(tmp_path: Path) -> None:
    with make_repo(LocalBackend(tmp_path / "repo"), tmp_path / "cache") as repo:
        writer = BlobWriter(repo)
        data = os.urandom(1000)
        writer.store_plain(BlobKind.DATA, repo.keys.chunk_id(data), data)
        writer.close()  # a failed backup: the open pack is dropped
        with pytest.raises(RuntimeError, match="closed"):
            writer.store_plain(BlobKind.DATA, repo.keys.chunk_id(b"late"), b"late")
    assert [p.name for p in (tmp_path / "repo").iterdir() if p.name.startswith(".tmp-")] == []


def test_index_files_come_every_index_every_blobs_and_indexed_ids_are_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small blobs fill packs with many entries: an index file is written once this many
    are waiting, not only every INDEX_EVERY_PACKS packs, and the writer forgets the ids an
    index file names (they are found in the index): its memory does not grow with the
    backup."""
    monkeypatch.setattr(writer_module, "INDEX_EVERY_BLOBS", 100)
    with make_repo(
        LocalBackend(tmp_path / "repo"), tmp_path / "cache", pack_size=64 * 1024
    ) as repo:
        # One upload at a time, so what may wait is known: the blobs short of the limit,
        # the pack whose upload reached it, and one full pack waiting for the upload slot.
        writer = BlobWriter(repo, upload_threads=1, max_pending_uploads=1)
        rng = random.Random(7)
        blobs: dict[bytes, bytes] = {}
        most_unindexed = 0
        for _ in range(1200):
            data = rng.randbytes(1000)
            cid = repo.keys.chunk_id(data)
            assert writer.reserve(cid)
            writer.store_plain(BlobKind.DATA, cid, data)
            blobs[cid] = data
            most_unindexed = max(most_unindexed, writer.unindexed)
        writer.flush()
        writer.close()
        assert writer.unindexed == 0
        # a pack holds about 60 of these blobs (1,200 would wait without the limit)
        assert most_unindexed < 100 + 2 * 70
        names = [o.name for o in repo.backend.list("index/")]
        per_file = [sum(len(p.blobs) for p in repo.read_index_file(n).packs) for n in names]
        assert sum(per_file) == len(blobs)
        assert len(names) >= 1200 // (100 + 70)
        assert max(per_file) < 100 + 70
        # an id already indexed is found there, and is not held again
        some = next(iter(blobs))
        assert not writer.reserve(some)
        assert writer.unindexed == 0
        for cid, data in blobs.items():
            assert bytes(repo.read_blob(cid)) == data
        assert check(repo, read_data=True).ok
