"""Prune: reclaim the space of blobs no restore point uses, without blocking backups.

The protocol is FORMAT.md section 12: *mark* (repack mostly-unused packs, write one index
that leaves condemned packs out, delete the superseded index files, then write a garbage
record) and *sweep* (once the record is older than the grace period and no backup that
started before it is still running: delete its packs, except those a restore point committed
since then needs, which are indexed again instead).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from rekindle.core.errors import (
    ArchivedError,
    DamageFoundError,
    IntegrityError,
    ObjectNotFoundError,
    RekindleError,
)
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind, FileKind
from rekindle.format.snapshot import Snapshot
from rekindle.repository.locks import Lock, list_locks
from rekindle.repository.reach import reachable
from rekindle.repository.repo import Repository, pack_name, parse_pack_name
from rekindle.repository.writer import BlobWriter

log = logging.getLogger(__name__)

#: Packs whose live bytes are below this share of their blob bytes are repacked.
REPACK_BELOW = 0.5
#: Packs per index file written by prune (keeps each index document a few MiB at most).
PACKS_PER_INDEX = 2000
#: Prune conflicts with these operations (see the table in locks.py).
PRUNE_CONFLICTS = frozenset({"prune", "tier", "check", "repair"})
#: Name of the temporary local-index entry that shows condemned packs during a sweep.
_SWEEP_VIEW = "sweep/condemned-packs"


@dataclass
class PruneReport:
    snapshots: int = 0
    packs: int = 0
    packs_unused: int = 0
    packs_repacked: int = 0
    packs_orphaned: int = 0
    blobs_repacked: int = 0
    bytes_repacked: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_reindexed: int = 0
    records_waiting: int = 0
    temporaries_removed: int = 0  # partial files of crashed writers (local disk)

    def __str__(self) -> str:
        text = (
            f"{self.snapshots} restore points, {self.packs} packs: "
            f"{self.packs_unused} unused, {self.packs_repacked} repacked "
            f"({self.blobs_repacked} blobs, {self.bytes_repacked} bytes copied), "
            f"{self.packs_orphaned} left by interrupted backups; "
            f"deleted {self.packs_deleted} packs ({self.bytes_freed} bytes freed)"
        )
        if self.packs_reindexed:
            text += f", kept {self.packs_reindexed} that new restore points use"
        if self.records_waiting:
            text += (
                f"; {self.records_waiting} garbage record(s) wait for the grace period or "
                "for running backups, and are swept by a later prune"
            )
        return text


def _read_all_snapshots(repo: Repository) -> list[Snapshot]:
    snaps = []
    for sid in repo.snapshot_ids():
        try:
            snaps.append(repo.read_snapshot(sid))
        except ObjectNotFoundError:
            continue  # forgotten meanwhile
        except IntegrityError as e:
            raise DamageFoundError(
                f"restore point {sid[:8]} is damaged ({e}); prune deletes nothing until "
                "'rekindle repo check' passes"
            ) from None
    return snaps


def _used_ids(repo: Repository, snaps: list[Snapshot]) -> set[bytes]:
    try:
        return reachable(repo, snaps).all()
    except RekindleError as e:
        raise DamageFoundError(
            f"cannot read every tree ({e}); prune deletes nothing until "
            "'rekindle repo check' passes"
        ) from None


def prune(
    repo: Repository,
    *,
    grace: timedelta = timedelta(hours=1),
    repack_below: float = REPACK_BELOW,
    progress: Callable[[str], None] | None = None,
) -> PruneReport:
    say = progress or (lambda _msg: None)
    report = PruneReport()
    with Lock(repo, "prune", conflicts=PRUNE_CONFLICTS):
        _sweep(repo, grace, report, say)
        report.temporaries_removed = repo.backend.clean_temporaries(
            max(grace.total_seconds(), 3600.0)
        )
        say("reading the index and restore points")
        # Restore points first, index second: a backup writes its index files before its
        # restore point, so every restore point read here finds its blobs in the index.
        snaps = _read_all_snapshots(repo)
        report.snapshots = len(snaps)
        repo.sync_index()
        if repo.damaged_index_files:
            raise DamageFoundError(
                f"{len(repo.damaged_index_files)} index file(s) are damaged; run "
                "'rekindle repo repair' before pruning"
            )
        # A backup that ran during an earlier prune may use blobs of packs that wait in a
        # garbage record; keep those packs (index them again) before judging anything.
        pending = [p for r in _garbage_records(repo) for p in r.packs]
        used = _reach_keeping_needed(repo, snaps, _condemned_tables(repo, pending), report)
        old_index = sorted(repo.index_file_names())

        by_pack: dict[bytes, list[BlobEntry]] = {}
        for pid, entry in repo.index.entries():
            by_pack.setdefault(pid, []).append(entry)
        report.packs = len(by_pack)
        missing = repo.index.missing(used)
        if missing:
            raise DamageFoundError(
                f"{len(missing)} blob(s) that restore points use are not in the index; "
                "run 'rekindle repo check' (and 'repair'); prune deletes nothing meanwhile"
            )

        # A blob in a cold pack (archive tier) that a warm pack holds too is a duplicate:
        # every used blob of a warm pack stays warm (kept or repacked), so the cold copy
        # is dead weight, and an archived pack holding only such copies is freed.
        cold = repo.index.cold
        warm_held = (
            {e.id for pid, es in by_pack.items() if pid not in cold for e in es} if cold else set()
        )
        keep: list[bytes] = []
        repack: list[bytes] = []
        unused: list[bytes] = []
        for pid, entries in by_pack.items():
            total = sum(e.length for e in entries)
            if pid in cold:
                live = sum(e.length for e in entries if e.id in used and e.id not in warm_held)
            else:
                live = sum(e.length for e in entries if e.id in used)
            if live == 0:
                unused.append(pid)
            elif live < total * repack_below:
                repack.append(pid)
            else:
                keep.append(pid)
        report.packs_unused = len(unused)
        report.packs_repacked = len(repack)

        if not unused and not repack and not _orphans(repo, set(by_pack), grace):
            say("nothing to prune")
            _sweep(repo, grace, report, say)
            return report

        # Repack: copy the live blobs of mostly-unused packs into new packs (indexed by the
        # writer before anything is condemned). A pack in the archive tier cannot be read: it
        # is kept as it is (the copies made of its blobs so far are harmless duplicates).
        if repack:
            say(f"repacking {len(repack)} packs")
            # A copy in a cold pack (archive tier) does not count as kept: the last warm
            # copy of a blob is never condemned (FORMAT.md section 12, tiering).
            kept_ids = {e.id for pid in keep if pid not in cold for e in by_pack[pid]}
            archived: list[bytes] = []
            writer = BlobWriter(repo)
            try:
                for pid in repack:
                    try:
                        for e in sorted(by_pack[pid], key=lambda x: x.offset):
                            if e.id not in used or e.id in kept_ids:
                                continue
                            plain = repo.read_blob(e.id)  # verified; any intact copy will do
                            kept_ids.add(e.id)
                            writer.store_plain(e.kind, e.id, plain)
                            report.blobs_repacked += 1
                            report.bytes_repacked += e.length
                    except ArchivedError:
                        archived.append(pid)
                writer.flush()
            finally:
                writer.close()
            for pid in archived:
                repack.remove(pid)
                keep.append(pid)
            report.packs_repacked = len(repack)

        # One index (in parts) covering every kept pack; then the old files go.
        say("writing the new index")
        superseded = [bytes.fromhex(n.split("/", 1)[1]) for n in old_index]
        kept_entries = [PackEntries(pid, by_pack[pid][0].kind, by_pack[pid]) for pid in keep]
        for i in range(0, len(kept_entries), PACKS_PER_INDEX):
            repo.write_index(kept_entries[i : i + PACKS_PER_INDEX], supersedes=superseded)
        for name in old_index:
            with contextlib.suppress(ObjectNotFoundError):
                repo.backend.delete(name)
        repo.sync_index()

        condemned = [pack_name(by_pack[pid][0].kind, pid) for pid in unused + repack]
        orphans = _orphans(repo, set(repo.index.packs()) | set(unused) | set(repack), grace)
        report.packs_orphaned = len(orphans)
        condemned += orphans
        if condemned:
            _write_garbage(repo, condemned)
        _sweep(repo, grace, report, say)
    return report


def _orphans(repo: Repository, indexed: set[bytes], grace: timedelta) -> list[str]:
    """Packs no index file names, older than the grace period (left by crashed backups)."""
    cutoff = repo.clock.now() - grace
    out = []
    for prefix in ("data/", "tree/"):
        for info in repo.backend.list(prefix):
            parsed = parse_pack_name(info.name)
            if parsed is None:
                log.warning("ignoring unexpected object %s", info.name)
                continue
            if parsed[1] not in indexed and info.modified <= cutoff:
                out.append(info.name)
    return out


def _write_garbage(repo: Repository, packs: list[str]) -> str:
    from rekindle.format.crypto import content_hash

    data = repo.seal(
        FileKind.GARBAGE,
        {"v": 1, "created": repo.clock.now().isoformat(), "packs": sorted(packs)},
    )
    name = f"garbage/{content_hash(data).hex()}"
    repo.backend.write(name, data)
    return name


@dataclass(frozen=True)
class _Record:
    name: str
    created: datetime
    packs: list[str]


def _garbage_records(repo: Repository) -> list[_Record]:
    """Every readable garbage record (read once); damaged ones are removed."""
    out = []
    for name in sorted(info.name for info in repo.backend.list("garbage/")):
        try:
            doc = repo.unseal(FileKind.GARBAGE, repo.backend.read(name), name)
            created = datetime.fromisoformat(doc["created"])
            out.append(_Record(name, created, [str(p) for p in doc["packs"]]))
        except ObjectNotFoundError:
            continue
        except (IntegrityError, KeyError, TypeError, ValueError) as e:
            # A record is only a list of candidates: without it, the packs are found again
            # as orphans by a later prune. Deleting a damaged one loses nothing.
            log.warning("garbage record %s is unreadable (%s); removing it", name, e)
            with contextlib.suppress(ObjectNotFoundError):
                repo.backend.delete(name)
    return out


Tables = dict[str, tuple[BlobKind, bytes, list[BlobEntry]]]


def _condemned_tables(repo: Repository, pack_names: list[str]) -> tuple[Tables, set[str]]:
    """Blob tables of the condemned packs that still exist and no index file names, and the
    names of those in the archive tier (their tables are unreadable without a thaw)."""
    indexed = set(repo.index.packs())
    tables: Tables = {}
    archived_tables: set[str] = set()
    for pname in pack_names:
        parsed = parse_pack_name(pname)
        if parsed is None or parsed[1] in indexed or pname in tables:
            continue
        try:
            table = repo.read_pack_table(*parsed)
        except ObjectNotFoundError:
            continue  # swept by an earlier, interrupted run
        except ArchivedError:
            # In the archive tier: its table cannot be read without a thaw. It is judged by
            # elimination in _reach_keeping_needed (an empty table marks it).
            table = []
            archived_tables.add(pname)
        except IntegrityError as e:
            log.warning("condemned pack %s is damaged (%s)", pname, e)
            table = []
        tables[pname] = (parsed[0], parsed[1], table)
    return tables, archived_tables


def _reach_keeping_needed(
    repo: Repository,
    snaps: list[Snapshot],
    condemned: tuple[Tables, set[str]],
    report: PruneReport,
) -> set[bytes]:
    """The blobs `snaps` use. Condemned packs holding a used blob that no index file offers
    are indexed again (and dropped from `tables`): a restore point committed since the mark
    needs them. The walk sees condemned packs through a temporary entry in the local index
    cache (never written to the backend), since trees may live there too. Archived ones
    are judged by elimination: deletable only if every blob in use is indexed elsewhere."""
    tables, archived_tables = condemned
    # A copy in a cold pack does not make a blob available: the last warm copy stays.
    unavailable = repo.index.missing_warm(e.id for _, _, t in tables.values() for e in t)
    repo.index.add_file(_SWEEP_VIEW, ((pid, t) for _, pid, t in tables.values()))
    try:
        used = _used_ids(repo, snaps)
    finally:
        repo.index.drop_files([_SWEEP_VIEW])
    for pname, (kind, pid, table) in list(tables.items()):
        if any(e.id in used and e.id in unavailable for e in table):
            repo.write_index([PackEntries(pid, kind, table)])
            unavailable.difference_update(e.id for e in table)
            report.packs_reindexed += 1
            del tables[pname]
    cold = [p for p in tables if p in archived_tables]
    if cold and repo.index.missing(used):
        # Some blob a restore point uses is in no index file: it may be in one of these
        # archived packs, whose tables cannot be read without a thaw. Delete nothing.
        raise DamageFoundError(
            f"{len(cold)} condemned pack(s) are in archive storage and a restore point uses "
            "blobs no index offers: prune cannot tell whether those packs hold them without "
            "a thaw, and deletes nothing"
        )
    return used


def _sweep(
    repo: Repository, grace: timedelta, report: PruneReport, say: Callable[[str], None]
) -> None:
    records = _garbage_records(repo)
    if not records:
        return
    now = repo.clock.now()
    backups = [lk for lk in list_locks(repo) if lk.kind == "backup"]
    ready = [
        r
        for r in records
        if now - r.created >= grace and not any(lk.created <= r.created for lk in backups)
    ]
    report.records_waiting += len(records) - len(ready)
    if not ready:
        return
    say(f"sweeping {sum(len(r.packs) for r in ready)} packs")
    snaps = _read_all_snapshots(repo)
    repo.sync_index()
    # The walk must see every condemned pack, also those of records still waiting: a
    # restore point may use trees and blobs from packs of several records.
    condemned = _condemned_tables(repo, [p for r in records for p in r.packs])
    tables = condemned[0]
    _reach_keeping_needed(repo, snaps, condemned, report)
    # A pack indexed again after its first record and condemned again later is named by a
    # newer record too; only that record's conditions tell whether it is free.
    waiting = {p for r in records if r not in ready for p in r.packs}
    for record in ready:
        for pname in record.packs:
            if pname not in tables or pname in waiting:
                continue  # indexed (again), gone already, or still waiting
            del tables[pname]
            try:
                size = repo.backend.stat(pname).size
                repo.backend.delete(pname)
            except ObjectNotFoundError:
                continue
            report.packs_deleted += 1
            report.bytes_freed += size
        with contextlib.suppress(ObjectNotFoundError):
            repo.backend.delete(record.name)
