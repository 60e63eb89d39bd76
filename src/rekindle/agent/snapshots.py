"""Snapshot providers: back up from a frozen, consistent view of a filesystem where one can
be had, and from the live files otherwise.

A provider looks at the backup set's paths, takes what snapshots it can, and hands the
engine a map from each path to where its frozen copy can be read (`BackupOptions.read_from`),
so the restore point still records the original paths. Snapshots are removed afterwards,
also when the backup fails. Today there is one provider, btrfs (read-only snapshot of the
subvolume holding a path). Windows VSS or LVM would be further providers with the same
shape.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rekindle.core.errors import RekindleError

log = logging.getLogger(__name__)
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo escapes space, tab, newline, backslash

#: Name of the snapshot inside the subvolume it freezes (stable, so the files cache, which is
#: keyed by path, keeps working from one backup to the next).
SNAPSHOT_NAME = ".rekindle-snapshot"


class SnapshotError(RekindleError):
    """A snapshot could not be taken or removed."""


@dataclass
class Frozen:
    """What a provider took: where to read each path from, and how to undo it."""

    read_from: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class SnapshotProvider(Protocol):
    name: str

    def covers(self, path: str) -> bool: ...

    @contextmanager
    def frozen(self, paths: list[str]) -> Iterator[Frozen]: ...


def mount_fstype(path: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding `path` (from mountinfo)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), left.split()[4])
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(
                best
            ):
                best, fstype = mnt, right.split()[0]
    return best, fstype


def btrfs_subvolume_root(path: str) -> str:
    """The root directory of the btrfs subvolume holding `path`: each subvolume has its own
    device number, so walk up while the parent has the same one."""
    cur = os.path.realpath(path)
    if not os.path.isdir(cur):
        cur = os.path.dirname(cur)
    dev = os.stat(cur).st_dev
    while cur != "/":
        parent = os.path.dirname(cur)
        if os.stat(parent).st_dev != dev:
            break
        cur = parent
    return cur


class BtrfsProvider:
    name = "btrfs"

    def __init__(self, btrfs: str | None = None) -> None:
        self.btrfs = btrfs or shutil.which("btrfs") or ""

    def covers(self, path: str) -> bool:
        return bool(self.btrfs) and mount_fstype(path)[1] == "btrfs"

    def _run(self, *args: str) -> None:
        p = subprocess.run([self.btrfs, *args], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise SnapshotError(f"btrfs {' '.join(args)}: {p.stderr.strip() or p.returncode}")

    def _remove_stale(self, snap: str) -> None:
        """Delete what a killed backup left, but only if it is what we make: a read-only
        subvolume. Anything else of that name is the user's, and is left alone."""
        p = subprocess.run(
            [self.btrfs, "property", "get", "-ts", snap, "ro"],
            capture_output=True,
            text=True,
            check=False,
        )
        if p.returncode != 0 or p.stdout.strip() != "ro=true":
            raise SnapshotError(
                f"{snap} exists and is not a snapshot Rekindle left; not touching it"
            )
        self._run("subvolume", "delete", snap)

    @contextmanager
    def frozen(self, paths: list[str]) -> Iterator[Frozen]:
        roots: dict[str, list[str]] = {}
        for p in paths:
            roots.setdefault(btrfs_subvolume_root(p), []).append(p)
        taken: list[str] = []
        out = Frozen()
        try:
            for root, members in roots.items():
                snap = os.path.join(root, SNAPSHOT_NAME)
                if os.path.lexists(snap):  # left by a backup that was killed
                    self._remove_stale(snap)
                self._run("subvolume", "snapshot", "-r", root, snap)
                taken.append(snap)
                for p in members:
                    rel = os.path.relpath(os.path.realpath(p), root)
                    out.read_from[p] = os.path.normpath(os.path.join(snap, rel))
                out.notes.append(f"read from a read-only btrfs snapshot of {root}")
            yield out
        finally:
            for snap in taken:
                try:
                    self._run("subvolume", "delete", snap)
                except SnapshotError as e:
                    log.warning("could not remove snapshot %s: %s", snap, e)


PROVIDERS: list[SnapshotProvider] = [BtrfsProvider()]


@contextmanager
def freeze(paths: list[str], providers: list[SnapshotProvider] | None = None) -> Iterator[Frozen]:
    """Snapshot what the providers cover; paths nobody covers are read live (noted)."""
    providers = PROVIDERS if providers is None else providers
    todo = list(paths)
    result = Frozen()
    with ExitStack() as stack:
        for prov in providers:
            mine = [p for p in todo if Path(p).exists() and prov.covers(p)]
            if not mine:
                continue
            try:
                got = stack.enter_context(prov.frozen(mine))
            except SnapshotError as e:
                result.notes.append(f"{prov.name} snapshot failed, reading live files: {e}")
                continue
            result.read_from.update(got.read_from)
            result.notes.extend(got.notes)
            todo = [p for p in todo if p not in mine]
        if todo:
            result.notes.append(f"no snapshot for {', '.join(todo)}: reading live files")
        yield result
