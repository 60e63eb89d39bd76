"""Archive tiers: cheaper storage for packs that only old restore points use, unreadable
until thawed (the product's "defreeze").

A backend with an archive tier offers three more operations, by object name:

- `archive(name)`: move the object to the archive tier (idempotent);
- `thaw(name, days)`: start bringing it back to warm storage, where a copy stays readable for
  `days` days (idempotent; a thaw under way is not started twice);
- `tier_state(name)`: `warm` (never archived), `archived`, `thawing` or `thawed` (readable).

Reading an archived object that is not thawed raises `ArchivedError`; listing, `stat` and
`delete` see archived objects like any other. The engine copes: check reports an archived
pack as not read (a warning), prune keeps an archived pack it would repack and deletes one
that nothing uses any more (judged without reading it).

Two implementations:

- `S3Backend` with `archive_class` (``GLACIER`` or ``DEEP_ARCHIVE``): an object is archived by
  copying it onto itself with that storage class, and thawed with S3's RestoreObject;
- `LocalArchiveBackend`: a warm directory and an archive directory (slow media, another
  disk); archiving moves the file there, a thaw copies it back after a configured delay (the
  time slow media would take) and the copy is removed when its days are over.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from rekindle.core.clock import Clock, SystemClock
from rekindle.core.errors import ArchivedError, ObjectExistsError, ObjectNotFoundError
from rekindle.store.base import Backend, Buffer, ObjectInfo, check_name
from rekindle.store.local import LocalBackend
from rekindle.store.spool import Spool


class TierState(StrEnum):
    WARM = "warm"
    ARCHIVED = "archived"
    THAWING = "thawing"
    THAWED = "thawed"


@runtime_checkable
class Archive(Protocol):
    """A backend with an archive tier."""

    def archive(self, name: str) -> None: ...
    def thaw(self, name: str, days: int) -> None: ...
    def tier_state(self, name: str) -> TierState: ...


def _layers(backend: Backend) -> Iterator[object]:
    """`backend` and the backends its wrappers (retries, limits) wrap, outermost first."""
    seen: object = backend
    while seen is not None:
        yield seen
        seen = getattr(seen, "inner", None)


def archive_of(backend: Backend) -> Archive | None:
    """The archive tier behind `backend` and its wrappers, if any."""
    return next((x for x in _layers(backend) if isinstance(x, Archive)), None)


@runtime_checkable
class BatchArchive(Protocol):
    """An archive tier spoken to in batches (a storage node answers a batch per request)."""

    def archive_many(self, names: list[str]) -> None: ...
    def archive_states(self, names: list[str]) -> dict[str, str]: ...


class _PerObject:
    """`BatchArchive` over an `Archive` that works one object at a time."""

    def __init__(self, store: Archive) -> None:
        self.store = store

    def archive_many(self, names: list[str]) -> None:
        for name in names:
            self.store.archive(name)

    def archive_states(self, names: list[str]) -> dict[str, str]:
        return {name: self.store.tier_state(name).value for name in names}


def batch_archive_of(backend: Backend) -> BatchArchive | None:
    """The archive tier behind `backend`, spoken to in batches, if there is one."""
    for layer in _layers(backend):
        if isinstance(layer, BatchArchive):
            return layer
        if isinstance(layer, Archive):
            return _PerObject(layer)
    return None


class LocalArchiveBackend(Backend):
    """Warm objects under `root`, archived ones under `archive_root`; thaw requests under
    `archive_root`/../<name>.thaw as small JSON files, so they survive restarts."""

    def __init__(
        self,
        root: str | Path,
        archive_root: str | Path,
        *,
        thaw_delay: timedelta = timedelta(0),
        clock: Clock | None = None,
        fsync: bool = True,
    ) -> None:
        self.warm = LocalBackend(root, fsync=fsync)
        self.cold = LocalBackend(archive_root, fsync=fsync)
        archive = Path(archive_root).absolute()
        self._thaws = LocalBackend(archive.parent / f"{archive.name}.thaw", fsync=fsync)
        self.thaw_delay = thaw_delay
        self.clock = clock or SystemClock()
        self.location = self.warm.location

    # -- the Backend contract ----------------------------------------------------------------
    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        if exclusive and self.cold.exists(name):
            raise ObjectExistsError(f"writing {name}: already exists (archived)")
        self.warm.write(name, data, exclusive=exclusive)

    def new_spool(self) -> Spool:
        return self.warm.new_spool()

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        if exclusive and self.cold.exists(name):
            raise ObjectExistsError(f"writing {name}: already exists (archived)")
        self.warm.write_spool(name, spool, exclusive=exclusive)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            return self.warm.read(name, offset, length)
        except ObjectNotFoundError:
            if not self.cold.exists(name):
                raise
        if self.tier_state(name) is TierState.THAWED:
            return self.warm.read(name, offset, length)
        raise ArchivedError(f"reading {name}: in archive storage; it needs a defreeze first")

    def stat(self, name: str) -> ObjectInfo:
        try:
            return self.warm.stat(name)
        except ObjectNotFoundError:
            return self.cold.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        for info in self.warm.list(prefix):
            seen.add(info.name)
            yield info
        for info in self.cold.list(prefix):
            if info.name not in seen:
                yield info

    def delete(self, name: str) -> None:
        gone = 0
        for tier in (self.warm, self.cold, self._thaws):
            try:
                tier.delete(name)
                gone += tier is not self._thaws
            except ObjectNotFoundError:
                continue
        if not gone:
            raise ObjectNotFoundError(f"deleting {name}: not found")

    def clean_temporaries(self, older_than: float = 3600.0) -> int:
        return self.warm.clean_temporaries(older_than) + self.cold.clean_temporaries(older_than)

    def close(self) -> None:
        for b in (self.warm, self.cold, self._thaws):
            b.close()

    # -- the archive tier ------------------------------------------------------------------------
    def archive(self, name: str) -> None:
        """Copy to the archive (whole and synced), then drop the warm copy: a crash between
        the two leaves both, and archiving again finishes the move."""
        check_name(name)
        try:
            data = self.warm.read(name)
        except ObjectNotFoundError:
            if self.cold.exists(name):
                return  # already archived
            raise
        if not self.cold.exists(name):
            self.cold.write(name, data)
        self._forget_thaw(name)
        self.warm.delete(name)

    def thaw(self, name: str, days: int) -> None:
        state = self.tier_state(name)
        if state in (TierState.WARM, TierState.THAWING):
            return
        now = self.clock.now()
        request = {"requested": now.isoformat(), "days": days, "ready": None}
        if state is TierState.THAWED:  # asked again: the copy stays `days` longer
            request = {**self._request(name), "days": days, "ready": now.isoformat()}
        self._thaws.write(name, json.dumps(request).encode(), exclusive=False)
        self.tier_state(name)  # a thaw without delay is done at once

    def tier_state(self, name: str) -> TierState:
        check_name(name)
        archived = self.cold.exists(name)
        if not archived:
            if self.warm.exists(name):
                return TierState.WARM
            raise ObjectNotFoundError(f"{name}: not found")
        request = self._request(name)
        warm_copy = self.warm.exists(name)
        now = self.clock.now()
        if warm_copy and not request:
            return TierState.WARM  # an archive move cut short: the warm copy still counts
        if not request:
            return TierState.ARCHIVED
        if request.get("ready"):
            expires = _when(request["ready"]) + timedelta(days=int(str(request["days"])))
            if now >= expires:  # the thawed copy's days are over
                self._forget_thaw(name)
                if warm_copy:
                    self.warm.delete(name)
                return TierState.ARCHIVED
            if warm_copy:
                return TierState.THAWED
        if now < _when(request["requested"]) + self.thaw_delay:
            return TierState.THAWING
        # the slow media has delivered: copy it back, then record when
        if not warm_copy:
            with contextlib.suppress(ObjectExistsError):
                self.warm.write(name, self.cold.read(name))
        request["ready"] = request.get("ready") or now.isoformat()
        self._thaws.write(name, json.dumps(request).encode(), exclusive=False)
        return TierState.THAWED

    def _request(self, name: str) -> dict[str, object]:
        try:
            doc: dict[str, object] = json.loads(self._thaws.read(name))
        except ObjectNotFoundError:
            return {}
        return doc

    def _forget_thaw(self, name: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self._thaws.delete(name)


def _when(value: object) -> datetime:
    return datetime.fromisoformat(str(value))
