"""The local index cache: lookups, its Bloom filter, and dropping index files."""

from __future__ import annotations

import os

import pytest

from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind
from rekindle.repository import index as index_mod
from rekindle.repository.index import LocalIndex, _Bloom


def _entries(n: int) -> list[BlobEntry]:
    return [BlobEntry(os.urandom(32), BlobKind.DATA, 24 + i * 100, 100, 90) for i in range(n)]


def test_contains_is_exact_through_the_bloom_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "_BLOOM_AFTER", 0)
    idx = LocalIndex(None)
    first = _entries(500)
    idx.add_file("index/a", [(b"p" * 32, first)])
    assert all(idx.contains(e.id) for e in first)
    assert idx._bloom is not None and idx._bloom.count == 500  # built from the table
    later = _entries(300)
    idx.add_file("index/b", [(b"q" * 32, later)])
    assert idx._bloom.count == 800  # added to the live filter
    assert all(idx.contains(e.id) for e in later)
    assert not any(idx.contains(os.urandom(32)) for _ in range(2000))
    idx.drop_files(["index/a"])
    assert not any(idx.contains(e.id) for e in first)  # filter says maybe; the table says no
    assert all(idx.contains(e.id) for e in later)


def test_bloom_is_built_only_after_many_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "_BLOOM_AFTER", 10)
    idx = LocalIndex(None)
    entries = _entries(20)
    idx.add_file("index/a", [(b"p" * 32, entries)])
    for e in entries[:10]:
        assert idx.contains(e.id)
    assert idx._bloom is None
    assert idx.contains(entries[10].id)
    assert idx._bloom is not None


def test_bloom_false_positive_rate() -> None:
    b = _Bloom(10_000)
    ids = [os.urandom(32) for _ in range(10_000)]
    for i in ids:
        b.add(i)
    assert all(b.may_contain(i) for i in ids)
    fp = sum(b.may_contain(os.urandom(32)) for _ in range(20_000)) / 20_000
    assert fp < 0.02
    assert not b.full()


def test_a_full_bloom_filter_is_rebuilt_larger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "_BLOOM_AFTER", 0)
    idx = LocalIndex(None)
    first = _entries(10)
    idx.add_file("index/a", [(b"p" * 32, first)])
    assert idx.contains(first[0].id)
    small = idx._bloom
    assert small is not None
    monkeypatch.setattr(_Bloom, "full", lambda self: self is small)
    many = _entries(1000)
    idx.add_file("index/b", [(b"r" * 32, many)])
    assert idx._bloom is None  # dropped when full...
    assert all(idx.contains(e.id) for e in many + first)
    assert idx._bloom is not None and idx._bloom is not small  # ...and rebuilt
    assert idx._bloom.count == 1010
