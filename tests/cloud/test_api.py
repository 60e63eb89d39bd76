"""The admin API on SQLite and PostgreSQL: authentication, roles, validation (4xx with a
clear message, never a 500), the audit log and the published OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from rekindle.net import protocol as p
from tests.cloud.conftest import Cloud


def test_login_wrong_password_and_missing_token_are_401(api: TestClient) -> None:
    r = api.post("/api/v1/login", json={"email": "admin@acme.test", "password": "nope"})
    assert r.status_code == 401
    assert "wrong email or password" in r.json()["detail"]
    r = api.get("/api/v1/servers", headers={"Authorization": ""})
    assert r.status_code == 401
    r = api.get("/api/v1/servers", headers={"Authorization": "Bearer rks_forged"})
    assert r.status_code == 401


def test_malformed_input_gets_a_clear_4xx(api: TestClient) -> None:
    r = api.post(
        "/api/v1/policies", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    r = api.post("/api/v1/policies", json={"name": "p", "days": "funday"})
    assert r.status_code == 422
    assert "unknown day 'funday'" in r.json()["detail"]
    r = api.post("/api/v1/policies", json={"name": "p", "start_time": "25:00"})
    assert r.status_code == 422
    assert "HH:MM" in r.json()["detail"]
    r = api.post("/api/v1/policies", json={"name": "p", "window_hours": -1})
    assert r.status_code == 422
    r = api.get("/api/v1/jobs/999999")
    assert r.status_code == 404
    r = api.get("/api/v1/jobs/not-a-number")
    assert r.status_code == 422
    r = api.post("/api/v1/restores", json={"restore_point_id": 5, "existing": "explode"})
    assert r.status_code == 422
    r = api.post("/api/v1/groups", json={"name": "g", "policy_id": 12345})
    assert r.status_code == 404


def test_policy_group_backup_set_flow_is_audited(api: TestClient, cloud: Cloud) -> None:
    r = api.post(
        "/api/v1/policies",
        json={"name": "nightly", "days": "mon-fri", "start_time": "22:30", "window_hours": 8},
    )
    assert r.status_code == 201, r.text
    pol = r.json()
    assert pol["days"] == "mon,tue,wed,thu,fri"
    assert pol["next_run"].startswith("2026-03-02T22:30")  # START is a Monday noon
    r = api.post("/api/v1/groups", json={"name": "web", "policy_id": pol["id"]})
    assert r.status_code == 201
    group = r.json()
    r = api.post("/api/v1/activation-tokens", json={"group_id": group["id"]})
    assert r.status_code == 201
    assert "rekindle agent enroll --cloud" in r.json()["command"]
    assert r.json()["token"] in r.json()["command"]
    server_id = cloud.enroll("web1", group["id"])
    r = api.post(
        f"/api/v1/servers/{server_id}/backup-sets",
        json={"name": "www", "include": ["relative/path"]},
    )
    assert r.status_code == 422
    assert "must be absolute" in r.json()["detail"]
    r = api.post(
        f"/api/v1/servers/{server_id}/backup-sets",
        json={"name": "www", "include": ["/srv/www"], "exclude": ["*.tmp"]},
    )
    assert r.status_code == 201
    r = api.post(
        f"/api/v1/servers/{server_id}/backup-sets", json={"name": "www", "include": ["/srv"]}
    )
    assert r.status_code == 409
    actions = [a["action"] for a in api.get("/api/v1/audit").json()]
    for want in (
        "policy.create",
        "group.create",
        "activation_token.create",
        "server.enroll",
        "backup_set.create",
        "login",
    ):
        assert want in actions
    assert api.get("/openapi.json").json()["info"]["title"] == "Rekindle cloud"


def test_roles_limit_what_an_admin_may_do(api: TestClient, cloud: Cloud) -> None:
    r = api.post("/api/v1/groups", json={"name": "db"})
    db_group = r.json()["id"]
    default_group = cloud.svc.list_groups(cloud.admin)[0].id
    in_db = cloud.enroll("db1", db_group)
    in_default = cloud.enroll("web1", default_group)

    r = api.post("/api/v1/admins", json={"email": "ro@acme.test", "role": "read_only"})
    assert r.status_code == 201
    ro_password = r.json()["password"]
    r = api.post(
        "/api/v1/admins",
        json={"email": "dba@acme.test", "role": "group_admin", "group_ids": [db_group]},
    )
    dba_password = r.json()["password"]

    def session(email: str, password: str) -> dict[str, str]:
        r = api.post("/api/v1/login", json={"email": email, "password": password})
        assert r.status_code == 200
        return {"Authorization": f"Bearer {r.json()['token']}"}

    ro = session("ro@acme.test", ro_password)
    assert api.get("/api/v1/servers", headers=ro).status_code == 200
    r = api.post(f"/api/v1/servers/{in_db}/backup-now", json={}, headers=ro)
    assert r.status_code == 403
    assert "read-only" in r.json()["detail"]
    assert api.get("/api/v1/audit", headers=ro).status_code == 403

    dba = session("dba@acme.test", dba_password)
    seen = {s["id"] for s in api.get("/api/v1/servers", headers=dba).json()}
    assert seen == {in_db}
    assert api.get(f"/api/v1/servers/{in_default}", headers=dba).status_code == 404
    r = api.patch(f"/api/v1/servers/{in_default}", json={"enabled": False}, headers=dba)
    assert r.status_code == 404
    r = api.post("/api/v1/admins", json={"email": "x@acme.test", "role": "org_admin"}, headers=dba)
    assert r.status_code == 403


def test_other_organizations_are_invisible(api: TestClient, cloud: Cloud) -> None:
    cloud.enroll("web1")
    other_org, other_pw = cloud.svc.create_organization("globex", "admin@globex.test")
    r = api.post("/api/v1/login", json={"email": "admin@globex.test", "password": other_pw})
    other = {"Authorization": f"Bearer {r.json()['token']}"}
    assert api.get("/api/v1/servers", headers=other).json() == []
    mine = api.get("/api/v1/servers").json()
    assert len(mine) == 1
    assert api.get(f"/api/v1/servers/{mine[0]['id']}", headers=other).status_code == 404
    assert other_org != cloud.admin.org_id


def test_logout_ends_the_session(api: TestClient) -> None:
    assert api.post("/api/v1/logout").status_code == 204
    assert api.get("/api/v1/servers").status_code == 401


def test_removing_a_server_through_the_api(api: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll("api-gone")
    r = api.delete(f"/api/v1/servers/{server}")
    assert r.status_code == 409 and "before removing it" in r.json()["detail"]
    assert api.patch(f"/api/v1/servers/{server}", json={"enabled": False}).status_code == 200
    assert api.delete(f"/api/v1/servers/{server}").status_code == 204
    assert api.get(f"/api/v1/servers/{server}").status_code == 404


def _backup_set(api: TestClient, server: int, name: str = "docs") -> dict[str, Any]:
    r = api.post(f"/api/v1/servers/{server}/backup-sets", json={"name": name, "include": ["/srv"]})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_backup_set_is_edited_and_removed(api: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll("sets")
    first = _backup_set(api, server)
    _backup_set(api, server, "other")
    r = api.patch(
        f"/api/v1/backup-sets/{first['id']}",
        json={"name": "documents", "include": ["/srv", "/home"], "exclude": ["*.tmp"]},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": first["id"],
        "server_id": server,
        "name": "documents",
        "include": ["/srv", "/home"],
        "exclude": ["*.tmp"],
    }
    r = api.patch(f"/api/v1/backup-sets/{first['id']}", json={"include": ["home"]})
    assert r.status_code == 422 and "must be absolute" in r.json()["detail"]
    r = api.patch(f"/api/v1/backup-sets/{first['id']}", json={"name": "other"})
    assert r.status_code == 409 and "already has a backup set 'other'" in r.json()["detail"]
    # the next backup reads the new paths
    r = api.post(f"/api/v1/servers/{server}/backup-now", json={"backup_set_id": first["id"]})
    assert r.status_code == 201
    cloud.connect(server)
    job = cloud.svc.claim_job(server)
    assert job is not None and job.backup is not None
    assert (job.backup.backup_set_name, job.backup.include, job.backup.exclude) == (
        "documents",
        ["/srv", "/home"],
        ["*.tmp"],
    )
    cloud.svc.finish_job(server, job.job_id, p.JobResult(state="succeeded", snapshot_id="ef" * 32))
    # a queued job holds the set; once it is cancelled the set goes, its restore point stays
    queued = api.post(
        f"/api/v1/servers/{server}/backup-now", json={"backup_set_id": first["id"]}
    ).json()
    r = api.delete(f"/api/v1/backup-sets/{first['id']}")
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    assert api.post(f"/api/v1/jobs/{queued['id']}/cancel").status_code == 200
    assert api.delete(f"/api/v1/backup-sets/{first['id']}").status_code == 204
    names = [b["name"] for b in api.get(f"/api/v1/servers/{server}/backup-sets").json()]
    assert names == ["other"]
    (point,) = api.get("/api/v1/restore-points", params={"server_id": server}).json()
    assert point["backup_set_id"] is None and point["snapshot_id"] == "ef" * 32
    assert api.delete(f"/api/v1/backup-sets/{first['id']}").status_code == 404
    actions = [a["action"] for a in api.get("/api/v1/audit").json()]
    assert "backup_set.update" in actions and "backup_set.remove" in actions


def test_a_policy_in_use_is_not_removed(api: TestClient) -> None:
    pol = api.post("/api/v1/policies", json={"name": "weekly", "days": "sun"}).json()
    group = api.post("/api/v1/groups", json={"name": "g", "policy_id": pol["id"]}).json()
    r = api.delete(f"/api/v1/policies/{pol['id']}")
    assert r.status_code == 409 and "used by server group(s) g" in r.json()["detail"]
    r = api.patch(f"/api/v1/groups/{group['id']}", json={"policy_id": None})
    assert r.status_code == 200 and r.json()["policy_id"] is None
    assert api.delete(f"/api/v1/policies/{pol['id']}").status_code == 204
    assert "weekly" not in [x["name"] for x in api.get("/api/v1/policies").json()]
    r = api.patch(f"/api/v1/groups/{group['id']}", json={"policy_id": pol["id"]})
    assert r.status_code == 404


def test_warnings_and_errors_are_alerts_until_acknowledged(api: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll("alerting")
    other = cloud.enroll("quiet")
    _backup_set(api, server)
    _backup_set(api, other)
    cloud.backup_reported(server, p.JobResult(state="failed", error="disk gone"))
    cloud.backup_reported(other, p.JobResult(state="succeeded", snapshot_id="12" * 32))
    alerts = api.get("/api/v1/alerts").json()
    assert [(a["severity"], a["server_id"]) for a in alerts] == [("error", server)]
    assert "disk gone" in alerts[0]["message"]
    # the event list filters by severity and server
    errors = api.get("/api/v1/events", params={"severity": "error"}).json()
    assert [e["id"] for e in errors] == [alerts[0]["id"]]
    quiet = api.get("/api/v1/events", params={"server_id": other}).json()
    assert quiet and {e["server_id"] for e in quiet} == {other}
    r = api.get("/api/v1/events", params={"severity": "loud"})
    assert r.status_code == 422
    # an info event is no alert; acknowledging needs ids or all, not both
    r = api.post("/api/v1/alerts/acknowledge", json={"event_ids": [quiet[0]["id"]]})
    assert r.status_code == 404 and "no open alert" in r.json()["detail"]
    r = api.post("/api/v1/alerts/acknowledge", json={})
    assert r.status_code == 422
    r = api.post("/api/v1/alerts/acknowledge", json={"event_ids": [alerts[0]["id"]]})
    assert r.status_code == 200 and r.json() == {"acknowledged": 1}
    assert api.get("/api/v1/alerts").json() == []
    (kept,) = api.get("/api/v1/events", params={"severity": "error"}).json()
    assert kept["acknowledged"] is not None and kept["acknowledged_by"] == cloud.admin.admin_id
    cloud.backup_reported(server, p.JobResult(state="failed", error="disk gone again"))
    r = api.post("/api/v1/alerts/acknowledge", json={"all": True})
    assert r.json() == {"acknowledged": 1}
    assert "alert.acknowledge" in [a["action"] for a in api.get("/api/v1/audit").json()]


def test_an_admin_is_changed_and_disabled_but_the_last_org_admin_stays(
    api: TestClient, cloud: Cloud
) -> None:
    created = api.post(
        "/api/v1/admins", json={"email": "ops@acme.test", "role": "read_only"}
    ).json()
    login = {"email": "ops@acme.test", "password": created["password"]}
    ops_token = api.post("/api/v1/login", json=login).json()["token"]
    as_ops = {"Authorization": f"Bearer {ops_token}"}
    assert api.post("/api/v1/groups", json={"name": "x"}, headers=as_ops).status_code == 403
    group = api.get("/api/v1/groups").json()[0]
    r = api.patch(
        f"/api/v1/admins/{created['id']}",
        json={"role": "group_admin", "group_ids": [group["id"]]},
    )
    assert r.status_code == 200 and r.json()["role"] == "group_admin"
    assert r.json()["group_ids"] == [str(group["id"])]
    # the new role holds from the next request of the same session
    r = api.post("/api/v1/activation-tokens", json={"group_id": group["id"]}, headers=as_ops)
    assert r.status_code == 201
    assert api.patch(f"/api/v1/admins/{created['id']}", json={"role": "god"}).status_code == 422
    r = api.patch(f"/api/v1/admins/{created['id']}", json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    r = api.get("/api/v1/servers", headers=as_ops)
    assert r.status_code == 401 and "disabled" in r.json()["detail"]
    assert api.post("/api/v1/login", json=login).status_code == 401
    # the only organization admin cannot demote or disable themselves
    me = cloud.admin.admin_id
    r = api.patch(f"/api/v1/admins/{me}", json={"disabled": True})
    assert r.status_code == 409 and "last enabled organization admin" in r.json()["detail"]
    r = api.patch(f"/api/v1/admins/{me}", json={"role": "read_only"})
    assert r.status_code == 409
    assert api.get("/api/v1/servers").status_code == 200
    assert api.patch("/api/v1/admins/99999", json={"disabled": True}).status_code == 404
    assert "admin.update" in [a["action"] for a in api.get("/api/v1/audit").json()]


def test_stats_split_warm_and_cold_as_the_retention_run_measured(
    api: TestClient, cloud: Cloud
) -> None:
    from datetime import UTC, datetime

    from rekindle.cloud.models import RestorePoint, Server, StorageTier

    server = cloud.enroll("stats")
    before = api.get("/api/v1/stats").json()
    assert before["warm_bytes"] is None and before["cold_bytes"] is None
    storage = cloud.svc.list_storages(cloud.admin)[0]
    with cloud.svc.db.session() as s:  # a backup's restore point, then a retention run
        s.add(
            RestorePoint(
                org_id=cloud.admin.org_id,
                server_id=server,
                snapshot_id="ab" * 32,
                time=datetime(2026, 1, 1, tzinfo=UTC),
                paths=["/srv"],
                files=3,
                bytes=9000,
                bytes_added=3000,
            )
        )
        s.add(
            StorageTier(
                org_id=cloud.admin.org_id,
                storage_id=storage.id,
                warm_bytes=1000,
                cold_bytes=2000,
                cold_packs=1,
                measured=datetime(2026, 1, 2, tzinfo=UTC),
            )
        )
        row = s.get(Server, server)
        assert row is not None
        row.warm_bytes, row.cold_bytes = 400, 2000
    stats = api.get("/api/v1/stats").json()
    assert (stats["warm_bytes"], stats["cold_bytes"], stats["dedup_ratio"]) == (1000, 2000, 3.0)
    (mine,) = [x for x in stats["servers"] if x["id"] == server]
    assert (mine["warm_bytes"], mine["cold_bytes"], mine["dedup_ratio"]) == (400, 2000, 3.0)
    (where,) = stats["storages"]
    assert (where["warm_bytes"], where["cold_bytes"], where["dedup_ratio"]) == (1000, 2000, 3.0)
    assert where["tiers_measured"].startswith("2026-01-02")
