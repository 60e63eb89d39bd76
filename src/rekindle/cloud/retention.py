"""Which restore points a backup policy's retention rules no longer keep, worked out on the
catalog (no storage access): the scheduled retention run deletes them, and a policy change
shows them to the admin before they go.

The rules are the engine's (`repository.retention`): restore points are judged per backup set
(per server and set of paths once the set was removed), newest first; every restore point
within N days of the newest is kept, then the newest of each of the last N days, ISO weeks
(a week ends on Sunday at midnight), months and years, all cut in UTC. The newest restore
point of a backup set is always kept, and so is one a queued or running restore reads.
Counting from the newest restore point rather than from today means a server that stopped
backing up keeps its history instead of losing it day by day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rekindle.cloud.models import BackupPolicy, Job, RestorePoint, Server, ServerGroup
from rekindle.repository.retention import RetentionPolicy, apply_retention

#: The retention fields a policy holds, and what they mean.
RETENTION_FIELDS = {
    "within_days": "keep every restore point this many days",
    "daily": "then the newest of this many days",
    "weekly": "the newest of this many weeks",
    "monthly": "the newest of this many months",
    "yearly": "the newest of this many years",
}


@dataclass(frozen=True)
class _Dated:
    """A catalog restore point as the engine's retention rules see it."""

    id: str
    time: datetime
    tags: tuple[str, ...] = ()


def rules_of(retention: Mapping[str, Any]) -> RetentionPolicy | None:
    """The engine's rules for a policy's retention; None when they keep everything (no rule
    set: nothing is ever removed, rather than everything but the newest)."""
    within = int(retention.get("within_days") or 0)
    rules = RetentionPolicy(
        keep_within=timedelta(days=within) if within else None,
        keep_daily=int(retention.get("daily") or 0) or None,
        keep_weekly=int(retention.get("weekly") or 0) or None,
        keep_monthly=int(retention.get("monthly") or 0) or None,
        keep_yearly=int(retention.get("yearly") or 0) or None,
    )
    return None if rules.is_empty() else rules


def restore_points_in_use(s: Session, org_id: int) -> set[int]:
    """Restore points a restore waiting for a defreeze, queued or running reads: never
    expired under it (nor, with it, the data a defreeze thawed for it)."""
    rows = s.scalars(
        select(Job).where(
            Job.org_id == org_id,
            Job.kind == "restore",
            Job.state.in_(("defreezing", "queued", "running")),
        )
    ).all()
    return {int(j.params["restore_point_id"]) for j in rows if "restore_point_id" in j.params}


def expired(
    s: Session,
    org_id: int,
    *,
    storage_id: int | None = None,
    retention_of: Mapping[int, Mapping[str, Any]] | None = None,
    policy_id: int | None = None,
) -> list[RestorePoint]:
    """The restore points of `org_id` (on `storage_id`, or only those whose group follows
    `policy_id`) that the rules no longer keep, oldest first. `retention_of` replaces the
    retention of some policies (a change not saved yet)."""
    groups = {g.id: g for g in s.scalars(select(ServerGroup).where(ServerGroup.org_id == org_id))}
    policies = {
        p.id: p for p in s.scalars(select(BackupPolicy).where(BackupPolicy.org_id == org_id))
    }
    servers = {x.id: x for x in s.scalars(select(Server).where(Server.org_id == org_id))}
    in_use = restore_points_in_use(s, org_id)
    sets: dict[tuple[int, Any], list[RestorePoint]] = {}
    for rp in s.scalars(select(RestorePoint).where(RestorePoint.org_id == org_id)):
        key = rp.backup_set_id if rp.backup_set_id is not None else tuple(sorted(rp.paths))
        sets.setdefault((rp.server_id, key), []).append(rp)
    out: list[RestorePoint] = []
    for (server_id, _key), points in sets.items():
        group = groups.get(servers[server_id].group_id) if server_id in servers else None
        if group is None or group.policy_id is None:
            continue  # no policy: nothing expires
        if storage_id is not None and group.storage_id != storage_id:
            continue
        if policy_id is not None and group.policy_id != policy_id:
            continue
        policy = policies[group.policy_id]
        retention = (retention_of or {}).get(policy.id, policy.retention)
        rules = rules_of(retention)
        if rules is None:
            continue
        by_id = {str(rp.id): rp for rp in points}
        result = apply_retention([_Dated(str(rp.id), rp.time) for rp in points], rules)
        out.extend(by_id[d.id] for d in result.remove if int(d.id) not in in_use)
    out.sort(key=lambda rp: (rp.time, rp.id))
    return out


def newly_expired(
    s: Session, org_id: int, policy_id: int, retention: Mapping[str, Any]
) -> list[RestorePoint]:
    """What a retention change would remove beyond what the saved rules already remove."""
    before = {rp.id for rp in expired(s, org_id, policy_id=policy_id)}
    after = expired(s, org_id, policy_id=policy_id, retention_of={policy_id: retention})
    return [rp for rp in after if rp.id not in before]


def cold_points(s: Session, org_id: int, storage_id: int, now: datetime) -> dict[int, str]:
    """The restore points of `org_id` on `storage_id` older than their policy's cold-after
    days (restore id -> snapshot id): what tiering may move to the archive tier. A server
    whose group has no policy counts with the default of 90 days; a restore point a restore
    reads stays warm under it."""
    groups = {
        g.id: g
        for g in s.scalars(
            select(ServerGroup).where(
                ServerGroup.org_id == org_id, ServerGroup.storage_id == storage_id
            )
        )
    }
    policies = {
        p.id: p for p in s.scalars(select(BackupPolicy).where(BackupPolicy.org_id == org_id))
    }
    cold_after: dict[int, timedelta] = {}
    for x in s.scalars(select(Server).where(Server.org_id == org_id)):
        group = groups.get(x.group_id)
        if group is None:
            continue
        policy = policies.get(group.policy_id) if group.policy_id is not None else None
        cold_after[x.id] = timedelta(days=policy.cold_after_days if policy else 90)
    in_use = restore_points_in_use(s, org_id)
    return {
        rp.id: rp.snapshot_id
        for rp in s.scalars(select(RestorePoint).where(RestorePoint.org_id == org_id))
        if rp.server_id in cold_after
        and rp.time < now - cold_after[rp.server_id]
        and rp.id not in in_use
    }


def storages_of_policy(s: Session, policy_id: int) -> Iterable[int]:
    groups = s.scalars(select(ServerGroup).where(ServerGroup.policy_id == policy_id))
    return {g.storage_id for g in groups}
