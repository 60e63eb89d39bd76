"""Retention runs: each day (and when an admin asks, or saves a shorter retention) the cloud
removes from each organization's repository on each storage the restore points their backup
policy no longer keeps, prunes the space only they used, and checks the repository's
structure. On a storage with an archive tier it then moves the data only restore points
older than their policy's cold-after days use to that tier (the engine's tiering, FORMAT.md
section 12), and it measures warm and cold bytes per organization, storage and server.

The cloud does this itself because it holds the keys (a storage node never does). It opens the
repository through the storage node with a maintenance token, which may delete restore points
and what prune deletes but never the config or the keys. Prune follows the engine's protocol
(docs/FORMAT.md section 12), so backups and restores keep running meanwhile.

A run is a row in `maintenance_runs`, claimed with a compare-and-set on its state, so one cloud
process runs it however many replicas there are. A run whose heartbeat stopped (its cloud
process died) is marked failed; the engine's prune is crash-safe and the next run continues.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, select, update

from rekindle.cloud import retention
from rekindle.cloud.catalog import MaintenanceReport
from rekindle.cloud.models import (
    MaintenanceRun,
    Organization,
    RestorePoint,
    Server,
    ServerGroup,
    Storage,
    StorageTier,
)
from rekindle.cloud.services import Actor, CloudServices, NotFoundError, _must
from rekindle.core.errors import RekindleError
from rekindle.repository.tiering import StoredUsage

log = logging.getLogger(__name__)

#: A storage used beyond this share of its capacity raises an alert; below CLEAR it clears.
STORAGE_ALERT = 0.80
STORAGE_CLEAR = 0.75
#: A running run's heartbeat moves at least this often; one silent for STALE is dead.
HEARTBEAT_S = 30
STALE = timedelta(minutes=10)


class Maintenance:
    def __init__(
        self,
        svc: CloudServices,
        *,
        interval: timedelta = timedelta(hours=24),
        prune_grace: timedelta = timedelta(hours=1),
    ) -> None:
        self.svc = svc
        self.interval = interval
        self.prune_grace = prune_grace

    # -- what admins see and do ----------------------------------------------------------------
    def list_runs(self, actor: Actor, limit: int = 100) -> list[MaintenanceRun]:
        with self.svc.db.session() as s:
            q = select(MaintenanceRun).where(MaintenanceRun.org_id == actor.org_id)
            return list(s.scalars(q.order_by(MaintenanceRun.id.desc()).limit(limit)).all())

    def expiring(self, actor: Actor) -> list[RestorePoint]:
        """What the next retention run removes under the saved policies."""
        with self.svc.db.session() as s:
            visible = {
                x.id
                for x in s.scalars(select(Server).where(Server.org_id == actor.org_id))
                if actor.may_see_group(x.group_id)
            }
            return [rp for rp in retention.expired(s, actor.org_id) if rp.server_id in visible]

    def run_now(self, actor: Actor, storage_id: int | None = None) -> list[MaintenanceRun]:
        """Queue a retention run on each storage the organization uses (or on one)."""
        actor.require_org_admin()
        with self.svc.db.session() as s:
            used = self._storages_in_use(s, actor.org_id)
            if storage_id is not None:
                if storage_id not in used:
                    raise NotFoundError(f"the organization keeps nothing on storage {storage_id}")
                used = {storage_id}
            runs = [self._queue(s, actor.org_id, sid, "manual") for sid in sorted(used)]
            self.svc._audit(
                s, actor, actor.org_id, "retention.run", "retention", storages=sorted(used)
            )
            return runs

    # -- the scheduler ----------------------------------------------------------------------------
    def queue_due(self) -> int:
        """Queue a retention run for every (organization, storage) whose last run is older
        than the interval; returns how many were queued."""
        queued = 0
        with self.svc.db.session() as s:
            for org in s.scalars(select(Organization).with_for_update()):
                for storage_id in sorted(self._storages_with_points(s, org.id)):
                    last = s.scalar(
                        select(MaintenanceRun)
                        .where(
                            MaintenanceRun.org_id == org.id,
                            MaintenanceRun.storage_id == storage_id,
                        )
                        .order_by(MaintenanceRun.id.desc())
                        .limit(1)
                    )
                    if last is not None and (
                        last.state == "queued" or self.svc.now() - last.created < self.interval
                    ):
                        continue
                    self._queue(s, org.id, storage_id, "scheduled")
                    queued += 1
        return queued

    def queue_for_policy(self, org_id: int, policy_id: int) -> None:
        """A retention change was saved: apply it now on the storages its groups use."""
        with self.svc.db.session() as s:
            for storage_id in sorted(retention.storages_of_policy(s, policy_id)):
                self._queue(s, org_id, storage_id, "policy")

    def run_next(self) -> MaintenanceRun | None:
        """Claim the oldest queued run and carry it out; None when nothing is queued."""
        self._fail_stale()
        with self.svc.db.session() as s:
            running = {
                (r.org_id, r.storage_id)
                for r in s.scalars(select(MaintenanceRun).where(MaintenanceRun.state == "running"))
            }
            run = next(
                (
                    r
                    for r in s.scalars(
                        select(MaintenanceRun)
                        .where(MaintenanceRun.state == "queued")
                        .order_by(MaintenanceRun.id)
                    )
                    # one run at a time per repository (another replica may be running one)
                    if (r.org_id, r.storage_id) not in running
                ),
                None,
            )
            if run is None:
                return None
            now = self.svc.now()
            claimed = s.execute(
                update(MaintenanceRun)
                .where(MaintenanceRun.id == run.id, MaintenanceRun.state == "queued")
                .values(state="running", started=now, heartbeat=now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None  # another cloud process took it
            run_id = run.id
        return self._carry_out(run_id)

    # -- carrying a run out ---------------------------------------------------------------------
    def _carry_out(self, run_id: int) -> MaintenanceRun:
        with self.svc.db.session() as s:
            run = _must(s.get(MaintenanceRun, run_id))
            storage = _must(s.get(Storage, run.storage_id))
            org = _must(s.get(Organization, run.org_id))
            doomed = retention.expired(s, run.org_id, storage_id=run.storage_id)
            snapshots = {rp.id: rp.snapshot_id for rp in doomed}
            names = {rp.id: self._describe(s, rp) for rp in doomed}
            storage_url, org_id, storage_id = storage.url, org.id, storage.id
            key = self.svc.kek.open(org.repo_key_sealed, f"org:{org.id}".encode())

        def progress(message: str) -> None:
            log.info("retention run %d: %s", run_id, message)

        stop = threading.Event()

        def heartbeat() -> None:  # the run may spend hours in one step of prune
            while not stop.wait(HEARTBEAT_S):
                try:
                    with self.svc.db.session() as s2:
                        s2.execute(
                            update(MaintenanceRun)
                            .where(MaintenanceRun.id == run_id)
                            .values(heartbeat=self.svc.now())
                        )
                except Exception:
                    log.exception("retention run %d: heartbeat failed", run_id)

        beating = threading.Thread(target=heartbeat, name=f"retention-{run_id}", daemon=True)
        beating.start()
        try:
            if self.svc.catalog is None:
                raise RekindleError("this cloud has no access to storage")
            # Restores queued since the plan keep their restore point.
            with self.svc.db.session() as s:
                in_use = retention.restore_points_in_use(s, org_id)
            for rp_id in in_use & set(snapshots):
                del snapshots[rp_id]

            def forgotten() -> None:
                # Their objects are gone from the repository: the catalog forgets them at
                # once, whatever happens to prune and check afterwards.
                with self.svc.db.session() as s2:
                    s2.execute(delete(RestorePoint).where(RestorePoint.id.in_(snapshots)))
                    s2.execute(
                        update(MaintenanceRun)
                        .where(MaintenanceRun.id == run_id)
                        .values(removed=len(snapshots))
                    )

            def cold() -> set[str]:
                # Asked after the expired points are gone; a restore queued since keeps
                # its restore point warm.
                with self.svc.db.session() as s2:
                    return set(
                        retention.cold_points(s2, org_id, storage_id, self.svc.now()).values()
                    )

            with self.svc.db.session() as s:
                server_of = dict(
                    s.execute(
                        select(RestorePoint.snapshot_id, RestorePoint.server_id).where(
                            RestorePoint.org_id == org_id
                        )
                    ).all()
                )
            report = self.svc.catalog.expire_and_prune(
                storage_url,
                org_id,
                key,
                sorted(set(snapshots.values())),
                run_id=run_id,
                grace=self.prune_grace,
                progress=progress,
                forgotten=forgotten,
                cold=cold,
                server_of=server_of,
            )
        except Exception as e:  # the run fails with its reason; the next run tries again
            log.exception("retention run %d failed", run_id)
            return self._finish(run_id, error=str(e) or type(e).__name__)
        finally:
            stop.set()
            beating.join()
        return self._finish(run_id, report=report, removed=snapshots, names=names)

    def _finish(
        self,
        run_id: int,
        *,
        report: MaintenanceReport | None = None,
        removed: dict[int, str] | None = None,
        names: dict[int, str] | None = None,
        error: str | None = None,
    ) -> MaintenanceRun:
        with self.svc.db.session() as s:
            run = _must(s.get(MaintenanceRun, run_id))
            storage = s.get(Storage, run.storage_id)
            where = storage.name if storage else f"storage {run.storage_id}"
            run.finished = self.svc.now()
            if report is not None and report.no_repository:
                if removed:  # the catalog knows restore points there: wrong disk or prefix?
                    error = (
                        "the storage holds no repository for this organization, yet the "
                        f"catalog has {len(removed)} restore point(s) there to expire: is the "
                        "storage node serving the right disk or bucket?"
                    )
                    report = None
                else:
                    run.report, run.state = "nothing is stored there yet", "succeeded"
                    return run
            if report is not None:
                prune = report.prune
                run.bytes_freed = prune.bytes_freed if prune else 0
                lines = [f"removed {run.removed} restore point(s)"]
                lines += [f"  {names[i]}" for i in sorted(removed or {}) if names]
                lines.append(f"prune: {prune}")
                lines += [f"check: {e}" for e in report.check_errors] or ["check: no errors"]
                if report.tier is not None:
                    lines.append(f"tiering: {report.tier}")
                    run.bytes_archived = report.tier.bytes_moved
                run.report = "\n".join(lines)
                if report.usage is not None:
                    self._record_tiers(s, run, report.usage)
            if error is not None or (report is not None and report.check_errors):
                run.state = "failed"
                run.error = error or "the repository check found errors: " + "; ".join(
                    report.check_errors[:5] if report else []
                )
                self.svc._event(
                    s,
                    run.org_id,
                    "error",
                    "retention.failed",
                    f"retention run {run.id} on {where} failed: {run.error}",
                )
            else:
                run.state = "succeeded"
                self.svc._event(
                    s,
                    run.org_id,
                    "info",
                    "retention.done",
                    f"retention run {run.id} on {where} removed {run.removed} restore point(s) "
                    f"and freed {run.bytes_freed} bytes"
                    + (
                        f"; moved {run.bytes_archived} bytes to the archive tier"
                        if run.bytes_archived
                        else ""
                    ),
                )
            return run

    def _record_tiers(self, s: Any, run: MaintenanceRun, usage: StoredUsage) -> None:
        row = s.get(StorageTier, (run.org_id, run.storage_id))
        if row is None:
            row = StorageTier(org_id=run.org_id, storage_id=run.storage_id)
            s.add(row)
        row.warm_bytes, row.cold_bytes = usage.warm_bytes, usage.cold_bytes
        row.cold_packs, row.measured = usage.cold_packs, self.svc.now()
        servers = s.scalars(
            select(Server)
            .join(ServerGroup, Server.group_id == ServerGroup.id)
            .where(Server.org_id == run.org_id, ServerGroup.storage_id == run.storage_id)
        )
        for server in servers:
            server.warm_bytes, server.cold_bytes = usage.by_group.get(str(server.id), (0, 0))

    def _fail_stale(self) -> None:
        cutoff = self.svc.now() - STALE
        with self.svc.db.session() as s:
            s.execute(
                update(MaintenanceRun)
                .where(and_(MaintenanceRun.state == "running", MaintenanceRun.heartbeat < cutoff))
                .values(
                    state="failed",
                    finished=self.svc.now(),
                    error="cut short: the cloud process running it stopped; the next run "
                    "continues where it left off",
                )
            )

    # -- storage usage ----------------------------------------------------------------------------
    def check_storages(self) -> int:
        """Measure each storage in use and raise an alert (and a mail) for every organization
        on it when it passes STORAGE_ALERT of its capacity; it clears below STORAGE_CLEAR.
        Capacity: the operator's setting, measured against the repositories' bytes; without
        one, the node's filesystem (its size and what is used on it). Returns alerts raised."""
        if self.svc.catalog is None:
            return 0
        with self.svc.db.session() as s:
            users: dict[int, list[int]] = {}
            for g in s.scalars(select(ServerGroup)):
                users.setdefault(g.storage_id, [])
                if g.org_id not in users[g.storage_id]:
                    users[g.storage_id].append(g.org_id)
            storages = {x.id: (x.url, x.capacity_bytes) for x in s.scalars(select(Storage))}
        raised = 0
        for storage_id, orgs in sorted(users.items()):
            url, capacity = storages[storage_id]
            try:
                answers = [self.svc.catalog.usage(url, org) for org in sorted(orgs)]
            except RekindleError as e:
                log.warning("storage %d: usage not known: %s", storage_id, e)
                continue
            stored = sum(int(a["org_bytes"]) for a in answers)
            fs = next((a["filesystem"] for a in answers if a.get("filesystem")), None)
            used, total = (
                (stored, capacity)
                if capacity
                else ((int(fs["used"]), int(fs["total"])) if fs else (stored, None))
            )
            raised += self._record_usage(storage_id, orgs, used, total)
        return raised

    def _record_usage(self, storage_id: int, orgs: list[int], used: int, total: int | None) -> int:
        with self.svc.db.session() as s:
            storage = _must(s.get(Storage, storage_id))
            storage.used_bytes, storage.total_bytes = used, total
            storage.checked = self.svc.now()
            if not total:
                return 0
            share = used / total
            if share < STORAGE_CLEAR:
                storage.over_threshold = False
            if share < STORAGE_ALERT or storage.over_threshold:
                return 0
            # compare-and-set: two cloud processes measuring at once raise it once
            moved = s.execute(
                update(Storage)
                .where(Storage.id == storage_id, Storage.over_threshold.is_(False))
                .values(over_threshold=True)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return 0
            for org_id in orgs:
                self.svc._event(
                    s,
                    org_id,
                    "warning",
                    "storage.full",
                    f"storage {storage.name} is {share:.0%} full ({used} of {total} bytes); "
                    "add capacity, shorten retention, or move server groups to another storage",
                )
            return len(orgs)

    # -- helpers ---------------------------------------------------------------------------------
    def _queue(self, s: Any, org_id: int, storage_id: int, trigger: str) -> MaintenanceRun:
        waiting = s.scalar(
            select(MaintenanceRun).where(
                MaintenanceRun.org_id == org_id,
                MaintenanceRun.storage_id == storage_id,
                MaintenanceRun.state == "queued",
            )
        )
        if isinstance(waiting, MaintenanceRun):
            return waiting  # one queued run per storage is enough
        run = MaintenanceRun(
            org_id=org_id,
            storage_id=storage_id,
            kind="retention",
            state="queued",
            trigger=trigger,
            created=self.svc.now(),
        )
        s.add(run)
        s.flush()
        return run

    @staticmethod
    def _storages_in_use(s: Any, org_id: int) -> set[int]:
        return set(
            s.scalars(select(ServerGroup.storage_id).where(ServerGroup.org_id == org_id)).all()
        )

    @staticmethod
    def _storages_with_points(s: Any, org_id: int) -> set[int]:
        """Storages holding restore points of the organization (elsewhere there is nothing
        to expire, and a repository may not even exist yet)."""
        q = (
            select(ServerGroup.storage_id)
            .join(Server, Server.group_id == ServerGroup.id)
            .join(RestorePoint, RestorePoint.server_id == Server.id)
            .where(ServerGroup.org_id == org_id)
            .distinct()
        )
        return set(s.scalars(q).all())

    @staticmethod
    def _describe(s: Any, rp: RestorePoint) -> str:
        server = s.get(Server, rp.server_id)
        host = server.hostname if server else f"server {rp.server_id}"
        when: datetime = rp.time
        return f"{host} {when:%Y-%m-%d %H:%M} UTC ({rp.snapshot_id[:12]})"
