"""Which blobs restore points use: the walk that prune, check and copy share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rekindle.core.errors import IntegrityError, UsageError
from rekindle.format.registry import NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node
from rekindle.repository.repo import Repository, pack_name
from rekindle.repository.restore import is_selected, norm_include


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


@dataclass(frozen=True)
class RestoreNeeds:
    """What a restore of some paths of a restore point reads and writes."""

    packs: list[str]  # object names, sorted: every tree pack of the restore point, and the
    # data packs of the chosen files (every copy: a damaged one has a stand-in)
    files: int
    bytes: int
    #: The packs a restore reads first: for each blob its warm copies where there are any,
    #: else its copies in the archive tier (what a defreeze must bring back).
    preferred: list[str] = field(default_factory=list)


def restore_needs(repo: Repository, snap: Snapshot, includes: list[str]) -> RestoreNeeds:
    """The packs a restore of `includes` (everything when empty) needs, and its size.

    Every tree of the restore point is counted in, so that browsing it and walking to the
    chosen paths never needs more. A chosen path that the restore point does not hold raises
    UsageError; a blob the index does not know raises IntegrityError."""
    wanted = [norm_include(p) for p in includes]
    trees: set[bytes] = set(snap.tree)
    data: set[bytes] = set()
    found: set[str] = set()
    files = size = 0

    def visit(path: str, node: Node) -> None:
        nonlocal files, size
        if node.type is NodeType.DIR:
            trees.update(node.subtree)
        if not is_selected(path, wanted):
            return
        found.update(inc for inc in wanted if path == inc)
        if node.type is NodeType.FILE:
            files += 1
            size += node.size
            data.update(c for c in node.content if isinstance(c, bytes))

    walk_snapshot(repo, snap, visit)
    absent = [inc for inc in wanted if inc not in found]
    if absent:
        raise UsageError(f"the restore point does not hold {', '.join('/' + a for a in absent)}")
    packs: set[str] = set()
    blobs = trees | data
    located = repo.index.lookup_many(blobs)
    lost = len(blobs) - len(located)
    if lost:
        raise IntegrityError(
            f"{lost} blobs of the restore point are in no pack the index knows: "
            "run 'rekindle repo check'"
        )
    cold = repo.index.cold
    preferred: set[str] = set()
    for locations in located.values():
        packs.update(pack_name(loc.entry.kind, loc.pack) for loc in locations)
        # A cold restore thaws only what exists nowhere warm.
        warm = [loc for loc in locations if loc.pack not in cold]
        preferred.update(pack_name(loc.entry.kind, loc.pack) for loc in warm or locations)
    return RestoreNeeds(sorted(packs), files, size, sorted(preferred))
