"""Forget restore points: by id, or by retention rules per backup set.

Forgetting deletes only the restore point objects; the data they alone used is reclaimed by
`prune`. Retention applies to each backup set separately: restore points of the same host
and the same paths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, tzinfo

from rekindle.core.errors import ObjectNotFoundError, RekindleError
from rekindle.format.snapshot import Snapshot
from rekindle.repository.repo import Repository
from rekindle.repository.retention import RetentionPolicy, apply_retention

log = logging.getLogger(__name__)


@dataclass
class ForgetResult:
    keep: list[Snapshot] = field(default_factory=list)
    remove: list[Snapshot] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # kept: we cannot judge them


def group_key(s: Snapshot) -> tuple[str, tuple[str, ...]]:
    return (s.host, tuple(sorted(s.paths)))


def forget(
    repo: Repository, policy: RetentionPolicy, *, dry_run: bool = False, tz: tzinfo = UTC
) -> ForgetResult:
    result = ForgetResult()
    groups: dict[tuple[str, tuple[str, ...]], list[Snapshot]] = {}
    for sid in repo.snapshot_ids():
        try:
            s = repo.read_snapshot(sid)
        except RekindleError as e:
            log.warning("restore point %s is unreadable and is kept: %s", sid, e)
            result.unreadable.append(sid)
            continue
        groups.setdefault(group_key(s), []).append(s)
    for snaps in groups.values():
        r = apply_retention(snaps, policy, tz=tz)
        result.keep.extend(r.keep)
        result.remove.extend(r.remove)
    if not dry_run:
        forget_ids(repo, [s.id for s in result.remove])
    return result


def forget_ids(repo: Repository, ids: Iterable[str]) -> int:
    """Delete restore points by full id; one already gone is not an error."""
    n = 0
    for sid in ids:
        try:
            repo.delete_snapshot(sid)
            n += 1
        except ObjectNotFoundError:
            continue
    return n
