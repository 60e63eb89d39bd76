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

from rekindle.core.errors import ArchivedError, DamageFoundError, UsageError
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind
from rekindle.format.snapshot import Snapshot
from rekindle.repository.locks import Lock, list_locks
from rekindle.repository.prune import _read_all_snapshots, _used_ids
from rekindle.repository.repo import Repository, pack_name, parse_pack_name
from rekindle.repository.writer import BlobWriter
from rekindle.store.tier import BatchArchive, batch_archive_of

log = logging.getLogger(__name__)

#: A pack that mixes warm and cold blobs moves (after its warm blobs are copied) when the
#: blobs no warm restore point uses make up at least this share of its bytes.
MIN_COLD_SHARE = 0.5
#: Tiering may not run with these (prune deletes and repacks what tiering reads and moves).
TIER_CONFLICTS = frozenset({"prune", "tier", "repair"})

IsCold = Callable[[Snapshot], bool]
ColdRule = Callable[[], IsCold]


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
    cold_rule: ColdRule,
    *,
    archive: BatchArchive | None = None,
    grace: timedelta = timedelta(hours=1),
    min_cold_share: float = MIN_COLD_SHARE,
    progress: Callable[[str], None] | None = None,
) -> TierReport:
    """Mark what turned cold, and move what earlier marks (and this one, if ready) named.

    `cold_rule()` is asked at each phase for the predicate that tells cold restore points
    from warm ones (the cloud answers from its catalog of the moment: a restore queued
    meanwhile keeps its restore point warm)."""
    store = archive or batch_archive_of(repo.backend)
    if store is None:
        raise UsageError("this storage has no archive tier: nothing can be moved to one")
    run = _Run(repo, cold_rule, store, grace, progress or (lambda _msg: None))
    with Lock(repo, "tier", conflicts=TIER_CONFLICTS):
        repo.sync_index()
        run.recover_damaged_records()
        run.move()
        run.mark(min_cold_share)
        run.move()
        run.compact()
    return run.report


@dataclass
class _Run:
    repo: Repository
    cold_rule: ColdRule
    archive: BatchArchive
    grace: timedelta
    say: Callable[[str], None]
    report: TierReport = field(default_factory=TierReport)
    _sizes: dict[str, int] | None = None

    def data_sizes(self) -> dict[str, int]:
        """Every data pack and its size, listed once a run: under the tier lock no prune
        deletes a pack, and the packs backups add meanwhile are none of this run's."""
        if self._sizes is None:
            self._sizes = {info.name: info.size for info in self.repo.backend.list("data/")}
        return self._sizes

    def warm_and_cold(self, *, count: bool = False) -> tuple[set[bytes], set[bytes]]:
        """Blobs warm restore points use; blobs only cold ones use. Restore points are read
        before the index is synced (a backup writes its index before its restore point)."""
        repo = self.repo
        snaps = _read_all_snapshots(repo)
        repo.sync_index()
        if repo.damaged_index_files:
            raise DamageFoundError(
                f"{len(repo.damaged_index_files)} index file(s) are damaged; run "
                "'rekindle repo repair' before tiering"
            )
        is_cold = self.cold_rule()
        cold_snaps = [s for s in snaps if is_cold(s)]
        warm_snaps = [s for s in snaps if not is_cold(s)]
        if count:
            self.report.snapshots_cold = len(cold_snaps)
            self.report.snapshots_warm = len(warm_snaps)
        warm = _used_ids(repo, warm_snaps)
        cold = _used_ids(repo, cold_snaps) - warm
        return warm, cold

    def recover_damaged_records(self) -> None:
        """A damaged record hides which packs are archived: ask the archive about every data
        pack outside the cold set, record the archived ones, then drop the damaged record."""
        repo = self.repo
        if not repo.damaged_tier_records:
            return
        self.say(f"replacing {len(repo.damaged_tier_records)} damaged tier record(s)")
        cold = repo.index.cold
        names = [
            name
            for name in self.data_sizes()
            if (pid := _data_pack(name)) is not None and pid not in cold
        ]
        archived = [n for n, state in self.archive.archive_states(names).items() if state != "warm"]
        if archived:
            repo.write_tier_record(archived, moved=True)
        for name in list(repo.damaged_tier_records):
            repo.delete_tier_record(name)

    def mark(self, min_cold_share: float) -> None:
        repo, report = self.repo, self.report
        self.say("reading restore points and the index")
        warm, cold = self.warm_and_cold(count=True)
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
        if mixed:
            self.say(f"copying the warm blobs of {len(mixed)} mixed packs")
            self.copy_out(mixed, set(candidates) | set(mixed))
        names = [pack_name(BlobKind.DATA, pid) for pid in candidates + list(mixed)]
        if names:
            repo.write_tier_record(names, moved=False)
        report.packs_marked = len(names)
        report.packs_mixed = len(mixed)

    def copy_out(self, mixed: dict[bytes, list[BlobEntry]], leaving: set[bytes]) -> None:
        """Copy the warm blobs of mixed packs that have no other warm copy into new packs;
        a mixed pack one of whose blobs cannot be read (a pack archived without a record)
        stays warm."""
        # the warm blobs whose every other copy is cold or leaves with these packs
        needed = self.repo.index.missing_warm(
            (e.id for entries in mixed.values() for e in entries), also_cold=leaving
        )
        writer = BlobWriter(self.repo)
        try:
            for pid, warm_entries in list(mixed.items()):
                try:
                    for e in sorted(warm_entries, key=lambda x: x.offset):
                        if e.id not in needed:
                            continue
                        # a verified read; the copies made before a failure are harmless
                        writer.store_plain(e.kind, e.id, self.repo.read_blob(e.id))
                        needed.discard(e.id)
                        self.report.blobs_copied += 1
                        self.report.bytes_copied += e.length
                except ArchivedError:
                    log.warning("pack %s cannot be read (archived): it stays warm", pid.hex())
                    del mixed[pid]
            writer.flush()  # packs, then their index file, before the record
        finally:
            writer.close()

    def move(self) -> None:
        repo, report = self.repo, self.report
        pending = [r for r in repo.tier_records.values() if not r.moved]
        if not pending:
            return
        now = repo.clock.now()
        # Backups and restores that started before a record may use its packs' blobs
        # without knowing they are cold (FORMAT.md section 12).
        readers = [lk for lk in list_locks(repo) if lk.kind in ("backup", "restore")]
        ready = [
            r
            for r in pending
            if now - r.created >= self.grace and not any(lk.created <= r.created for lk in readers)
        ]
        report.records_waiting = len(pending) - len(ready)
        if not ready:
            return
        warm, _ = self.warm_and_cold()
        already = {p for r in repo.tier_records.values() if r.moved for p in r.packs}
        pids = {
            pid: name
            for name in sorted({p for r in ready for p in r.packs})
            if (pid := _data_pack(name)) is not None
        }
        tables = repo.index.entries_of(pids)
        # blobs warm restore points use that have no copy outside the cold set
        stranded = repo.index.missing_warm(
            e.id for entries in tables.values() for e in entries if e.id in warm
        )
        finish: list[str] = []  # named by a moved record: a move cut short, finished now
        new: list[str] = []
        for pid, name in pids.items():
            if name in already:
                finish.append(name)
                continue
            entries = tables.get(pid)
            if entries is None:
                continue  # no index names it: prune condemned it meanwhile
            # A backup that started before the record may have used it: keep it warm then.
            if any(e.id in stranded for e in entries):
                report.packs_kept_warm += 1
                continue
            new.append(name)
        if new:
            # Recorded before they move: a pack in the archive tier is always in a record.
            repo.write_tier_record(new, moved=True)
        if finish or new:
            self.say(f"moving {len(finish) + len(new)} packs to the archive tier")
            self.archive.archive_many(finish + new)
            report.packs_moved += len(new)
            report.bytes_moved += sum(self.data_sizes().get(n, 0) for n in new)
        for record in ready:
            repo.delete_tier_record(record.name)

    def compact(self) -> None:
        """One moved record naming the moved packs that still exist; count the cold bytes."""
        repo, report = self.repo, self.report
        moved = [r for r in repo.tier_records.values() if r.moved]
        if not moved:
            return
        sizes = self.data_sizes()
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
