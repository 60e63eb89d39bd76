"""Check a repository: structure, index against packs, and (with read_data) every byte.

The report names exactly what is damaged: index files, packs (missing, truncated, failing
authentication), blobs, and for each restore point the files whose content cannot be read
back. A blob is damaged only if no intact copy of it exists in any pack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rekindle.core.errors import ArchivedError, IntegrityError, ObjectNotFoundError, RekindleError
from rekindle.format import pack as packfmt
from rekindle.format.crypto import content_hash
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind, NodeType
from rekindle.format.tree import Node
from rekindle.repository.locks import Lock
from rekindle.repository.reach import walk_snapshot
from rekindle.repository.repo import Repository, pack_name, parse_pack_name


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_packs: set[str] = field(default_factory=set)
    damaged_blobs: set[bytes] = field(default_factory=set)
    damaged_files: list[tuple[str, str]] = field(default_factory=list)  # (snapshot id, path)
    damaged_snapshots: set[str] = field(default_factory=set)
    packs_checked: int = 0
    packs_archived: int = 0  # in the archive tier: not read
    blobs_checked: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    say = progress or (lambda _msg: None)
    report = CheckReport()
    with Lock(repo, "check", conflicts=frozenset({"prune", "repair"})):
        say("loading index files")
        repo.sync_index()
        for name, reason in sorted(repo.damaged_index_files.items()):
            report.errors.append(f"index file {name} is damaged: {reason}")
        for name, reason in sorted(repo.damaged_tier_records.items()):
            report.errors.append(
                f"tier record {name} is damaged: {reason} (the next tiering run replaces it)"
            )
        for info in repo.backend.list("index/"):
            if info.name not in repo.index_file_names() and (
                info.name not in repo.damaged_index_files
            ):
                report.errors.append(f"index file {info.name} could not be loaded")

        # Every (pack, entry) the index names, grouped by pack.
        indexed: dict[bytes, list[BlobEntry]] = {}
        for pid, entry in repo.index.entries():
            indexed.setdefault(pid, []).append(entry)

        present: dict[bytes, tuple[BlobKind, int]] = {}
        for prefix in ("data/", "tree/"):
            for info in repo.backend.list(prefix):
                parsed = parse_pack_name(info.name)
                if parsed is None:
                    report.warnings.append(f"unexpected object {info.name}")
                    continue
                present[parsed[1]] = (parsed[0], info.size)

        bad_locations: set[tuple[bytes, bytes]] = set()  # (pack, blob id)
        say(f"checking {len(indexed)} packs" + (" and reading all data" if read_data else ""))
        for pid, entries in sorted(indexed.items()):
            kind = entries[0].kind
            name = pack_name(kind, pid)
            if pid not in present:
                report.errors.append(f"pack {name} is missing")
                report.damaged_packs.add(name)
                bad_locations.update((pid, e.id) for e in entries)
                continue
            report.packs_checked += 1
            bad = _check_pack(repo, kind, pid, entries, read_data=read_data, report=report)
            if bad:
                report.damaged_packs.add(name)
                bad_locations.update((pid, i) for i in bad)
        for pid, (kind, _size) in sorted(present.items()):
            if pid not in indexed:
                report.warnings.append(
                    f"pack {pack_name(kind, pid)} is not in the index (left by an interrupted "
                    "backup or a prune in progress; prune removes it, repair re-indexes it)"
                )

        # A blob is damaged when every copy the index knows is bad.
        for _pid, i in bad_locations:
            if all((loc.pack, i) in bad_locations for loc in repo.index.lookup_all(i)):
                report.damaged_blobs.add(i)

        say("checking restore points")
        _check_snapshots(repo, report)
    return report


def _check_pack(
    repo: Repository,
    kind: BlobKind,
    pid: bytes,
    entries: list[BlobEntry],
    *,
    read_data: bool,
    report: CheckReport,
) -> set[bytes]:
    """Compare a pack with its index entries; returns the ids of blobs that are bad in it."""
    name = pack_name(kind, pid)
    all_ids = {e.id for e in entries}
    try:
        table = repo.read_pack_table(kind, pid)
    except ObjectNotFoundError:
        report.errors.append(f"pack {name} is missing")
        return all_ids
    except ArchivedError:
        # In the archive tier: it exists (the listing shows it) but cannot be read until a
        # thaw, so its contents are not checked now.
        report.warnings.append(f"pack {name} is in archive storage: not read")
        report.packs_archived += 1
        return set()
    except RekindleError as err:
        report.errors.append(f"pack {name}: {err}")
        if not read_data:
            return all_ids
        table = []  # still try every indexed blob below: most may be intact
    by_id = {(t.id, t.offset): t for t in table}
    for entry in entries:
        if table and (entry.id, entry.offset) not in by_id:
            report.errors.append(
                f"pack {name}: index entry for blob {entry.id.hex()[:16]} at {entry.offset} "
                "is not in the pack's own table"
            )
    if not read_data:
        return set() if table else all_ids
    bad: set[bytes] = set()
    try:
        data = repo.backend.read(name)
    except RekindleError as err:
        report.errors.append(f"pack {name}: cannot read: {err}")
        return all_ids
    report.bytes_read += len(data)
    if content_hash(data) != pid:
        report.errors.append(f"pack {name}: contents do not match its name (damaged)")
    try:
        key = repo.keys.pack_key(packfmt.salt_of(data[: packfmt.HEADER_SIZE], name))
    except RekindleError as err:
        report.errors.append(f"pack {name}: bad header: {err}")
        return all_ids
    for blob in {(x.id, x.offset): x for x in [*entries, *table]}.values():
        report.blobs_checked += 1
        sealed = memoryview(data)[blob.offset : blob.offset + blob.length]
        try:
            packfmt.open_blob_with_key(repo.keys, key, blob, sealed, name)
        except IntegrityError as err:
            bad.add(blob.id)
            report.errors.append(f"pack {name}: blob {blob.id.hex()[:16]} is damaged: {err}")
    return bad


def _check_snapshots(repo: Repository, report: CheckReport) -> None:
    def blob_ok(i: bytes) -> bool:
        return i not in report.damaged_blobs and repo.index.contains(i)

    for sid in sorted(repo.snapshot_ids()):
        try:
            snap = repo.read_snapshot(sid)
        except RekindleError as e:
            report.errors.append(f"restore point {sid[:8]} is damaged: {e}")
            report.damaged_snapshots.add(sid)
            continue
        damaged_before = len(report.damaged_files)

        def visit(path: str, node: Node, sid: str = sid) -> None:
            if node.type is NodeType.FILE:
                bad = [c for c in node.content if isinstance(c, bytes) and not blob_ok(c)]
                if bad:
                    report.damaged_files.append((sid, path))
            elif node.type is NodeType.DIR:
                for t in node.subtree:
                    if not blob_ok(t):
                        report.errors.append(
                            f"restore point {sid[:8]}: directory {path} is unreadable "
                            f"(tree {t.hex()[:16]} damaged or missing)"
                        )

        def tree_error(path: str, ids: list[bytes], e: Exception, sid: str = sid) -> None:
            report.errors.append(f"restore point {sid[:8]}: tree of {path} unreadable: {e}")
            report.damaged_snapshots.add(sid)

        # No shared `seen` set: every restore point must name its own damaged files.
        walk_snapshot(repo, snap, visit, on_tree_error=tree_error)
        if len(report.damaged_files) > damaged_before:
            report.damaged_snapshots.add(sid)
            report.errors.append(
                f"restore point {sid[:8]}: {len(report.damaged_files) - damaged_before} "
                "file(s) damaged"
            )
