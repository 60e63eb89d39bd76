"""Retention on the catalog (SQLite and PostgreSQL): which restore points a policy's rules
keep over two simulated years of daily backups, what a shorter retention would remove, and
the confirmation it needs. The runs themselves (delete, prune, check on a real storage
node) are tested in tests/system/test_retention.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from rekindle.cloud.models import Job, MaintenanceRun, RestorePoint
from rekindle.cloud.security import ForbiddenError
from rekindle.cloud.services import Actor
from tests.cloud.conftest import Cloud

DAYS = 730


def _daily_points(cloud: Cloud, server: int, set_id: int, days: int = DAYS) -> list[int]:
    """One restore point a day at 22:00 UTC, oldest first; returns their ids."""
    first = cloud.clock.now().replace(hour=22, minute=0) - timedelta(days=days - 1)
    with cloud.svc.db.session() as s:
        rows = [
            RestorePoint(
                org_id=cloud.admin.org_id,
                server_id=server,
                backup_set_id=set_id,
                snapshot_id=f"{server:04x}{day:060x}",
                time=first + timedelta(days=day),
                paths=["/srv"],
                files=1,
                bytes=1,
                bytes_added=1,
            )
            for day in range(days)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def _kept_by_the_rules(times: list[datetime]) -> set[int]:
    """The default rules written out directly: every restore point within 60 days of the
    newest; the newest of each of the 24 latest ISO weeks, 12 latest months and 3 latest
    years that have one; and the newest itself. Returns indexes into `times`."""
    newest = max(times)
    keep = {i for i, t in enumerate(times) if t >= newest - timedelta(days=60)}
    for period, count in (
        (lambda t: t.isocalendar()[:2], 24),
        (lambda t: (t.year, t.month), 12),
        (lambda t: t.year, 3),
    ):
        latest: dict[object, int] = {}
        for i, t in enumerate(times):
            key = period(t)
            if key not in latest or times[latest[key]] < t:
                latest[key] = i
        newest_periods = sorted(latest, key=lambda k: times[latest[k]], reverse=True)[:count]
        keep |= {latest[k] for k in newest_periods}
    return keep


def _setup(cloud: Cloud) -> tuple[int, int]:
    server = cloud.enroll("kept")
    bs = cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    return server, bs.id


def test_two_years_of_daily_backups_keep_exactly_what_the_rules_say(
    api: TestClient, cloud: Cloud
) -> None:
    server, set_id = _setup(cloud)  # the default group follows the default policy
    ids = _daily_points(cloud, server, set_id)
    with cloud.svc.db.session() as s:
        times = [s.get(RestorePoint, i).time for i in ids]  # type: ignore[union-attr]
    kept = {ids[i] for i in _kept_by_the_rules(times)}
    assert ids[-1] in kept and 61 + 24 - 9 <= len(kept) <= 61 + 24 + 12 + 3
    expiring = {rp["id"] for rp in api.get("/api/v1/retention/expiring").json()}
    assert expiring == set(ids) - kept
    # a restore queued from a restore point the rules drop, or waiting for its defreeze,
    # keeps it until the restore ends; a cancelled defreeze lets it go
    doomed = sorted(expiring)[:2]
    with cloud.svc.db.session() as s:
        jobs = [
            Job(
                org_id=cloud.admin.org_id,
                server_id=server,
                kind="restore",
                state=state,
                trigger="manual",
                params={"restore_point_id": rp_id},
                created=cloud.clock.now(),
            )
            for rp_id, state in zip(doomed, ("queued", "defreezing"), strict=True)
        ]
        s.add_all(jobs)
        s.flush()
        defreezing = jobs[1].id
    expiring_now = {rp["id"] for rp in api.get("/api/v1/retention/expiring").json()}
    assert expiring_now == expiring - set(doomed)
    r = api.post(f"/api/v1/jobs/{defreezing}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    expiring_now = {rp["id"] for rp in api.get("/api/v1/retention/expiring").json()}
    assert expiring_now == expiring - {doomed[0]}


def test_the_latest_restore_point_of_a_set_is_never_removed(api: TestClient, cloud: Cloud) -> None:
    server, set_id = _setup(cloud)
    ids = _daily_points(cloud, server, set_id, days=3)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    # rules that keep nothing by age still keep the newest restore point
    r = api.post(
        f"/api/v1/policies/{policy.id}/retention-preview",
        json={"retention": {"within_days": 0, "yearly": 0, "weekly": 0, "monthly": 0}},
    )
    assert r.status_code == 200 and r.json() == []  # no rule at all: everything is kept
    r = api.post(
        f"/api/v1/policies/{policy.id}/retention-preview", json={"retention": {"daily": 1}}
    )
    assert [rp["id"] for rp in r.json()] == ids[:2]


def test_a_shorter_retention_is_shown_and_confirmed_before_it_removes_anything(
    api: TestClient, cloud: Cloud
) -> None:
    server, set_id = _setup(cloud)
    ids = _daily_points(cloud, server, set_id, days=40)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    shorter = {"within_days": 7}
    preview = api.post(
        f"/api/v1/policies/{policy.id}/retention-preview", json={"retention": shorter}
    ).json()
    assert [rp["id"] for rp in preview] == ids[: 40 - 8]  # within 7 days of the newest: 8
    r = api.patch(f"/api/v1/policies/{policy.id}", json={"retention": shorter})
    assert r.status_code == 409 and "removes 32 restore point(s)" in r.json()["detail"]
    assert api.get("/api/v1/retention/runs").json() == []
    assert len(api.get("/api/v1/retention/expiring").json()) == 0  # nothing changed
    r = api.patch(
        f"/api/v1/policies/{policy.id}", json={"retention": shorter, "confirm_removal": True}
    )
    assert r.status_code == 200 and r.json()["retention"] == shorter
    (run,) = api.get("/api/v1/retention/runs").json()
    assert (run["state"], run["trigger"]) == ("queued", "policy")
    assert len(api.get("/api/v1/retention/expiring").json()) == 32
    # a longer retention removes nothing, so it needs no confirmation
    r = api.patch(f"/api/v1/policies/{policy.id}", json={"retention": {"within_days": 30}})
    assert r.status_code == 200
    audit = [a for a in api.get("/api/v1/audit").json() if a["action"] == "policy.update"]
    assert audit[-1]["detail"]["removes"] == 32


def test_retention_rules_are_checked(api: TestClient, cloud: Cloud) -> None:
    policy = cloud.svc.list_policies(cloud.admin)[0]
    for bad, words in (
        ({"hourly": 5}, "unknown retention rules: hourly"),
        ({"weekly": -1}, "from 0 to 100000"),
    ):
        r = api.patch(f"/api/v1/policies/{policy.id}", json={"retention": bad})
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    r = api.post("/api/v1/policies", json={"name": "x", "retention": {"monthly": 10**9}})
    assert r.status_code == 422


def test_retention_runs_are_queued_once_per_storage_and_only_by_org_admins(
    api: TestClient, cloud: Cloud
) -> None:
    m = cloud.state.maintenance
    assert m.queue_due() == 0  # no restore point anywhere: nothing to expire or prune
    server, set_id = _setup(cloud)
    _daily_points(cloud, server, set_id, days=2)
    r = api.post("/api/v1/retention/runs", json={})
    assert r.status_code == 201
    (run,) = r.json()
    again = api.post("/api/v1/retention/runs", json={}).json()
    assert [x["id"] for x in again] == [run["id"]]  # one waiting run is enough
    assert api.post("/api/v1/retention/runs", json={"storage_id": 999}).status_code == 404
    cloud.svc.create_admin(cloud.admin, "ro@acme.test", "read_only", [])
    ro = next(a for a in cloud.svc.list_admins(cloud.admin) if a.email == "ro@acme.test")
    with pytest.raises(ForbiddenError):
        m.run_now(Actor(ro.id, ro.org_id, ro.role))
    # the scheduler queues a run a day per storage
    assert m.queue_due() == 0  # a run was created just now
    cloud.clock.advance(24 * 3600)
    assert m.queue_due() == 0  # the queued one is still waiting: it is enough
    with cloud.svc.db.session() as s:
        s.get(MaintenanceRun, run["id"]).state = "succeeded"  # type: ignore[union-attr]
    assert m.queue_due() == 1


def test_moving_a_group_to_a_policy_that_keeps_less_needs_confirmation(
    api: TestClient, cloud: Cloud
) -> None:
    server, set_id = _setup(cloud)
    _daily_points(cloud, server, set_id, days=20)
    short = api.post(
        "/api/v1/policies", json={"name": "short", "retention": {"within_days": 5}}
    ).json()
    group = cloud.svc.list_groups(cloud.admin)[0]
    r = api.patch(f"/api/v1/groups/{group.id}", json={"policy_id": short["id"]})
    assert r.status_code == 409 and "removes 14 restore point(s)" in r.json()["detail"]
    assert cloud.svc.list_groups(cloud.admin)[0].policy_id != short["id"]  # unchanged
    r = api.patch(
        f"/api/v1/groups/{group.id}", json={"policy_id": short["id"], "confirm_removal": True}
    )
    assert r.status_code == 200
    (run,) = api.get("/api/v1/retention/runs").json()
    assert run["trigger"] == "policy"


class _FailingPrune:
    """A storage whose prune fails after the restore points were deleted (a lock conflict,
    a node restart): the catalog must still forget what the repository no longer has."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def expire_and_prune(
        self,
        _url: str,
        _org: int,
        _key: bytes,
        snapshots: list[str],
        *,
        forgotten: Callable[[], None],
        **_kw: object,
    ) -> object:
        self.deleted = list(snapshots)
        forgotten()
        raise RuntimeError("prune: the repository is locked by another prune")


def test_a_run_that_fails_after_deleting_still_updates_the_catalog(
    api: TestClient, cloud: Cloud
) -> None:
    server, set_id = _setup(cloud)
    ids = _daily_points(cloud, server, set_id, days=100)
    expiring = {rp["id"] for rp in api.get("/api/v1/retention/expiring").json()}
    assert expiring
    fake = _FailingPrune()
    cloud.svc.catalog = fake  # type: ignore[assignment]
    m = cloud.state.maintenance
    (run,) = m.run_now(cloud.admin)
    assert run.state == "queued"
    done = m.run_next()
    assert done is not None and done.state == "failed" and "locked" in (done.error or "")
    assert done.removed == len(expiring) == len(fake.deleted)
    left = {rp.id for rp in cloud.svc.list_restore_points(cloud.admin)}
    assert left == set(ids) - expiring
    (alert,) = cloud.svc.list_events(cloud.admin, alerts=True)
    assert alert.kind == "retention.failed"


def test_one_run_at_a_time_per_repository(cloud: Cloud) -> None:
    server, set_id = _setup(cloud)
    _daily_points(cloud, server, set_id, days=2)
    m = cloud.state.maintenance
    (first,) = m.run_now(cloud.admin)
    with cloud.svc.db.session() as s:
        s.get(MaintenanceRun, first.id).state = "running"  # type: ignore[union-attr]
        s.get(MaintenanceRun, first.id).heartbeat = cloud.clock.now()  # type: ignore[union-attr]
    (second,) = m.run_now(cloud.admin)
    assert second.id != first.id
    assert m.run_next() is None  # the first still runs on that repository


def test_a_restore_point_from_the_future_is_dated_now(cloud: Cloud) -> None:
    from rekindle.net import protocol as p

    server, _set_id = _setup(cloud)
    cloud.backup_reported(
        server,
        p.JobResult(
            state="succeeded",
            snapshot_id="ff" * 32,
            snapshot_time=cloud.clock.now() + timedelta(days=3650),  # a broken agent clock
        ),
    )
    (rp,) = cloud.svc.list_restore_points(cloud.admin)
    assert rp.time == cloud.clock.now()
