"""Which blobs restore points use: the walk that prune, check and copy share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rekindle.format.registry import NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node
from rekindle.repository.repo import Repository


@dataclass
class Reachable:
    trees: set[bytes] = field(default_factory=set)
    data: set[bytes] = field(default_factory=set)

    def all(self) -> set[bytes]:
        return self.trees | self.data


def walk_snapshot(
    repo: Repository,
    snap: Snapshot,
    visit: Callable[[str, Node], None],
    *,
    seen_trees: set[tuple[bytes, ...]] | None = None,
    on_tree_error: Callable[[str, list[bytes], Exception], None] | None = None,
) -> None:
    """Call `visit(path, node)` for every node of a restore point, depth first.

    Trees already in `seen_trees` are not walked again (shared subtrees are the norm across
    restore points). A tree that cannot be loaded goes to `on_tree_error` when given, and
    raises otherwise.
    """
    seen = seen_trees if seen_trees is not None else set()
    stack: list[tuple[str, list[bytes]]] = [("", list(snap.tree))]
    while stack:
        path, ids = stack.pop()
        key = tuple(ids)
        if key in seen:
            continue
        seen.add(key)
        try:
            nodes = repo.load_tree(ids)
        except Exception as e:
            if on_tree_error is None:
                raise
            on_tree_error(path or "/", ids, e)
            continue
        for node in nodes:
            name = node.name.decode("utf-8", "surrogateescape")
            child = f"{path}/{name}" if path else name
            visit(child, node)
            if node.type is NodeType.DIR:
                stack.append((child, list(node.subtree)))


def reachable(repo: Repository, snapshots: Iterable[Snapshot]) -> Reachable:
    """Every blob id the given restore points use. Raises if a tree cannot be read."""
    out = Reachable()
    seen: set[tuple[bytes, ...]] = set()
    for snap in snapshots:
        out.trees.update(snap.tree)

        def visit(_path: str, node: Node) -> None:
            if node.type is NodeType.FILE:
                out.data.update(c for c in node.content if isinstance(c, bytes))
            elif node.type is NodeType.DIR:
                out.trees.update(node.subtree)

        walk_snapshot(repo, snap, visit, seen_trees=seen)
    return out
