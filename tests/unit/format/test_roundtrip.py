"""Property tests: every encoder/decoder pair of rekindle.format round-trips, and every
flipped bit is detected (never returned as data)."""

import os
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rekindle.core.errors import (
    FormatError,
    IntegrityError,
    NotARepositoryError,
    UnsupportedVersionError,
    WrongPasswordError,
)
from rekindle.format import codec, config, envelope, keyfile, pack
from rekindle.format.crypto import RepoKeys
from rekindle.format.indexdoc import IndexDoc, PackEntries
from rekindle.format.registry import BlobKind, FileKind, NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node, decode_tree, encode_tree, safe_name

KEYS = RepoKeys.from_master(bytes(range(32)))
OTHER = RepoKeys.from_master(bytes(range(1, 33)))
FAST_KDF = keyfile.KdfParams(salt=b"s" * 16, time_cost=1, memory_kib=8, parallelism=1)
cfg = settings(max_examples=60, deadline=None)


@cfg
@given(st.binary(max_size=200_000), st.integers(0, 6))
def test_codec_roundtrip(data: bytes, level: int) -> None:
    assert codec.decode(codec.encode(data, level), "t") == data


def test_codec_skips_incompressible() -> None:
    data = os.urandom(100_000)
    assert codec.encode(data, 3)[0] == 0
    assert codec.encode(b"a" * 100_000, 3)[0] == 1


@cfg
@given(
    st.lists(st.binary(min_size=0, max_size=5000), min_size=1, max_size=20),
    st.sampled_from(list(BlobKind)),
)
def test_pack_roundtrip(blobs: list[bytes], kind: BlobKind) -> None:
    ids = [KEYS.chunk_id(x) for x in blobs]
    raw, _ = pack.build_pack(KEYS, kind, 3, list(zip(ids, blobs, strict=True)))
    head = raw[: pack.HEADER_SIZE]
    tlen = pack.table_length(raw[-8:], len(raw), "p")
    table = pack.read_table(KEYS, head, raw[len(raw) - 8 - tlen : len(raw) - 8], len(raw), "p")
    assert [e.id for e in table] == ids
    for e, data in zip(table, blobs, strict=True):
        assert pack.open_blob(KEYS, head, e, raw[e.offset : e.offset + e.length], "p") == data


def _one_pack() -> tuple[bytes, list[pack.BlobEntry]]:
    blobs = [os.urandom(300) + bytes(i) for i in range(5)]
    return pack.build_pack(KEYS, BlobKind.DATA, 3, [(KEYS.chunk_id(b), b) for b in blobs])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_flipped_bit_in_a_pack_is_detected(data: st.DataObject) -> None:
    raw, _ = _one_pack()
    pos = data.draw(st.integers(0, len(raw) * 8 - 1))
    damaged = bytearray(raw)
    damaged[pos // 8] ^= 1 << (pos % 8)
    damaged_b = bytes(damaged)
    head = damaged_b[: pack.HEADER_SIZE]
    with pytest.raises(IntegrityError):  # FormatError is an IntegrityError
        tlen = pack.table_length(damaged_b[-8:], len(damaged_b), "p")
        table = pack.read_table(
            KEYS,
            head,
            damaged_b[len(damaged_b) - 8 - tlen : len(damaged_b) - 8],
            len(damaged_b),
            "p",
        )
        # The table survived: then a blob must fail, using the table's own entries.
        for e in table:
            pack.open_blob(KEYS, head, e, damaged_b[e.offset : e.offset + e.length], "p")


def test_blob_cannot_be_swapped_or_relabelled() -> None:
    raw, entries = _one_pack()
    head = raw[: pack.HEADER_SIZE]
    a, b = entries[0], entries[1]
    sealed_b = raw[b.offset : b.offset + b.length]
    forged = pack.BlobEntry(a.id, a.kind, b.offset, b.length, b.raw_length)
    with pytest.raises(IntegrityError):
        pack.open_blob(KEYS, head, forged, sealed_b, "p")
    relabelled = pack.BlobEntry(b.id, BlobKind.TREE, b.offset, b.length, b.raw_length)
    with pytest.raises(IntegrityError):
        pack.open_blob(KEYS, head, relabelled, sealed_b, "p")
    with pytest.raises(IntegrityError):
        pack.open_blob(OTHER, head, b, sealed_b, "p")


@cfg
@given(
    st.recursive(
        st.none() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    ),
    st.sampled_from(list(FileKind)),
)
def test_envelope_roundtrip(doc: object, kind: FileKind) -> None:
    sealed = envelope.seal_document(KEYS, kind, doc)
    assert envelope.open_document(KEYS, kind, sealed, "f") == doc


def test_envelope_kind_and_key_are_authenticated() -> None:
    sealed = envelope.seal_document(KEYS, FileKind.INDEX, {"a": 1})
    with pytest.raises(FormatError):
        envelope.open_document(KEYS, FileKind.SNAPSHOT, sealed, "f")
    forged = sealed[:5] + bytes((FileKind.SNAPSHOT,)) + sealed[6:]
    with pytest.raises(IntegrityError):
        envelope.open_document(KEYS, FileKind.SNAPSHOT, forged, "f")
    with pytest.raises(IntegrityError):
        envelope.open_document(OTHER, FileKind.INDEX, sealed, "f")


ids = st.binary(min_size=32, max_size=32)
names = st.binary(min_size=1, max_size=40).filter(safe_name)
nodes = st.builds(
    Node,
    name=names,
    type=st.sampled_from(list(NodeType)),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    user=st.none() | st.text(max_size=10),
    group=st.none() | st.text(max_size=10),
    mtime_ns=st.integers(-(2**62), 2**62),
    ctime_ns=st.integers(0, 2**62),
    size=st.integers(0, 2**50),
    content=st.lists(ids | st.integers(0, 2**40), max_size=5),
    subtree=st.lists(ids, max_size=3),
    link_target=st.none() | st.binary(max_size=50),
    rdev=st.none() | st.integers(0, 2**32),
    xattrs=st.lists(
        st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=20)),
        max_size=3,
        unique_by=lambda x: x[0],
    ),
    changed_while_read=st.booleans(),
)


def _normal(n: Node) -> dict[str, object]:
    return n.to_doc()


@cfg
@given(st.lists(nodes, max_size=10, unique_by=lambda n: n.name))
def test_tree_roundtrip(ns: list[Node]) -> None:
    back = decode_tree(encode_tree(ns))
    assert [_normal(n) for n in back] == [_normal(n) for n in sorted(ns, key=lambda n: n.name)]


def test_tree_rejects_garbage() -> None:
    with pytest.raises(FormatError):
        decode_tree(b"\x93\x01\x02")
    with pytest.raises(FormatError):
        decode_tree(b"")


@cfg
@given(
    st.lists(
        st.tuples(
            ids,
            st.lists(
                st.tuples(
                    ids, st.integers(24, 2**40), st.integers(29, 2**31), st.integers(0, 2**31)
                ),
                max_size=4,
            ),
        ),
        max_size=4,
    )
)
def test_index_roundtrip(packs: list[tuple[bytes, list[tuple[bytes, int, int, int]]]]) -> None:
    doc = IndexDoc(
        packs=[
            PackEntries(
                pid,
                BlobKind.DATA,
                [pack.BlobEntry(i, BlobKind.DATA, o, ln, r) for i, o, ln, r in bl],
            )
            for pid, bl in packs
        ],
        supersedes=[os.urandom(32)],
    )
    back = IndexDoc.from_doc(doc.to_doc(), "i")
    assert back == doc


@cfg
@given(
    st.text(max_size=20),
    st.lists(st.text(max_size=30), min_size=1, max_size=3),
    st.lists(ids, min_size=1, max_size=3),
    st.lists(st.text(max_size=5), max_size=3),
)
def test_snapshot_roundtrip(
    host: str, paths: list[str], tree: list[bytes], tags: list[str]
) -> None:
    s = Snapshot(
        time=datetime(2026, 11, 25, 3, 0, tzinfo=UTC),
        host=host,
        paths=paths,
        tree=tree,
        program="rekindle test",
        tags=tags,
        parent="ab" * 32,
        stats={"files_new": 3, "duration": 1.5},
        missed=[("/x", "Permission denied")],
    )
    sealed = envelope.seal_document(KEYS, FileKind.SNAPSHOT, s.to_doc())
    back = Snapshot.from_doc(envelope.open_document(KEYS, FileKind.SNAPSHOT, sealed, "s"), "id")
    s.id = "id"
    assert back == s


def test_config_roundtrip_and_mac() -> None:
    c = config.RepoConfig(id=os.urandom(32), created="2026-11-25T00:00:00+00:00")
    raw = c.encode(KEYS)
    back, mac = config.decode(raw)
    assert back == c
    back.verify(KEYS, mac)
    with pytest.raises(IntegrityError):
        back.verify(OTHER, mac)
    tampered = raw.replace(b'"pack_size": 16777216', b'"pack_size": 16777217')
    t, tmac = config.decode(tampered)
    with pytest.raises(IntegrityError):
        t.verify(KEYS, tmac)


def test_config_refuses_newer_version_and_non_repositories() -> None:
    c = config.RepoConfig(id=os.urandom(32), created="x")
    raw = c.encode(KEYS).replace(b'"version": 1', b'"version": 99')
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        config.decode(raw)
    with pytest.raises(NotARepositoryError):
        config.decode(b"hello")
    with pytest.raises(NotARepositoryError):
        config.decode(b'{"format": "restic"}')


def test_keyfile_passphrase_and_operator_key() -> None:
    repo_id = os.urandom(32)
    master = os.urandom(32)
    kf = keyfile.wrap_with_passphrase(master, b"correct horse", repo_id, "t", "me", kdf=FAST_KDF)
    back = keyfile.decode(kf.encode(), "k")
    assert back.unwrap(b"correct horse", repo_id) == master
    with pytest.raises(WrongPasswordError):
        back.unwrap(b"wrong", repo_id)
    with pytest.raises(WrongPasswordError):  # bound to its repository
        back.unwrap(b"correct horse", os.urandom(32))
    op = os.urandom(32)
    kf2 = keyfile.decode(
        keyfile.wrap_with_operator_key(master, op, repo_id, "t", "ops").encode(), "k"
    )
    assert kf2.unwrap(op, repo_id) == master
    assert kf2.kek_id == keyfile.kek_id(op)
    with pytest.raises(WrongPasswordError):
        kf2.unwrap(os.urandom(32), repo_id)


def test_keys_are_distinct_and_ids_are_keyed() -> None:
    assert len({KEYS.id_key, KEYS.file_key, KEYS.config_key, KEYS.master}) == 4
    assert KEYS.chunk_id(b"x") != OTHER.chunk_id(b"x")
    assert "secret" in repr(KEYS)
    assert KEYS.master.hex() not in repr(KEYS)


@cfg
@given(
    st.integers(64, 1 << 20).flatmap(
        lambda lo: st.tuples(st.just(lo), st.integers(lo, 4 * lo), st.integers(1, 4))
    ),
    st.integers(1 << 20, 1 << 26),
    st.integers(0, 19),
    st.text(max_size=40),
)
def test_config_roundtrip_property(
    sizes: tuple[int, int, int], pack_size: int, level: int, created: str
) -> None:
    lo, avg, factor = sizes
    c = config.RepoConfig(
        id=os.urandom(32),
        created=created,
        chunk_min=lo,
        chunk_avg=avg,
        chunk_max=avg * factor,
        pack_size=pack_size,
        zstd_level=level,
    )
    back, mac = config.decode(c.encode(KEYS))
    assert back == c
    back.verify(KEYS, mac)


@settings(max_examples=25, deadline=None)
@given(
    st.binary(min_size=1, max_size=64), st.text(max_size=30), st.binary(min_size=32, max_size=32)
)
def test_keyfile_roundtrip_property(passphrase: bytes, label: str, master: bytes) -> None:
    repo_id = os.urandom(32)
    kf = keyfile.wrap_with_passphrase(master, passphrase, repo_id, "t", label, kdf=FAST_KDF)
    back = keyfile.decode(kf.encode(), "k")
    assert back.label == label
    assert back.unwrap(passphrase, repo_id) == master
    with pytest.raises(WrongPasswordError):
        back.unwrap(passphrase + b"!", repo_id)


@cfg
@given(st.binary(max_size=300_000), st.binary(min_size=1, max_size=5000))
def test_chunker_reassembles_and_resynchronises(data: bytes, prefix: bytes) -> None:
    from rekindle.format.chunker import Chunker

    c = config.RepoConfig(
        id=b"\0" * 32, created="x", chunk_min=2048, chunk_avg=8192, chunk_max=32768
    )
    chunker = Chunker(c, KEYS.chunker_seed)
    pieces = [bytes(p) for p in chunker.cut(data)]
    assert b"".join(pieces) == data
    assert all(len(p) <= c.chunk_max for p in pieces)
    assert all(len(p) >= c.chunk_min for p in pieces[:-1])
    # Content-defined: after an insertion at the front of random data, the chunks come back
    # (random data has boundaries everywhere; runs of equal bytes only cut at the maximum).
    noise = random.Random(len(data)).randbytes(200_000)
    before = [bytes(p) for p in chunker.cut(noise)]
    after = [bytes(p) for p in chunker.cut(prefix + noise)]
    assert len(set(before) & set(after)) >= len(before) - 3
