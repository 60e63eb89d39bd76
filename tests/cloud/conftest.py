"""A cloud on a real database (SQLite or PostgreSQL), with a fake clock."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rekindle.cloud.app import CloudState, create_app, prepare
from rekindle.cloud.services import Actor, CloudServices
from rekindle.cloud.settings import CloudSettings
from rekindle.core.clock import FakeClock
from rekindle.net import pki
from rekindle.net import protocol as p

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday


@dataclass
class Cloud:
    state: CloudState
    svc: CloudServices
    clock: FakeClock
    admin: Actor
    password: str

    def enroll(self, hostname: str = "web1", group_id: int | None = None) -> int:
        group = group_id or self.svc.list_groups(self.admin)[0].id
        token = self.svc.create_activation_token(self.admin, group)
        key = pki.new_key()
        res = self.svc.enroll(
            p.EnrollRequest(
                token=token,
                hostname=hostname,
                os="Linux 6.1",
                csr_pem=pki.make_csr(key, hostname).decode(),
            )
        )
        return res.server_id

    def backup_reported(self, server_id: int, result: p.JobResult) -> int:
        """Backup Now of the server's backup set; its agent takes the job and reports `result`.
        Returns the job id."""
        self.svc.backup_now(self.admin, server_id, None)
        self.connect(server_id)
        job = self.svc.claim_job(server_id)
        assert job is not None
        self.svc.finish_job(server_id, job.job_id, result)
        return job.job_id

    def defreezing_restore(self, server_id: int, packs: int = 2, **params: object) -> int:
        """A restore job waiting for its defreeze (as start_restore leaves a cold one)."""
        from rekindle.cloud.models import Job

        with self.svc.db.session() as s:
            job = Job(
                org_id=self.admin.org_id,
                server_id=server_id,
                kind="restore",
                state="defreezing",
                trigger="manual",
                params={
                    "storage_url": "https://node.invalid",
                    "archived": [f"data/{i:02x}/{i:02x}" + "a" * 62 for i in range(packs)],
                    **params,
                },
                progress={},
                created=self.clock.now(),
            )
            s.add(job)
            s.flush()
            return job.id

    def connect(self, server_id: int, running_job: int | None = None) -> None:
        self.svc.heartbeat(
            server_id,
            p.Heartbeat(version="t", os="Linux 6.1", hostname="h", running_job=running_job),
        )


@pytest.fixture
def cloud(database_url: str, tmp_path: Path) -> Iterator[Cloud]:
    clock = FakeClock(START)
    settings = CloudSettings(data_dir=tmp_path / "cloud", database_url=database_url)
    state = prepare(settings, clock=clock)
    svc = state.services
    _org, password = svc.create_organization("acme", "admin@acme.test", "correct horse")
    admin = svc.list_admins_by_email("admin@acme.test")
    yield Cloud(state, svc, clock, Actor(admin.id, admin.org_id, admin.role), password)
    # A connection still referenced only by garbage (a traceback's frames, say) goes back to
    # the pool first, so that disposing the engine closes it rather than leaving it to a
    # finalizer in some later test.
    gc.collect()
    svc.db.close()


@pytest.fixture
def api(cloud: Cloud) -> Iterator[TestClient]:
    app = create_app(cloud.state, run_scheduler=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        token = client.post(
            "/api/v1/login", json={"email": "admin@acme.test", "password": "correct horse"}
        ).json()["token"]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client
