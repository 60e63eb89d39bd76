"""HTTP routes of the cloud: /api/v1 for admins (bearer tokens), /agent/v1 for agents
(enrollment with an activation token, then mutual TLS). Routes translate HTTP to
`CloudServices` calls and errors to status codes; they hold no logic of their own."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DataError, IntegrityError
from starlette.concurrency import run_in_threadpool

from rekindle.cloud import schemas as sc
from rekindle.cloud.catalog import PlanningError
from rekindle.cloud.maintenance import Maintenance
from rekindle.cloud.security import AuthError, ForbiddenError
from rekindle.cloud.services import Actor, CloudServices, ConflictError, NotFoundError
from rekindle.core.errors import RekindleError, UsageError
from rekindle.net import protocol as p
from rekindle.net.pki import fingerprint_der
from rekindle.net.tlsserver import client_cert_der

_bearer = HTTPBearer(auto_error=False)


#: HTTP status of each refusal the services raise (the console shows the same on its pages).
ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (ForbiddenError, 403),
    (AuthError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (UsageError, 422),
    (PlanningError, 503),  # the storage node is unreachable or the data cannot be read
]


def status_of(exc: Exception) -> int:
    """The status for a service's refusal: 400 for any other RekindleError."""
    return next((status for cls, status in ERROR_STATUS if isinstance(exc, cls)), 400)


def install_error_handlers(app: FastAPI) -> None:
    for cls, status in ERROR_STATUS:

        def handler(_req: Request, exc: Exception, status: int = status) -> JSONResponse:
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

        app.add_exception_handler(cls, handler)

    def other(_req: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def out_of_range(_req: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "a number in the request is out of range"}, 422)

    def duplicate(_req: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "this conflicts with an existing object"}, 409)

    app.add_exception_handler(RekindleError, other)
    # Ids beyond what the database stores, and unique names created twice at the same time.
    app.add_exception_handler(OverflowError, out_of_range)
    app.add_exception_handler(DataError, out_of_range)
    app.add_exception_handler(IntegrityError, duplicate)


def services(request: Request) -> CloudServices:
    svc: CloudServices = request.app.state.services
    return svc


Svc = Annotated[CloudServices, Depends(services)]


def _maintenance(request: Request) -> Maintenance:
    m: Maintenance = request.app.state.maintenance
    return m


async def current_admin(
    svc: Svc, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Actor:
    if creds is None:
        raise AuthError("log in first: send 'Authorization: Bearer TOKEN'")
    return await run_in_threadpool(svc.authenticate, creds.credentials)


Me = Annotated[Actor, Depends(current_admin)]
Limit = Annotated[int, Query(ge=1, le=1000, description="How many rows, newest first.")]


def admin_router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["admin"])

    @r.post("/login", response_model=sc.TokenOut)
    async def login(body: sc.LoginIn, svc: Svc) -> sc.TokenOut:
        return sc.TokenOut(token=await run_in_threadpool(svc.login, body.email, body.password))

    @r.post("/logout", status_code=204)
    async def logout(
        svc: Svc, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> None:
        if creds is not None:
            await run_in_threadpool(svc.logout, creds.credentials)

    @r.post("/tokens", response_model=sc.TokenOut)
    async def api_token(body: sc.ApiTokenIn, svc: Svc, me: Me) -> sc.TokenOut:
        return sc.TokenOut(
            token=await run_in_threadpool(svc.create_api_token, me, body.name, body.days)
        )

    @r.get("/admins", response_model=list[sc.AdminOut])
    async def admins(svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.list_admins, me)

    @r.post("/admins", response_model=sc.AdminCreated, status_code=201)
    async def add_admin(body: sc.AdminIn, svc: Svc, me: Me) -> sc.AdminCreated:
        admin_id, pw = await run_in_threadpool(
            svc.create_admin, me, body.email, body.role, body.group_ids
        )
        return sc.AdminCreated(id=admin_id, password=pw)

    @r.patch("/admins/{admin_id}", response_model=sc.AdminOut)
    async def edit_admin(admin_id: int, body: sc.AdminPatch, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(
            lambda: svc.update_admin(
                me, admin_id, role=body.role, group_ids=body.group_ids, disabled=body.disabled
            )
        )

    @r.get("/storages", response_model=list[sc.StorageOut])
    async def storages(svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.list_storages, me)

    @r.get("/stats", response_model=sc.StatsOut)
    async def stats(svc: Svc, me: Me) -> Any:
        """Bytes backed up and stored, the dedup ratio, warm and cold bytes, per server and
        per storage (with its last measured usage)."""
        return await run_in_threadpool(svc.statistics, me)

    @r.get("/policies", response_model=list[sc.PolicyOut])
    async def policies(svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.list_policies, me)

    @r.post("/policies", response_model=sc.PolicyOut, status_code=201)
    async def add_policy(body: sc.PolicyIn, svc: Svc, me: Me) -> Any:
        fields = body.model_dump(exclude={"name", "confirm_removal"})
        return await run_in_threadpool(lambda: svc.create_policy(me, body.name, **fields))

    @r.patch("/policies/{policy_id}", response_model=sc.PolicyOut)
    async def edit_policy(policy_id: int, body: sc.PolicyPatch, svc: Svc, me: Me) -> Any:
        fields = body.model_dump(exclude_unset=True, exclude={"confirm_removal"})
        return await run_in_threadpool(
            lambda: svc.update_policy(me, policy_id, confirm_removal=body.confirm_removal, **fields)
        )

    @r.post("/policies/{policy_id}/retention-preview", response_model=list[sc.RestorePointOut])
    async def retention_preview(policy_id: int, body: sc.RetentionIn, svc: Svc, me: Me) -> Any:
        """The restore points these retention rules would remove that the saved ones keep."""
        return await run_in_threadpool(svc.retention_preview, me, policy_id, body.retention)

    @r.get("/retention/expiring", response_model=list[sc.RestorePointOut])
    async def expiring(request: Request, me: Me) -> Any:
        """What the next retention run removes under the saved policies."""
        return await run_in_threadpool(_maintenance(request).expiring, me)

    @r.get("/retention/runs", response_model=list[sc.MaintenanceRunOut])
    async def retention_runs(request: Request, me: Me, limit: Limit = 100) -> Any:
        return await run_in_threadpool(_maintenance(request).list_runs, me, limit)

    @r.post("/retention/runs", response_model=list[sc.MaintenanceRunOut], status_code=201)
    async def run_retention(request: Request, body: sc.RetentionRunIn, me: Me) -> Any:
        """Queue a retention run now (organization admins)."""
        return await run_in_threadpool(_maintenance(request).run_now, me, body.storage_id)

    @r.delete("/policies/{policy_id}", status_code=204)
    async def remove_policy(policy_id: int, svc: Svc, me: Me) -> None:
        await run_in_threadpool(svc.remove_policy, me, policy_id)

    @r.get("/groups", response_model=list[sc.GroupOut])
    async def groups(svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.list_groups, me)

    @r.post("/groups", response_model=sc.GroupOut, status_code=201)
    async def add_group(body: sc.GroupIn, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(
            svc.create_group, me, body.name, body.policy_id, body.storage_id
        )

    @r.patch("/groups/{group_id}", response_model=sc.GroupOut)
    async def edit_group(group_id: int, body: sc.GroupPatch, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(
            lambda: svc.set_group_policy(
                me, group_id, body.policy_id, confirm_removal=body.confirm_removal
            )
        )

    @r.post("/activation-tokens", response_model=sc.ActivationOut, status_code=201)
    async def activation(body: sc.ActivationIn, svc: Svc, me: Me, request: Request) -> Any:
        token = await run_in_threadpool(
            svc.create_activation_token, me, body.group_id, body.hours, body.uses
        )
        url = str(request.base_url).rstrip("/")
        return sc.ActivationOut(
            token=token,
            command=f"rekindle agent enroll --cloud {url} --ca-fingerprint "
            f"{request.app.state.ca_fingerprint} --token {token}",
        )

    def _server_out(svc: CloudServices, server: Any) -> sc.ServerOut:
        out = sc.ServerOut.model_validate(server)
        out.connected = svc.is_connected(server)
        return out

    @r.get("/servers", response_model=list[sc.ServerOut])
    async def servers(svc: Svc, me: Me, group_id: int | None = None) -> Any:
        rows = await run_in_threadpool(svc.list_servers, me, group_id)
        return [_server_out(svc, x) for x in rows]

    @r.get("/servers/{server_id}", response_model=sc.ServerOut)
    async def server(server_id: int, svc: Svc, me: Me) -> Any:
        return _server_out(svc, await run_in_threadpool(svc.get_server, me, server_id))

    @r.patch("/servers/{server_id}", response_model=sc.ServerOut)
    async def edit_server(server_id: int, body: sc.ServerPatch, svc: Svc, me: Me) -> Any:
        row = await run_in_threadpool(svc.set_server_enabled, me, server_id, body.enabled)
        return _server_out(svc, row)

    @r.delete("/servers/{server_id}", status_code=204)
    async def remove_server(server_id: int, svc: Svc, me: Me) -> None:
        await run_in_threadpool(svc.remove_server, me, server_id)

    @r.get("/servers/{server_id}/backup-sets", response_model=list[sc.BackupSetOut])
    async def backup_sets(server_id: int, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.list_backup_sets, me, server_id)

    @r.post("/servers/{server_id}/backup-sets", response_model=sc.BackupSetOut, status_code=201)
    async def add_backup_set(server_id: int, body: sc.BackupSetIn, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(
            svc.create_backup_set, me, server_id, body.name, body.include, body.exclude
        )

    @r.patch("/backup-sets/{backup_set_id}", response_model=sc.BackupSetOut)
    async def edit_backup_set(backup_set_id: int, body: sc.BackupSetPatch, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(
            lambda: svc.update_backup_set(
                me, backup_set_id, name=body.name, include=body.include, exclude=body.exclude
            )
        )

    @r.delete("/backup-sets/{backup_set_id}", status_code=204)
    async def remove_backup_set(backup_set_id: int, svc: Svc, me: Me) -> None:
        await run_in_threadpool(svc.remove_backup_set, me, backup_set_id)

    @r.post("/servers/{server_id}/backup-now", response_model=sc.JobOut, status_code=201)
    async def backup_now(server_id: int, body: sc.BackupNowIn, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.backup_now, me, server_id, body.backup_set_id)

    @r.post("/restores", response_model=sc.JobOut, status_code=201)
    async def restore(body: sc.RestoreIn, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(
            lambda: svc.start_restore(
                me,
                body.restore_point_id,
                target_server_id=body.target_server_id,
                target_path=body.target_path,
                include=body.include,
                existing=body.existing,
            )
        )

    @r.get("/jobs", response_model=list[sc.JobOut])
    async def jobs(
        svc: Svc,
        me: Me,
        server_id: int | None = None,
        state: str | None = None,
        limit: Limit = 100,
    ) -> Any:
        return await run_in_threadpool(svc.list_jobs, me, server_id, state, limit)

    @r.get("/jobs/{job_id}", response_model=sc.JobDetail)
    async def job(job_id: int, svc: Svc, me: Me) -> Any:
        row, missed = await run_in_threadpool(svc.get_job, me, job_id)
        out = sc.JobDetail.model_validate(row)
        out.missed = [sc.MissedOut.model_validate(m) for m in missed]
        return out

    @r.post("/jobs/{job_id}/cancel", response_model=sc.JobOut)
    async def cancel(job_id: int, svc: Svc, me: Me) -> Any:
        return await run_in_threadpool(svc.cancel_job, me, job_id)

    @r.get("/restore-points", response_model=list[sc.RestorePointOut])
    async def restore_points(svc: Svc, me: Me, server_id: int | None = None) -> Any:
        return await run_in_threadpool(svc.list_restore_points, me, server_id)

    @r.get("/events", response_model=list[sc.EventOut])
    async def events(
        svc: Svc,
        me: Me,
        limit: Limit = 100,
        severity: sc.Severity | None = None,
        server_id: int | None = None,
    ) -> Any:
        return await run_in_threadpool(
            lambda: svc.list_events(me, limit, severity=severity, server_id=server_id)
        )

    @r.get("/alerts", response_model=list[sc.EventOut])
    async def alerts(svc: Svc, me: Me, limit: Limit = 100) -> Any:
        """Warnings and errors no admin has acknowledged yet, newest first."""
        return await run_in_threadpool(lambda: svc.list_events(me, limit, alerts=True))

    @r.post("/alerts/acknowledge", response_model=sc.AcknowledgedOut)
    async def acknowledge(body: sc.AcknowledgeIn, svc: Svc, me: Me) -> Any:
        ids = None if body.all else body.event_ids
        return sc.AcknowledgedOut(
            acknowledged=await run_in_threadpool(svc.acknowledge_alerts, me, ids)
        )

    @r.get("/notifications", response_model=sc.NotificationsOut)
    async def notifications(svc: Svc, me: Me) -> Any:
        mine, effective, hours = await run_in_threadpool(svc.notification_settings, me)
        return sc.NotificationsOut(
            recipients=mine,
            effective_recipients=effective,
            offline_after_hours=hours,
            email_enabled=svc.email,
        )

    @r.put("/notifications", response_model=sc.NotificationsOut)
    async def set_notifications(body: sc.NotificationsIn, svc: Svc, me: Me) -> Any:
        await run_in_threadpool(
            lambda: svc.set_notifications(
                me, recipients=body.recipients, offline_after_hours=body.offline_after_hours
            )
        )
        return await notifications(svc, me)

    @r.get("/emails", response_model=list[sc.EmailOut])
    async def emails(svc: Svc, me: Me, limit: Limit = 100) -> Any:
        """The organization's outbox, newest first (organization admins)."""
        return await run_in_threadpool(svc.list_emails, me, limit)

    @r.get("/audit", response_model=list[sc.AuditOut])
    async def audit(svc: Svc, me: Me, limit: Limit = 100) -> Any:
        return await run_in_threadpool(svc.list_audit, me, limit)

    return r


class Waker:
    """Wakes the long-poll of a server when a job is queued for it (same process); other
    cloud processes' jobs are seen by the poll's periodic re-check."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events: dict[int, asyncio.Event] = {}

    def event(self, server_id: int) -> asyncio.Event:
        return self.events.setdefault(server_id, asyncio.Event())

    def wake(self, server_id: int) -> None:
        loop = self.loop
        if loop is None:
            return
        loop.call_soon_threadsafe(lambda: self.event(server_id).set())


async def current_agent(request: Request, svc: Svc) -> int:
    der = client_cert_der(request.scope)
    if der is None:
        raise AuthError("agents must present their client certificate")
    server = await run_in_threadpool(svc.agent_server, fingerprint_der(der))
    return server.id


AgentId = Annotated[int, Depends(current_agent)]


def agent_router(disconnect_check_s: float = 2.0) -> APIRouter:
    r = APIRouter(prefix="/agent/v1", tags=["agent"])

    @r.get("/ca", response_class=PlainTextResponse)
    async def ca(request: Request) -> str:
        """The installation's CA certificate; agents check its fingerprint before trusting it."""
        pem: str = request.app.state.ca_pem
        return pem

    @r.post("/enroll", response_model=p.EnrollResponse)
    async def enroll(body: p.EnrollRequest, svc: Svc) -> p.EnrollResponse:
        return await run_in_threadpool(svc.enroll, body)

    @r.post("/poll", response_model=p.PollResponse)
    async def poll(
        body: p.Heartbeat, svc: Svc, server_id: AgentId, request: Request, wait: float = 20.0
    ) -> p.PollResponse:
        wait = max(0.0, min(wait, p.POLL_WAIT_S))
        until = await run_in_threadpool(svc.heartbeat, server_id, body, wait)
        waker: Waker = request.app.state.waker
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            ev = waker.event(server_id)
            ev.clear()
            # A job handed to a connection that is already gone would be lost with it.
            if await request.is_disconnected():
                await run_in_threadpool(svc.poll_dropped, server_id, until)
                return p.PollResponse(job=None)
            job = await run_in_threadpool(svc.claim_job, server_id)
            if job is not None:
                return p.PollResponse(job=job)
            # Sleep until a job for this server shows up (queued here, or seen by the queue
            # watcher), the wait ends, or the agent goes away: no per-poll database polling.
            while not ev.is_set():
                left = deadline - loop.time()
                if await request.is_disconnected():
                    await run_in_threadpool(svc.poll_dropped, server_id, until)
                    return p.PollResponse(job=None)
                if left <= 0:
                    # No write here: the heartbeat already counted the agent connected until
                    # the end of this wait plus the grace, and it polls again at once.
                    return p.PollResponse(job=None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), timeout=min(left, disconnect_check_s))

    @r.post("/jobs/{job_id}/progress", response_model=p.ProgressAck)
    async def progress(
        job_id: int, body: p.Progress, svc: Svc, server_id: AgentId
    ) -> p.ProgressAck:
        return await run_in_threadpool(svc.job_progress, server_id, job_id, body)

    @r.post("/jobs/{job_id}/result", status_code=204)
    async def result(job_id: int, body: p.JobResult, svc: Svc, server_id: AgentId) -> None:
        await run_in_threadpool(svc.finish_job, server_id, job_id, body)

    return r
