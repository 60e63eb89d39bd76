"""Read-only views of restore points: walk, ls, find, diff and repository statistics."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass

from rekindle.core.errors import UsageError
from rekindle.format.registry import NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node
from rekindle.repository.repo import Repository


def walk(repo: Repository, snapshot: Snapshot, start: str = "") -> Iterator[tuple[str, Node]]:
    """Yield (path, node) for every entry below `start` (a '/'-separated path in the tree)."""
    nodes = repo.load_tree(snapshot.tree)
    prefix = ""
    for part in [p for p in start.strip("/").split("/") if p]:
        match = next((n for n in nodes if os.fsdecode(n.name) == part), None)
        if match is None:
            return
        prefix = f"{prefix}/{part}" if prefix else part
        if match.type is not NodeType.DIR:
            yield prefix, match
            return
        nodes = repo.load_tree(match.subtree) if match.subtree else []
    yield from _walk(repo, nodes, prefix)


def list_dir(repo: Repository, snapshot: Snapshot, path: str = "") -> list[Node]:
    """The entries of one directory of a restore point ('/'-separated path; '' is the top).
    Raises UsageError when the path is not a directory of it."""
    nodes = repo.load_tree(snapshot.tree)
    for part in [p for p in path.strip("/").split("/") if p]:
        match = next((n for n in nodes if os.fsdecode(n.name) == part), None)
        if match is None or match.type is not NodeType.DIR:
            raise UsageError(f"the restore point has no directory /{path.strip('/')}")
        nodes = repo.load_tree(match.subtree) if match.subtree else []
    return nodes


def _walk(repo: Repository, nodes: list[Node], prefix: str) -> Iterator[tuple[str, Node]]:
    for n in nodes:
        path = f"{prefix}/{os.fsdecode(n.name)}" if prefix else os.fsdecode(n.name)
        yield path, n
        if n.type is NodeType.DIR and n.subtree:
            yield from _walk(repo, repo.load_tree(n.subtree), path)


def find(repo: Repository, snapshot: Snapshot, pattern: str) -> Iterator[tuple[str, Node]]:
    """Entries whose name (or, if the pattern has a '/', whose path) matches a glob."""
    for path, node in walk(repo, snapshot):
        subject = path if "/" in pattern else path.rsplit("/", 1)[-1]
        if fnmatch.fnmatchcase(subject, pattern):
            yield path, node


@dataclass
class Change:
    kind: str  # "+" added, "-" removed, "M" content changed, "U" metadata changed, "T" type
    path: str


def diff(repo: Repository, a: Snapshot, b: Snapshot) -> Iterator[Change]:
    yield from _diff(repo, repo.load_tree(a.tree), repo.load_tree(b.tree), "")


def _diff(repo: Repository, left: list[Node], right: list[Node], prefix: str) -> Iterator[Change]:
    lmap = {n.name: n for n in left}
    rmap = {n.name: n for n in right}
    for name in sorted(lmap.keys() | rmap.keys()):
        path = f"{prefix}/{os.fsdecode(name)}" if prefix else os.fsdecode(name)
        ln, rn = lmap.get(name), rmap.get(name)
        if ln is None:
            yield Change("+", path)
            if rn is not None and rn.type is NodeType.DIR:
                for p, _ in _walk(repo, repo.load_tree(rn.subtree), path):
                    yield Change("+", p)
            continue
        if rn is None:
            yield Change("-", path)
            if ln.type is NodeType.DIR:
                for p, _ in _walk(repo, repo.load_tree(ln.subtree), path):
                    yield Change("-", p)
            continue
        if ln.type != rn.type:
            yield Change("T", path)
            continue
        if ln.type is NodeType.DIR:
            if ln.subtree != rn.subtree:
                yield from _diff(repo, repo.load_tree(ln.subtree), repo.load_tree(rn.subtree), path)
            continue
        if ln.content != rn.content or ln.link_target != rn.link_target:
            yield Change("M", path)
        elif ln.to_doc() != rn.to_doc():
            yield Change("U", path)


@dataclass
class RepoStats:
    snapshots: int
    files: int  # summed over restore points
    raw_bytes: int  # size of every file of every restore point: what a full copy would take
    unique_bytes: int  # plaintext of distinct chunks
    stored_bytes: int  # after compression and encryption, distinct blobs
    blobs: int
    packs: int

    @property
    def dedup_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "snapshots": self.snapshots,
            "files": self.files,
            "raw_bytes": self.raw_bytes,
            "unique_bytes": self.unique_bytes,
            "stored_bytes": self.stored_bytes,
            "blobs": self.blobs,
            "packs": self.packs,
            "dedup_ratio": round(self.dedup_ratio, 3),
        }


def repo_stats(repo: Repository) -> RepoStats:
    snaps = repo.snapshots()
    files = raw = 0
    for s in snaps:
        # Restore points record their totals; walking trees would cost a read of every tree.
        files += int(
            s.stats.get("files_new", 0)
            + s.stats.get("files_changed", 0)
            + s.stats.get("files_unmodified", 0)
        )
        raw += int(s.stats.get("total_bytes", 0))
    stored, unique = repo.index.stored_size()
    blobs, packs = repo.index.counts()
    return RepoStats(len(snaps), files, raw, unique, stored, blobs, packs)
