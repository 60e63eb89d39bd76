"""Copy restore points between two repositories that share keys (`init --copy-keys-from`).

With the same master key, chunk ids and chunk boundaries agree, so only blobs the
destination lacks are moved (each verified on the way), trees are copied unchanged, and the
restore point is written last: an interrupted copy leaves no restore point that names
missing data. Restore points already in the destination (same time, host, paths and tree)
are skipped, so a copy can simply be run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from rekindle.core.errors import UsageError
from rekindle.format.registry import BlobKind, NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node
from rekindle.repository.locks import Lock
from rekindle.repository.reach import walk_snapshot
from rekindle.repository.repo import Repository
from rekindle.repository.writer import BlobWriter


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    blobs: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return (
            f"copied {self.copied} restore points ({self.blobs} new blobs, {self.bytes} bytes "
            f"of data), skipped {self.skipped} already there"
        )


def _identity(s: Snapshot) -> tuple[object, ...]:
    return (s.time, s.host, tuple(s.paths), tuple(s.tree))


def copy_snapshots(
    src: Repository,
    dst: Repository,
    ids: list[str] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> CopyReport:
    if src.keys.master != dst.keys.master:
        raise UsageError(
            "the repositories do not share keys: create the destination with "
            "'rekindle repo init --copy-keys-from SOURCE'"
        )
    say = progress or (lambda _msg: None)
    report = CopyReport()
    wanted = [src.read_snapshot(i) for i in ids] if ids is not None else src.snapshots()
    with Lock(dst, "backup"):
        dst.sync_index()
        there = {_identity(s) for s in dst.snapshots()}
        for snap in wanted:
            if _identity(snap) in there:
                report.skipped += 1
                continue
            say(f"copying restore point {snap.id[:8]}")
            writer = BlobWriter(dst)
            try:
                _copy_blobs(src, writer, snap, report)
                writer.flush()
            finally:
                writer.close()
            copy = replace(snap, id="")
            dst.write_snapshot(copy)
            there.add(_identity(snap))
            report.copied += 1
    return report


def _copy_blobs(src: Repository, writer: BlobWriter, snap: Snapshot, report: CopyReport) -> None:
    def take(kind: BlobKind, blob_id: bytes) -> None:
        if writer.reserve(blob_id):
            data = src.read_blob(blob_id)
            writer.store_plain(kind, blob_id, data)
            report.blobs += 1
            report.bytes += len(data)

    for t in snap.tree:
        take(BlobKind.TREE, t)

    def visit(_path: str, node: Node) -> None:
        if node.type is NodeType.FILE:
            for c in node.content:
                if isinstance(c, bytes):
                    take(BlobKind.DATA, c)
        elif node.type is NodeType.DIR:
            for t in node.subtree:
                take(BlobKind.TREE, t)

    walk_snapshot(src, snap, visit)
