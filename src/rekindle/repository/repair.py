"""Repair: rebuild the index from the packs alone.

Every pack's own encrypted blob table says what it holds, so a lost or damaged index costs
nothing but time. With `read_data`, each blob is also decrypted and verified, and damaged
ones are left out of the new index (so a later backup stores them anew when it sees the
data again). Restore points whose data is gone for good are reported, not deleted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from rekindle.core.errors import IntegrityError, ObjectNotFoundError, RekindleError
from rekindle.format import pack as packfmt
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import BlobEntry
from rekindle.repository.locks import Lock
from rekindle.repository.prune import PACKS_PER_INDEX
from rekindle.repository.repo import Repository, parse_pack_name


@dataclass
class RepairReport:
    packs_indexed: int = 0
    blobs_indexed: int = 0
    packs_unreadable: list[str] = field(default_factory=list)
    blobs_dropped: int = 0
    index_files_replaced: int = 0

    def __str__(self) -> str:
        text = (
            f"indexed {self.blobs_indexed} blobs in {self.packs_indexed} packs; "
            f"replaced {self.index_files_replaced} index files"
        )
        if self.blobs_dropped:
            text += f"; left out {self.blobs_dropped} damaged blobs"
        if self.packs_unreadable:
            text += f"; {len(self.packs_unreadable)} packs unreadable: " + ", ".join(
                self.packs_unreadable
            )
        return text


def repair_index(repo: Repository, *, read_data: bool = False) -> RepairReport:
    report = RepairReport()
    with Lock(repo, "repair", exclusive=True):
        old = sorted(info.name for info in repo.backend.list("index/"))
        rebuilt: list[PackEntries] = []
        for prefix in ("data/", "tree/"):
            for info in repo.backend.list(prefix):
                parsed = parse_pack_name(info.name)
                if parsed is None:
                    continue
                kind, pid = parsed
                try:
                    table = repo.read_pack_table(kind, pid)
                    if read_data:
                        table = _verified(repo, info.name, table, report)
                except (IntegrityError, ObjectNotFoundError) as e:
                    report.packs_unreadable.append(f"{info.name} ({e})")
                    continue
                if table:
                    rebuilt.append(PackEntries(pid, kind, table))
                    report.packs_indexed += 1
                    report.blobs_indexed += len(table)
        superseded = [bytes.fromhex(n.split("/", 1)[1]) for n in old]
        new: set[str] = set()
        for i in range(0, len(rebuilt), PACKS_PER_INDEX):
            new.add(repo.write_index(rebuilt[i : i + PACKS_PER_INDEX], supersedes=superseded))
        for name in old:
            if name in new:
                continue  # an identical index file was written again
            with contextlib.suppress(ObjectNotFoundError):
                repo.backend.delete(name)
                report.index_files_replaced += 1
        # Start the local cache afresh so rows of damaged or deleted index files go too.
        repo.index.drop_files(repo.index.known_files() - new)
        repo.damaged_index_files.clear()
        repo.sync_index()
    return report


def _verified(
    repo: Repository, name: str, table: list[BlobEntry], report: RepairReport
) -> list[BlobEntry]:
    data = repo.backend.read(name)
    key = repo.keys.pack_key(packfmt.salt_of(data[: packfmt.HEADER_SIZE], name))
    good = []
    for e in table:
        try:
            packfmt.open_blob_with_key(
                repo.keys, key, e, memoryview(data)[e.offset : e.offset + e.length], name
            )
        except RekindleError:
            report.blobs_dropped += 1
            continue
        good.append(e)
    return good
