"""Job rules of the product we model, on SQLite and PostgreSQL, with an injected clock:
a schedule fires once; scheduled backups of offline agents are skipped, Backup Now is queued;
a job cut short by an agent restart is aborted; failed backups are retried per policy."""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from rekindle.core.errors import UsageError
from rekindle.net import protocol as p
from rekindle.net import tokens
from tests.cloud.conftest import Cloud


def _backup_set(cloud: Cloud, server_id: int) -> int:
    return cloud.svc.create_backup_set(cloud.admin, server_id, "files", ["/srv"], []).id


def _events(cloud: Cloud) -> list[str]:
    return [e.kind for e in cloud.svc.list_events(cloud.admin)]


def test_schedule_fires_once_queues_connected_and_skips_offline(cloud: Cloud) -> None:
    online, offline = cloud.enroll("online"), cloud.enroll("offline")
    _backup_set(cloud, online)
    _backup_set(cloud, offline)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    cloud.svc.update_policy(
        cloud.admin, policy.id, days="daily", start_time="12:30", window_hours=2
    )
    cloud.connect(online)
    assert cloud.svc.fire_due_schedules() == 0  # 12:00, not due yet
    cloud.clock.advance(31 * 60)
    cloud.connect(online)
    assert cloud.svc.fire_due_schedules() == 1
    assert cloud.svc.fire_due_schedules() == 0  # moved to tomorrow: fires once
    jobs = {j.server_id: j for j in cloud.svc.list_jobs(cloud.admin)}
    assert jobs[online].state == "queued"
    assert jobs[online].trigger == "scheduled"
    assert jobs[online].window_end == datetime(2026, 3, 2, 14, 30, tzinfo=UTC)  # 12:30 + 2 h
    assert jobs[offline].state == "skipped"
    assert "not connected" in (jobs[offline].error or "")
    assert "job.skipped" in _events(cloud)
    nxt = cloud.svc.list_policies(cloud.admin)[0].next_run
    assert nxt is not None and nxt.day == 3 and nxt.hour == 12 and nxt.minute == 30


def test_backup_now_offline_is_queued_and_runs_when_the_agent_connects(cloud: Cloud) -> None:
    server = cloud.enroll()
    bs = _backup_set(cloud, server)
    job = cloud.svc.backup_now(cloud.admin, server, None)
    assert job.state == "queued"
    assert "job.queued" in _events(cloud)
    cloud.clock.advance(3600)  # hours later the agent comes back
    cloud.connect(server)
    got = cloud.svc.claim_job(server)
    assert got is not None and got.job_id == job.id and got.kind == "backup"
    assert got.backup is not None and got.backup.include == ["/srv"]
    assert got.backup.backup_set_id == bs
    claims = tokens.verify(
        tokens.load_public(cloud.state.token_public.read_bytes()),
        got.storage_token,
        now=cloud.clock.now().timestamp(),
    )
    assert (claims.org, claims.server, claims.job, claims.access) == (
        cloud.admin.org_id,
        server,
        job.id,
        "backup",
    )
    assert len(base64.b64decode(got.repo_key)) == 32
    assert cloud.svc.claim_job(server) is None  # claimed once


def test_a_job_cut_short_by_an_agent_restart_is_aborted(cloud: Cloud) -> None:
    server = cloud.enroll()
    _backup_set(cloud, server)
    job = cloud.svc.backup_now(cloud.admin, server, None)
    cloud.connect(server)
    assert cloud.svc.claim_job(server) is not None
    cloud.connect(server, running_job=job.id)  # still working on it: fine
    assert cloud.svc.get_job(cloud.admin, job.id)[0].state == "running"
    cloud.connect(server, running_job=None)  # restarted: the job is gone
    assert cloud.svc.get_job(cloud.admin, job.id)[0].state == "aborted"
    assert "job.aborted" in _events(cloud)


def test_failed_backup_is_retried_per_policy_then_given_up(cloud: Cloud) -> None:
    server = cloud.enroll()
    _backup_set(cloud, server)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    cloud.svc.update_policy(cloud.admin, policy.id, max_retries=1, retry_interval_min=10)
    cloud.svc.backup_now(cloud.admin, server, None)
    cloud.connect(server)
    first = cloud.svc.claim_job(server)
    assert first is not None
    cloud.svc.finish_job(server, first.job_id, p.JobResult(state="failed", error="disk gone"))
    assert cloud.svc.claim_job(server) is None  # the retry waits for its interval
    cloud.clock.advance(10 * 60 + 1)
    retry = cloud.svc.claim_job(server)
    assert retry is not None and retry.job_id != first.job_id
    cloud.svc.finish_job(server, retry.job_id, p.JobResult(state="failed", error="disk gone"))
    cloud.clock.advance(3600)
    assert cloud.svc.claim_job(server) is None
    assert "job.gave_up" in _events(cloud)


def test_missed_files_are_recorded_with_the_job(cloud: Cloud) -> None:
    server = cloud.enroll()
    _backup_set(cloud, server)
    job_id = cloud.backup_reported(
        server,
        p.JobResult(
            state="partial",
            snapshot_id="ab" * 32,
            files=10,
            bytes=100,
            missed=[p.MissedFile(path="/srv/locked.db", reason="Permission denied")],
        ),
    )
    row, missed = cloud.svc.get_job(cloud.admin, job_id)
    assert row.state == "partial"
    assert [(m.path, m.reason) for m in missed] == [("/srv/locked.db", "Permission denied")]
    (rp,) = cloud.svc.list_restore_points(cloud.admin, server)
    assert rp.snapshot_id == "ab" * 32 and rp.partial


def test_restore_to_another_os_family_is_refused(cloud: Cloud) -> None:
    linux = cloud.enroll("lin")
    _backup_set(cloud, linux)
    cloud.backup_reported(linux, p.JobResult(state="succeeded", snapshot_id="cd" * 32))
    windows = cloud.enroll("win")
    cloud.svc.heartbeat(windows, p.Heartbeat(version="t", os="Windows 11", hostname="win"))
    (rp,) = cloud.svc.list_restore_points(cloud.admin, linux)
    from rekindle.cloud.services import ConflictError

    with pytest.raises(ConflictError, match="same OS family"):
        cloud.svc.start_restore(
            cloud.admin,
            rp.id,
            target_server_id=windows,
            target_path="/x",
            include=[],
            existing="skip",
        )


WORKER = """
import sys
from datetime import datetime, UTC
from pathlib import Path
from rekindle.cloud.app import prepare
from rekindle.cloud.settings import CloudSettings
from rekindle.core.clock import FakeClock
clock = FakeClock(datetime.fromisoformat(sys.argv[3]))
state = prepare(CloudSettings(data_dir=Path(sys.argv[2]), database_url=sys.argv[1]), clock=clock)
fired = 0
for _ in range(40):
    fired += state.services.fire_due_schedules()
print(fired)
"""


def test_two_cloud_processes_fire_a_schedule_exactly_once(cloud: Cloud, database_url: str) -> None:
    servers = [cloud.enroll(f"s{i}") for i in range(3)]
    for s in servers:
        _backup_set(cloud, s)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    cloud.svc.update_policy(cloud.admin, policy.id, days="daily", start_time="12:30")
    # Both processes look at 12:31, when the schedule is due (the agents are long gone by
    # then, so the jobs are recorded as skipped: what counts here is how many exist).
    at = (cloud.clock.now() + timedelta(minutes=31)).isoformat()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, database_url, str(cloud.state.settings.data_dir), at],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    counts = [int((proc.communicate(timeout=120)[0]).strip()) for proc in procs]
    assert sorted(counts) == [0, 1]  # one process fired it, the other saw nothing due
    jobs = cloud.svc.list_jobs(cloud.admin)
    assert len(jobs) == len(servers)  # one backup job per server, not two


def test_the_queue_watcher_sees_jobs_of_other_processes_and_ended_retry_delays(
    cloud: Cloud,
) -> None:
    a, b = cloud.enroll("a"), cloud.enroll("b")
    _backup_set(cloud, a)
    _backup_set(cloud, b)
    newest, servers = cloud.svc.runnable_since(0, cloud.clock.now())
    assert servers == set()
    job = cloud.svc.backup_now(cloud.admin, a, None)  # as if by another cloud process
    newest2, servers = cloud.svc.runnable_since(newest, cloud.clock.now())
    assert servers == {a} and newest2 == job.id
    # a retry whose delay ends later is announced when it ends, not before
    cloud.connect(a)
    claimed = cloud.svc.claim_job(a)
    assert claimed is not None
    cloud.svc.finish_job(a, claimed.job_id, p.JobResult(state="failed", error="x"))
    since = cloud.clock.now()
    last, servers = cloud.svc.runnable_since(2**31 - 1, since)
    assert servers == set()
    cloud.clock.advance(31 * 60)
    _, servers = cloud.svc.runnable_since(last, since)
    assert servers == {a}


def test_an_activation_token_enrolls_only_as_many_servers_as_it_allows(cloud: Cloud) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from rekindle.cloud.security import AuthError
    from rekindle.net import pki

    group = cloud.svc.list_groups(cloud.admin)[0].id
    token = cloud.svc.create_activation_token(cloud.admin, group, uses=3)

    def attempt(i: int) -> bool:
        req = p.EnrollRequest(
            token=token,
            hostname=f"h{i}",
            os="Linux",
            csr_pem=pki.make_csr(pki.new_key(), f"h{i}").decode(),
        )
        try:
            cloud.svc.enroll(req)
        except AuthError:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(12)))
    assert sum(results) == 3
    assert len(cloud.svc.list_servers(cloud.admin)) == 3


def test_a_scheduled_job_not_taken_before_its_window_closed_is_skipped(cloud: Cloud) -> None:
    server = cloud.enroll()
    _backup_set(cloud, server)
    policy = cloud.svc.list_policies(cloud.admin)[0]
    cloud.svc.update_policy(cloud.admin, policy.id, start_time="12:30", window_hours=1)
    cloud.clock.advance(31 * 60)
    cloud.connect(server)
    assert cloud.svc.fire_due_schedules() == 1
    cloud.clock.advance(2 * 3600)  # the agent was busy or slow: the window has closed
    cloud.connect(server)
    assert cloud.svc.claim_job(server) is None
    (job,) = cloud.svc.list_jobs(cloud.admin)
    assert job.state == "skipped"
    assert "window closed" in (job.error or "")


def test_a_group_on_another_storage_sends_its_agents_there(cloud: Cloud) -> None:
    from rekindle.cloud.services import ConflictError

    site_b = cloud.svc.add_storage("site-b", "https://node-b.example:8444/")
    with pytest.raises(ConflictError):
        cloud.svc.add_storage("site-b", "https://other:8444")
    with pytest.raises(UsageError):
        cloud.svc.add_storage("plain", "http://node-c:8444")
    assert [s.name for s in cloud.svc.list_storages(cloud.admin)] == ["default", "site-b"]
    group = cloud.svc.create_group(cloud.admin, "branch", None, site_b.id)
    server = cloud.enroll("branch1", group.id)
    _backup_set(cloud, server)
    cloud.svc.backup_now(cloud.admin, server, None)
    cloud.connect(server)
    job = cloud.svc.claim_job(server)
    assert job is not None and job.storage_url == "https://node-b.example:8444"


def test_a_server_is_removed_only_once_disabled_and_its_catalog_goes(cloud: Cloud) -> None:
    from rekindle.cloud.services import ConflictError, NotFoundError

    server = cloud.enroll("old1")
    keep = cloud.enroll("keep1")
    _backup_set(cloud, server)
    _backup_set(cloud, keep)
    cloud.backup_reported(
        server,
        p.JobResult(
            state="partial",
            snapshot_id="ef" * 32,
            missed=[p.MissedFile(path="/srv/x", reason="Permission denied")],
        ),
    )
    cloud.backup_reported(keep, p.JobResult(state="succeeded", snapshot_id="fe" * 32))
    with pytest.raises(ConflictError, match="before removing it"):
        cloud.svc.remove_server(cloud.admin, server)
    cloud.svc.backup_now(cloud.admin, server, None)
    cloud.connect(server)
    running = cloud.svc.claim_job(server)
    assert running is not None
    cloud.svc.set_server_enabled(cloud.admin, server, False)
    with pytest.raises(ConflictError, match="running a job"):
        cloud.svc.remove_server(cloud.admin, server)
    cloud.svc.finish_job(server, running.job_id, p.JobResult(state="failed", error="t"))
    fingerprint = cloud.svc.get_server(cloud.admin, server).cert_fingerprint
    cloud.svc.remove_server(cloud.admin, server)
    with pytest.raises(NotFoundError):
        cloud.svc.get_server(cloud.admin, server)
    assert [rp.server_id for rp in cloud.svc.list_restore_points(cloud.admin)] == [keep]
    assert {j.server_id for j in cloud.svc.list_jobs(cloud.admin)} == {keep}
    kinds = [e.kind for e in cloud.svc.list_events(cloud.admin)]
    assert "server.removed" in kinds and "job.partial" in kinds  # events keep their text
    # its agent's certificate no longer names a server
    from rekindle.cloud.security import AuthError

    with pytest.raises(AuthError, match="no enrolled server"):
        cloud.svc.agent_server(fingerprint)
