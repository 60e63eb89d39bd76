"""The local index cache: lookups, its Bloom filter, and dropping index files."""

from __future__ import annotations

import os

from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind
from rekindle.repository.index import LocalIndex, _Bloom


def _entries(n: int) -> list[BlobEntry]:
    return [BlobEntry(os.urandom(32), BlobKind.DATA, 24 + i * 100, 100, 90) for i in range(n)]


def test_contains_is_exact_through_the_bloom_filter() -> None:
    idx = LocalIndex(None)
    first = _entries(500)
    idx.add_file("index/a", [(b"p" * 32, first)])
    assert all(idx.contains(e.id) for e in first)  # builds the filter from the table
    later = _entries(300)
    idx.add_file("index/b", [(b"q" * 32, later)])  # added to the live filter
    assert all(idx.contains(e.id) for e in later)
    assert not any(idx.contains(os.urandom(32)) for _ in range(2000))
    idx.drop_files(["index/a"])
    assert not any(idx.contains(e.id) for e in first)  # filter says maybe; the table says no
    assert all(idx.contains(e.id) for e in later)


def test_bloom_false_positive_rate_and_growth() -> None:
    b = _Bloom(10_000)
    ids = [os.urandom(32) for _ in range(10_000)]
    for i in ids:
        b.add(i)
    assert all(b.may_contain(i) for i in ids)
    fp = sum(b.may_contain(os.urandom(32)) for _ in range(20_000)) / 20_000
    assert fp < 0.02
    idx = LocalIndex(None)
    idx.add_file("index/a", [(b"p" * 32, _entries(10))])
    assert idx.contains(idx_first := next(e.id for _, e in idx.entries()))
    many = _entries(900_000 // 10)
    idx.add_file("index/b", [(b"r" * 32, many)])
    assert idx.contains(many[-1].id) and idx.contains(idx_first)
