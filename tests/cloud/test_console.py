"""The console's security rules, on SQLite and PostgreSQL: session cookies, CSRF on every
change, roles as in the API, and pages that need a session send the browser to log in."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from rekindle.cloud.app import create_app
from tests.cloud.conftest import Cloud


@pytest.fixture
def browser(cloud: Cloud) -> Iterator[TestClient]:
    app = create_app(cloud.state, run_scheduler=False)
    with TestClient(app, base_url="https://cloud.test", follow_redirects=False) as client:
        yield client


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m is not None, html
    return m.group(1)


def _login(client: TestClient, email: str, password: str) -> str:
    form = client.get("/ui/login")
    r = client.post(
        "/ui/login", data={"email": email, "password": password, "csrf": _csrf(form.text)}
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    return _csrf(client.get("/ui/").text)


def test_pages_need_a_session_and_the_cookie_is_locked_down(
    browser: TestClient, cloud: Cloud
) -> None:
    for path in ("/ui/", "/ui/servers", "/ui/jobs", "/ui/jobs/1"):
        r = browser.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
    form = browser.get("/ui/login")
    bad = browser.post(
        "/ui/login",
        data={"email": "admin@acme.test", "password": "nope", "csrf": _csrf(form.text)},
    )
    assert bad.status_code == 401 and "wrong email or password" in bad.text
    # a login form posted without the token from its own page is not accepted
    forged = browser.post(
        "/ui/login", data={"email": "admin@acme.test", "password": cloud.password, "csrf": "x"}
    )
    assert "rk_session" not in forged.headers.get("set-cookie", "")
    form = browser.get("/ui/login")
    r = browser.post(
        "/ui/login",
        data={"email": "admin@acme.test", "password": cloud.password, "csrf": _csrf(form.text)},
    )
    cookie = r.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/ui"):
        assert flag in cookie, cookie
    assert browser.get("/ui/").status_code == 200


def test_every_change_needs_the_csrf_token(browser: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll()
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    csrf = _login(browser, "admin@acme.test", cloud.password)
    r = browser.post(f"/ui/servers/{server}/backup-now")
    assert r.status_code == 403 and "security token" in r.text
    r = browser.post(f"/ui/servers/{server}/backup-now", data={"csrf": "0" * 64})
    assert r.status_code == 403
    assert cloud.svc.list_jobs(cloud.admin) == []
    r = browser.post(f"/ui/servers/{server}/backup-now", data={"csrf": csrf})
    assert r.status_code == 303
    (job,) = cloud.svc.list_jobs(cloud.admin)
    assert r.headers["location"] == f"/ui/jobs/{job.id}"
    page = browser.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200 and "queued" in page.text
    # htmx sends the token as a header
    r = browser.post(f"/ui/jobs/{job.id}/cancel", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 303
    assert cloud.svc.get_job(cloud.admin, job.id)[0].state == "cancelled"
    r = browser.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert browser.get("/ui/").status_code == 303  # the session is gone on the server too


def test_a_read_only_admin_sees_but_cannot_act(browser: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll()
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    _id, password = cloud.svc.create_admin(cloud.admin, "ro@acme.test", "read_only", [])
    csrf = _login(browser, "ro@acme.test", password)
    page = browser.get("/ui/servers")
    assert page.status_code == 200 and "web1" in page.text
    r = browser.post(f"/ui/servers/{server}/backup-now", data={"csrf": csrf})
    assert r.status_code == 403 and "read-only" in r.text.lower()
    assert cloud.svc.list_jobs(cloud.admin) == []


def test_groups_activation_and_server_pages(browser: TestClient, cloud: Cloud) -> None:
    csrf = _login(browser, "admin@acme.test", cloud.password)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    r = browser.post("/ui/groups", data={"csrf": csrf, "name": "db", "policy": str(policy.id)})
    assert r.status_code == 303 and "created" in r.headers["location"]
    group = next(g for g in cloud.svc.list_groups(cloud.admin) if g.name == "db")
    assert group.policy_id == policy.id
    page = browser.get("/ui/groups")
    assert "db" in page.text and policy.name in page.text
    again = browser.post("/ui/groups", data={"csrf": csrf, "name": "db"})
    assert again.status_code == 409 and "exists" in again.text

    r = browser.post(
        f"/ui/groups/{group.id}/activation", data={"csrf": csrf, "hours": "2", "uses": "5"}
    )
    assert r.status_code == 200
    m = re.search(
        r"rekindle agent enroll --cloud https://cloud.test --ca-fingerprint (\S+) "
        r"--token (rka_\S+)</pre>",
        r.text,
    )
    assert m is not None, r.text
    assert "valid 2 hours, for 5 servers" in r.text
    r = browser.post(f"/ui/groups/{group.id}/activation", data={"csrf": csrf, "hours": "0"})
    assert r.status_code == 422

    server = cloud.enroll("db1", group.id)
    r = browser.post(
        f"/ui/servers/{server}/backup-sets",
        data={"csrf": csrf, "name": "data", "include": "/srv/db\n\n/etc\n", "exclude": "*.tmp"},
    )
    assert r.status_code == 303
    (bs,) = cloud.svc.list_backup_sets(cloud.admin, server)
    assert (bs.include, bs.exclude) == (["/srv/db", "/etc"], ["*.tmp"])
    bad = browser.post(
        f"/ui/servers/{server}/backup-sets",
        data={"csrf": csrf, "name": "rel", "include": "relative/path"},
    )
    assert bad.status_code == 422 and "absolute" in bad.text
    page = browser.get(f"/ui/servers/{server}")
    assert page.status_code == 200 and "/srv/db" in page.text and "db1" in page.text
    r = browser.post(f"/ui/servers/{server}/enabled", data={"csrf": csrf, "enabled": "false"})
    assert r.status_code == 303
    assert not cloud.svc.get_server(cloud.admin, server).enabled
    assert browser.get("/ui/servers/99999").status_code == 404


def _policy_form(csrf: str, **over: object) -> dict[str, object]:
    form: dict[str, object] = {
        "csrf": csrf,
        "name": "nightly",
        "day": ["mon", "tue", "wed", "thu", "fri"],
        "start_time": "22:00",
        "window_hours": "8",
        "max_retries": "2",
        "retry_interval_min": "30",
        "bandwidth_mib_s": "0",
        "cold_after_days": "90",
        "within_days": "60",
        "weekly": "24",
        "monthly": "12",
        "yearly": "3",
    }
    form.update(over)
    return form


def test_policies_are_created_edited_and_previewed(browser: TestClient, cloud: Cloud) -> None:
    csrf = _login(browser, "admin@acme.test", cloud.password)
    r = browser.post("/ui/policies/preview", data=_policy_form(csrf))
    assert r.text == (
        "Runs Mon-Fri at 22:00 UTC for up to 8 hours; a failed backup is tried again up to "
        "twice, 30 minutes apart; no bandwidth cap; keeps every restore point for 60 days, "
        "then one a week for 24 weeks, one a month for 12 months and one a year for 3 years; "
        "moves restore points to archive storage after 90 days."
    )
    r = browser.post("/ui/policies/preview", data=_policy_form(csrf, start_time="25:00"))
    assert 'class="error"' in r.text and "HH:MM" in r.text
    r = browser.post("/ui/policies", data=_policy_form(csrf))
    assert r.status_code == 303
    row = next(p for p in cloud.svc.list_policies(cloud.admin) if p.name == "nightly")
    assert (row.days, row.start_time, row.window_hours) == ("mon,tue,wed,thu,fri", "22:00", 8)
    assert row.retention == {"within_days": 60, "weekly": 24, "monthly": 12, "yearly": 3}
    page = browser.get(f"/ui/policies/{row.id}")
    assert page.status_code == 200 and "Runs Mon-Fri at 22:00 UTC" in page.text
    r = browser.post(
        f"/ui/policies/{row.id}",
        data=_policy_form(csrf, day=["sat", "sun"], bandwidth_mib_s="5", window_hours="0"),
    )
    assert r.status_code == 303
    row = next(p for p in cloud.svc.list_policies(cloud.admin) if p.name == "nightly")
    assert (row.days, row.bandwidth_kib, row.window_hours) == ("sat,sun", 5120, 0)
    assert "Runs Sat, Sun at 22:00 UTC until done" in browser.get("/ui/policies").text
    for bad, why in (
        ({"day": []}, "at least one day"),
        ({"window_hours": "200"}, "at most 168"),
        ({"max_retries": "two"}, "not a whole number"),
        ({"name": "nightly"}, "a backup policy named &#39;nightly&#39; exists"),
    ):
        r = browser.post("/ui/policies", data=_policy_form(csrf, **{"name": "other", **bad}))
        assert r.status_code in (409, 422) and why in r.text, (bad, r.text)


def test_events_audit_and_administrators(browser: TestClient, cloud: Cloud) -> None:
    csrf = _login(browser, "admin@acme.test", cloud.password)
    server = cloud.enroll("ev1")
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    cloud.svc.backup_now(cloud.admin, server, None)  # offline: queued, with an event
    page = browser.get("/ui/events")
    assert page.status_code == 200 and "job.queued" in page.text and "ev1" in page.text
    r = browser.post(
        "/ui/admins", data={"csrf": csrf, "email": "ops@acme.test", "role": "read_only"}
    )
    assert r.status_code == 200
    m = re.search(r'id="new-password">([^<]+)</pre>', r.text)
    assert m is not None
    # the new admin can log in with the password shown once
    other = TestClient(browser.app, base_url="https://cloud.test", follow_redirects=False)
    _login(other, "ops@acme.test", m.group(1))
    assert "ops@acme.test" in browser.get("/ui/admins").text
    audit = browser.get("/ui/audit").text
    assert "admin.create" in audit and "ops@acme.test" in audit and "login" in audit
    r = browser.post("/ui/admins", data={"csrf": csrf, "email": "x@acme.test", "role": "god"})
    assert r.status_code == 422


def test_the_dashboard_charts_data_per_day_and_storage_growth(
    browser: TestClient, cloud: Cloud
) -> None:
    from rekindle.net import protocol as p

    server = cloud.enroll("charted")
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    for day, (scanned, added) in enumerate([(1000, 1000), (1000, 100), (0, 0), (3000, 400)]):
        if scanned:
            cloud.backup_reported(
                server,
                p.JobResult(
                    state="succeeded",
                    snapshot_id=f"{day:02d}" * 32,
                    files=1,
                    bytes=scanned,
                    bytes_added=added,
                ),
            )
        cloud.clock.advance(86400)
    _login(browser, "admin@acme.test", cloud.password)
    page = browser.get("/ui/").text
    bars = re.findall(r"<rect [^>]*class=\"bar\"><title>([^<]+)</title>", page)
    assert bars == [
        "2026-03-02: 1000 B",
        "2026-03-03: 1000 B",
        "2026-03-04: 0 B",
        "2026-03-05: 2.9 KiB",
    ]
    growth = re.findall(r"class=\"dot\"><title>([^<]+)</title>", page)
    assert growth == [
        "2026-03-02: 1000 B",
        "2026-03-03: 1.1 KiB",
        "2026-03-04: 1.1 KiB",
        "2026-03-05: 1.5 KiB",
    ]
    assert "3.3x" in page  # 5000 bytes backed up, 1500 stored


def test_a_disabled_server_is_removed_from_its_page(browser: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll("gone1")
    csrf = _login(browser, "admin@acme.test", cloud.password)
    assert "Remove this server" not in browser.get(f"/ui/servers/{server}").text
    r = browser.post(f"/ui/servers/{server}/remove", data={"csrf": csrf})
    assert r.status_code == 409 and "before removing it" in r.text
    browser.post(f"/ui/servers/{server}/enabled", data={"csrf": csrf, "enabled": "false"})
    assert "Remove this server" in browser.get(f"/ui/servers/{server}").text
    r = browser.post(f"/ui/servers/{server}/remove", data={"csrf": csrf})
    assert r.status_code == 303 and "removed" in r.headers["location"]
    assert browser.get(f"/ui/servers/{server}").status_code == 404


def test_the_running_panel_shows_running_jobs_only(browser: TestClient, cloud: Cloud) -> None:
    server = cloud.enroll("busy1")
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    _login(browser, "admin@acme.test", cloud.password)
    job = cloud.svc.backup_now(cloud.admin, server, None)
    assert "No job is running" in browser.get("/ui/running").text  # queued is not running
    cloud.connect(server)
    assert cloud.svc.claim_job(server) is not None
    panel = browser.get("/ui/running").text
    assert f"Job {job.id}</a>: backup on server {server}" in panel


def test_a_backup_set_is_edited_and_removed_on_its_server_page(
    browser: TestClient, cloud: Cloud
) -> None:
    server = cloud.enroll("sets1")
    bs = cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], ["*.tmp"])
    csrf = _login(browser, "admin@acme.test", cloud.password)
    page = browser.get(f"/ui/servers/{server}").text
    assert f'id="bs-include-{bs.id}"' in page and "*.tmp</textarea>" in page
    url = f"/ui/servers/{server}/backup-sets/{bs.id}"
    r = browser.post(url, data={"csrf": csrf, "name": "files", "include": "srv"})
    assert r.status_code == 422 and "must be absolute" in r.text
    r = browser.post(
        url, data={"csrf": csrf, "name": "all files", "include": "/srv\n/home\n", "exclude": ""}
    )
    assert r.status_code == 303 and "saved" in r.headers["location"]
    (row,) = cloud.svc.list_backup_sets(cloud.admin, server)
    assert (row.name, row.include, row.exclude) == ("all files", ["/srv", "/home"], [])
    r = browser.post(f"{url}/remove", data={"csrf": csrf})
    assert r.status_code == 303
    assert cloud.svc.list_backup_sets(cloud.admin, server) == []
    assert "None yet" in browser.get(f"/ui/servers/{server}").text


def test_a_policy_is_removed_once_no_group_follows_it(browser: TestClient, cloud: Cloud) -> None:
    policy = cloud.svc.create_policy(cloud.admin, "weekends", days="sat,sun")
    group = cloud.svc.create_group(cloud.admin, "lab", policy.id, None)
    csrf = _login(browser, "admin@acme.test", cloud.password)
    page = browser.get(f"/ui/policies/{policy.id}").text
    assert "Server groups lab follow it" in page and "Remove policy" not in page
    r = browser.post(f"/ui/policies/{policy.id}/remove", data={"csrf": csrf})
    assert r.status_code == 409 and "used by server group(s) lab" in r.text
    groups = browser.get("/ui/groups").text
    assert f'<option value="{policy.id}" selected>weekends</option>' in groups
    r = browser.post(f"/ui/groups/{group.id}/policy", data={"csrf": csrf, "policy": ""})
    assert r.status_code == 303
    assert cloud.svc.list_groups(cloud.admin)[-1].policy_id is None
    assert "Remove policy weekends" in browser.get(f"/ui/policies/{policy.id}").text
    r = browser.post(f"/ui/policies/{policy.id}/remove", data={"csrf": csrf})
    assert r.status_code == 303
    assert "weekends" not in [x.name for x in cloud.svc.list_policies(cloud.admin)]


def test_alerts_are_counted_filtered_and_acknowledged(browser: TestClient, cloud: Cloud) -> None:
    from rekindle.net import protocol as p

    failing = cloud.enroll("failing")
    fine = cloud.enroll("fine")
    for server in (failing, fine):
        cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    first = cloud.backup_reported(failing, p.JobResult(state="failed", error="disk gone"))
    cloud.backup_reported(fine, p.JobResult(state="succeeded", snapshot_id="aa" * 32))
    second = cloud.backup_reported(failing, p.JobResult(state="failed", error="disk still gone"))
    csrf = _login(browser, "admin@acme.test", cloud.password)
    dashboard = browser.get("/ui/").text
    assert 'aria-label="2 open">2</span>' in dashboard  # the menu's badge
    assert '<span class="big">2</span> open alerts' in dashboard
    alerts = browser.get("/ui/alerts").text
    assert alerts.count('name="event"') == 2 and "disk still gone" in alerts
    # the event list filters by severity and by server
    errors = browser.get("/ui/events", params={"severity": "error"}).text
    assert f'href="/ui/jobs/{first}"' in errors and "fine" not in errors.split("<table>")[1]
    only_fine = browser.get("/ui/events", params={"server": str(fine)}).text
    assert "disk gone" not in only_fine and "succeeded" in only_fine
    assert browser.get("/ui/events", params={"severity": "loud"}).status_code == 422
    r = browser.post("/ui/alerts/acknowledge", data={"csrf": csrf})
    assert r.status_code == 422 and "tick the alerts" in r.text
    (open_first,) = [
        e.id for e in cloud.svc.list_events(cloud.admin, alerts=True) if e.job_id == first
    ]
    r = browser.post("/ui/alerts/acknowledge", data={"csrf": csrf, "event": str(open_first)})
    assert r.status_code == 303 and "1+alert" in r.headers["location"]
    assert [e.job_id for e in cloud.svc.list_events(cloud.admin, alerts=True)] == [second]
    r = browser.post("/ui/alerts/acknowledge", data={"csrf": csrf, "all": "1"})
    assert r.status_code == 303
    assert "No open alerts." in browser.get("/ui/alerts").text
    assert 'class="badge"' not in browser.get("/ui/").text


def test_the_restore_timeline_links_each_restore_point(browser: TestClient, cloud: Cloud) -> None:
    from rekindle.net import protocol as p

    server = cloud.enroll("timeline")
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    cloud.backup_reported(server, p.JobResult(state="succeeded", snapshot_id="01" * 32, files=3))
    cloud.clock.advance(2 * 86400)
    cloud.backup_reported(
        server, p.JobResult(state="partial", snapshot_id="02" * 32, files=2, bytes=2048)
    )
    _login(browser, "admin@acme.test", cloud.password)
    page = browser.get("/ui/restore", params={"server": str(server)}).text
    old, new = cloud.svc.list_restore_points(cloud.admin, server)[::-1]
    dots = re.findall(r'<a href="([^"]+)"><circle cx="([\d.]+)"[^>]*class="([^"]+)"', page)
    assert [(h, c) for h, _x, c in dots] == [
        (f"/ui/restore/{old.id}/browse", "dot"),
        (f"/ui/restore/{new.id}/browse", "dot partial"),
    ]
    assert float(dots[0][1]) < float(dots[1][1])  # older to the left
    assert "2 files, 2.0 KiB (some files were missed)</title>" in page


def test_an_administrator_is_changed_on_the_admins_page(browser: TestClient, cloud: Cloud) -> None:
    admin_id, _pw = cloud.svc.create_admin(cloud.admin, "ro@acme.test", "read_only", [])
    group = cloud.svc.list_groups(cloud.admin)[0]
    csrf = _login(browser, "admin@acme.test", cloud.password)
    page = browser.get("/ui/admins").text
    assert f'action="/ui/admins/{admin_id}"' in page
    r = browser.post(
        f"/ui/admins/{admin_id}",
        data={"csrf": csrf, "role": "group_admin", "group": str(group.id), "disabled": "1"},
    )
    assert r.status_code == 303 and "ro%40acme.test+saved" in r.headers["location"]
    row = next(a for a in cloud.svc.list_admins(cloud.admin) if a.id == admin_id)
    assert (row.role, row.group_ids, row.disabled) == ("group_admin", [str(group.id)], True)
    assert "(disabled)" in browser.get("/ui/admins").text
    r = browser.post(f"/ui/admins/{cloud.admin.admin_id}", data={"csrf": csrf, "role": "read_only"})
    assert r.status_code == 409 and "last enabled organization admin" in r.text


def test_a_shorter_retention_shows_what_goes_and_needs_a_tick(
    browser: TestClient, cloud: Cloud
) -> None:
    from rekindle.net import protocol as p

    server = cloud.enroll("retained")
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    for day in range(5):
        cloud.backup_reported(
            server, p.JobResult(state="succeeded", snapshot_id=f"{day:02d}" * 32, files=day)
        )
        cloud.clock.advance(86400)
    policy = cloud.svc.list_policies(cloud.admin)[0]  # the default group's
    csrf = _login(browser, "admin@acme.test", cloud.password)
    page = browser.get(f"/ui/policies/{policy.id}").text
    assert f'name="policy_id" value="{policy.id}"' in page
    shorter = _policy_form(
        csrf, name=policy.name, policy_id=str(policy.id), within_days="2", weekly="0"
    )
    shorter.update(monthly="0", yearly="0")
    preview = browser.post("/ui/policies/preview", data=shorter).text
    assert "keeps every restore point for 2 days" in preview
    assert "Saving removes 2 restore points" in preview  # days 0 and 1 of 0..4
    assert preview.count("<li>h: ") == 2 and 'name="confirm_removal"' in preview
    same = browser.post(
        "/ui/policies/preview", data={**shorter, "within_days": "60", "weekly": "24"}
    ).text
    assert "Saving removes" not in same
    r = browser.post(f"/ui/policies/{policy.id}", data=shorter)
    assert r.status_code == 409 and "removes 2 restore point(s)" in r.text
    r = browser.post(f"/ui/policies/{policy.id}", data={**shorter, "confirm_removal": "1"})
    assert r.status_code == 303 and "Retention+runs+now" in r.headers["location"]
    page = browser.get("/ui/retention").text
    assert page.count("<td>h</td>") == 2  # what the queued run removes
    assert '<span class="state queued">queued</span>' in page and "<td>policy</td>" in page
    r = browser.post("/ui/retention/run", data={"csrf": csrf})
    assert r.status_code == 303  # one queued run per storage: nothing new
    assert len(cloud.state.maintenance.list_runs(cloud.admin)) == 1


def test_email_settings_on_the_alerts_page(browser: TestClient, cloud: Cloud) -> None:
    csrf = _login(browser, "admin@acme.test", cloud.password)
    page = browser.get("/ui/alerts").text
    assert "No SMTP server is configured" in page
    r = browser.post(
        "/ui/alerts/notifications",
        data={"csrf": csrf, "recipients": "ops@acme.test\noncall@acme.test", "offline_hours": "6"},
    )
    assert r.status_code == 303
    assert cloud.svc.notification_settings(cloud.admin) == (
        ["oncall@acme.test", "ops@acme.test"],
        ["oncall@acme.test", "ops@acme.test"],
        6,
    )
    r = browser.post(
        "/ui/alerts/notifications", data={"csrf": csrf, "recipients": "nope", "offline_hours": "6"}
    )
    assert r.status_code == 422 and "not an email address" in r.text
    cloud.svc.email = True
    page = browser.get("/ui/alerts").text
    assert "Mailed to oncall@acme.test, ops@acme.test" in page and "6 hours" in page


def test_the_dashboard_shows_each_storage_as_last_measured(
    browser: TestClient, cloud: Cloud
) -> None:
    from rekindle.cloud.models import StorageTier

    _login(browser, "admin@acme.test", cloud.password)
    storage = cloud.svc.list_storages(cloud.admin)[0]
    assert "not yet" in browser.get("/ui/").text
    raised = cloud.state.maintenance._record_usage(storage.id, [cloud.admin.org_id], 850, 1000)
    assert raised == 1
    page = browser.get("/ui/").text
    assert 'value="85.0"' in page and "85.0 %" in page and "1000 B" in page
    assert "which has not run yet" in page
    with cloud.svc.db.session() as s:  # as a retention run measures it
        s.add(
            StorageTier(
                org_id=cloud.admin.org_id,
                storage_id=storage.id,
                warm_bytes=3000,
                cold_bytes=7000,
                cold_packs=2,
                measured=cloud.svc.now(),
            )
        )
    page = browser.get("/ui/").text
    assert "Warm: 2.9 KiB; cold (archive tier): 6.8 KiB" in page


def test_a_restore_waiting_for_its_defreeze_shows_it(browser: TestClient, cloud: Cloud) -> None:
    from rekindle.cloud.models import Job

    job_id = cloud.defreezing_restore(cloud.enroll("cold1"), packs=3)
    with cloud.svc.db.session() as s:
        s.get(Job, job_id).progress = {"thawed": 1, "to_thaw": 3}  # type: ignore[union-attr]
    csrf = _login(browser, "admin@acme.test", cloud.password)
    page = browser.get(f"/ui/jobs/{job_id}").text
    assert "1 of 3 packs back from archive storage" in page and ">Cancel<" in page
    r = browser.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert r.status_code == 303
    assert "cancelled" in browser.get(f"/ui/jobs/{job_id}").text
