"""Tiering: move the data packs that only cold restore points use to the archive tier, and
keep a warm copy of every blob a warm restore point uses (FORMAT.md section 12).

Two phases, like prune and for the same reason: a backup that started before the run may
deduplicate against a pack the run is about to move. *Mark* writes a tier record naming the
candidates (from then on backups do not deduplicate against them); *move* archives them once
no backup older than the record still runs, re-checking with the restore points of that
moment. The caller decides which restore points are cold (the cloud: older than their
policy's cold-after days).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from rekindle.core.errors import DamageFoundError, UsageError
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind
from rekindle.format.snapshot import Snapshot
from rekindle.repository.locks import Lock, list_locks
from rekindle.repository.prune import _read_all_snapshots, _used_ids
from rekindle.repository.repo import Repository, pack_name, parse_pack_name
from rekindle.repository.writer import BlobWriter
from rekindle.store.tier import archiver_of

log = logging.getLogger(__name__)

#: A pack that mixes warm and cold blobs moves (after its warm blobs are copied) when the
#: blobs no warm restore point uses make up at least this share of its bytes.
MIN_COLD_SHARE = 0.5
#: Tiering may not run with these (prune deletes and repacks what tiering reads and moves).
TIER_CONFLICTS = frozenset({"prune", "tier", "repair"})

Archiver = Callable[[list[str]], None]
IsCold = Callable[[Snapshot], bool]


@dataclass
class TierReport:
    snapshots_warm: int = 0
    snapshots_cold: int = 0
    packs_marked: int = 0  # candidates named by this run's record
    packs_mixed: int = 0  # of them, packs whose warm blobs were copied first
    blobs_copied: int = 0
    bytes_copied: int = 0
    packs_moved: int = 0
    bytes_moved: int = 0
    packs_kept_warm: int = 0  # marked, but a restore point committed since then uses them
    records_waiting: int = 0
    packs_cold: int = 0  # in the archive tier after the run
    bytes_cold: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.snapshots_cold} cold and {self.snapshots_warm} warm restore points; "
            f"marked {self.packs_marked} packs ({self.packs_mixed} mixed, "
            f"{self.blobs_copied} warm blobs / {self.bytes_copied} bytes copied out); "
            f"moved {self.packs_moved} packs ({self.bytes_moved} bytes) to the archive tier; "
            f"{self.packs_cold} packs ({self.bytes_cold} bytes) are cold"
        )
        if self.packs_kept_warm:
            text += f"; kept {self.packs_kept_warm} warm that new restore points use"
        if self.records_waiting:
            text += (
                f"; {self.records_waiting} tier record(s) wait for backups that started "
                "before them (or the grace period), and move at a later run"
            )
        return text


def tier(
    repo: Repository,
    is_cold: IsCold,
    *,
    archive: Archiver | None = None,
    grace: timedelta = timedelta(hours=1),
    min_cold_share: float = MIN_COLD_SHARE,
    progress: Callable[[str], None] | None = None,
) -> TierReport:
    """Mark what turned cold, and move what earlier marks (and this one, if ready) named."""
    say = progress or (lambda _msg: None)
    mover = archive or archiver_of(repo.backend)
    if mover is None:
        raise UsageError("this storage has no archive tier: nothing can be moved to one")
    report = TierReport()
    with Lock(repo, "tier", conflicts=TIER_CONFLICTS):
        repo.sync_index()
        _move(repo, is_cold, mover, grace, report, say)
        _mark(repo, is_cold, min_cold_share, report, say)
        _move(repo, is_cold, mover, grace, report, say)
        _compact(repo, report)
    return report


def _warm_and_cold(
    repo: Repository, is_cold: IsCold, report: TierReport | None = None
) -> tuple[set[bytes], set[bytes]]:
    """Blobs warm restore points use; blobs only cold ones use. Restore points are read
    before the index is synced (a backup writes its index before its restore point)."""
    snaps = _read_all_snapshots(repo)
    repo.sync_index()
    if repo.damaged_index_files:
        raise DamageFoundError(
            f"{len(repo.damaged_index_files)} index file(s) are damaged; run "
            "'rekindle repo repair' before tiering"
        )
    cold_snaps = [s for s in snaps if is_cold(s)]
    warm_snaps = [s for s in snaps if not is_cold(s)]
    if report is not None:
        report.snapshots_cold, report.snapshots_warm = len(cold_snaps), len(warm_snaps)
    warm = _used_ids(repo, warm_snaps)
    cold = _used_ids(repo, cold_snaps) - warm
    return warm, cold


def _has_warm_copy(repo: Repository, blob: bytes, leaving: set[bytes]) -> bool:
    """Whether a pack outside the cold set and outside `leaving` holds `blob`."""
    cold = repo.index.cold
    return any(
        loc.pack not in cold and loc.pack not in leaving for loc in repo.index.lookup_all(blob)
    )


def _mark(
    repo: Repository,
    is_cold: IsCold,
    min_cold_share: float,
    report: TierReport,
    say: Callable[[str], None],
) -> None:
    say("reading restore points and the index")
    warm, cold = _warm_and_cold(repo, is_cold, report)
    if not cold:
        return
    in_cold_set = repo.index.cold
    by_pack: dict[bytes, list[BlobEntry]] = {}
    for pid, entry in repo.index.entries():
        if entry.kind is BlobKind.DATA and pid not in in_cold_set:
            by_pack.setdefault(pid, []).append(entry)
    candidates: list[bytes] = []
    mixed: dict[bytes, list[BlobEntry]] = {}
    for pid, entries in by_pack.items():
        if not any(e.id in cold for e in entries):
            continue  # warm, or used by nothing (prune's business)
        warm_entries = [e for e in entries if e.id in warm]
        if not warm_entries:
            candidates.append(pid)
            continue
        total = sum(e.length for e in entries)
        not_warm = sum(e.length for e in entries if e.id not in warm)
        if not_warm >= total * min_cold_share:
            mixed[pid] = warm_entries
    if not candidates and not mixed:
        return
    if mixed:
        say(f"copying the warm blobs of {len(mixed)} mixed packs")
        leaving = set(candidates) | set(mixed)
        copied: set[bytes] = set()
        writer = BlobWriter(repo)
        try:
            for warm_entries in mixed.values():
                for e in sorted(warm_entries, key=lambda x: x.offset):
                    if e.id in copied or _has_warm_copy(repo, e.id, leaving):
                        continue
                    writer.store_plain(e.kind, e.id, repo.read_blob(e.id))  # verified read
                    copied.add(e.id)
                    report.blobs_copied += 1
                    report.bytes_copied += e.length
            writer.flush()  # packs, then their index file, before the record below
        finally:
            writer.close()
    names = [pack_name(BlobKind.DATA, pid) for pid in candidates + list(mixed)]
    repo.write_tier_record(names, moved=False)
    report.packs_marked = len(names)
    report.packs_mixed = len(mixed)


def _move(  # noqa: PLR0917 - one private step of tier()
    repo: Repository,
    is_cold: IsCold,
    mover: Archiver,
    grace: timedelta,
    report: TierReport,
    say: Callable[[str], None],
) -> None:
    pending = [r for r in repo.tier_records.values() if not r.moved]
    if not pending:
        return
    now = repo.clock.now()
    backups = [lk for lk in list_locks(repo) if lk.kind == "backup"]
    ready = [
        r
        for r in pending
        if now - r.created >= grace and not any(lk.created <= r.created for lk in backups)
    ]
    report.records_waiting = len(pending) - len(ready)
    if not ready:
        return
    warm, _ = _warm_and_cold(repo, is_cold)
    names = sorted({p for r in ready for p in r.packs})
    pids = {pid: name for name in names if (pid := _data_pack(name)) is not None}
    tables = repo.index.entries_of(pids)
    moving: list[str] = []
    for pid, name in pids.items():
        entries = tables.get(pid)
        if entries is None:
            continue  # no index names it: prune condemned it meanwhile
        # A backup that started before the record may have used it: keep it warm then.
        if any(e.id in warm and not _has_warm_copy(repo, e.id, set()) for e in entries):
            report.packs_kept_warm += 1
            continue
        moving.append(name)
    if moving:
        say(f"moving {len(moving)} packs to the archive tier")
        sizes = {info.name: info.size for info in repo.backend.list("data/")}
        mover(moving)
        report.packs_moved += len(moving)
        report.bytes_moved += sum(sizes.get(n, 0) for n in moving)
        repo.write_tier_record(moving, moved=True)
    for record in ready:
        repo.delete_tier_record(record.name)


def _compact(repo: Repository, report: TierReport) -> None:
    """One moved record naming the moved packs that still exist; count the cold bytes."""
    moved = [r for r in repo.tier_records.values() if r.moved]
    if not moved:
        return
    sizes = {info.name: info.size for info in repo.backend.list("data/")}
    alive = sorted({p for r in moved for p in r.packs if p in sizes})
    report.packs_cold = len(alive)
    report.bytes_cold = sum(sizes[p] for p in alive)
    if len(moved) == 1 and len(alive) == len(moved[0].packs):
        return
    if alive:
        repo.write_tier_record(alive, moved=True)
    for record in moved:
        repo.delete_tier_record(record.name)


def _data_pack(name: str) -> bytes | None:
    parsed = parse_pack_name(name)
    if parsed is None or parsed[0] is not BlobKind.DATA:
        return None
    return parsed[1]


@dataclass
class StoredUsage:
    """Where a repository's bytes are: in warm packs or in packs moved to the archive tier.

    `by_group` gives, per group of restore points (the cloud: per server), the stored bytes
    of the blobs its restore points use, split the same way; a blob several groups share
    counts for each of them (deduplication across servers)."""

    warm_bytes: int = 0
    cold_bytes: int = 0
    cold_packs: int = 0
    by_group: dict[str, tuple[int, int]] = field(default_factory=dict)


def stored_usage(repo: Repository, group_of: Callable[[Snapshot], str | None]) -> StoredUsage:
    """Measure warm and cold bytes (restore points `group_of` puts in no group are left
    out of `by_group`)."""
    snaps = _read_all_snapshots(repo)
    repo.sync_index()
    moved = {p for r in repo.tier_records.values() if r.moved for p in r.packs}
    moved_ids = {pid for name in moved if (pid := _data_pack(name)) is not None}
    out = StoredUsage()
    for prefix in ("data/", "tree/"):
        for info in repo.backend.list(prefix):
            if info.name in moved:
                out.cold_bytes += info.size
                out.cold_packs += 1
            else:
                out.warm_bytes += info.size
    groups: dict[str, list[Snapshot]] = {}
    for snap in snaps:
        key = group_of(snap)
        if key is not None:
            groups.setdefault(key, []).append(snap)
    for key, members in sorted(groups.items()):
        warm = cold = 0
        for locations in repo.index.lookup_many(_used_ids(repo, members)).values():
            length = locations[0].entry.length
            if all(loc.pack in moved_ids for loc in locations):
                cold += length
            else:
                warm += length
        out.by_group[key] = (warm, cold)
    return out
