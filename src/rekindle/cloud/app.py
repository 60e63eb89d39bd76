"""Assemble the cloud: state directory, CA, token key, database, services, routes and the
scheduler loop; `serve` runs it over HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from rekindle import __version__
from rekindle.cloud.api import Waker, admin_router, agent_router, install_error_handlers
from rekindle.cloud.catalog import StorageCatalog
from rekindle.cloud.db import Database
from rekindle.cloud.mailer import Mailer, SmtpSettings
from rekindle.cloud.maintenance import Maintenance
from rekindle.cloud.security import KeyEncryptionKey
from rekindle.cloud.services import CloudServices
from rekindle.cloud.settings import CloudSettings
from rekindle.cloud.web.routes import install_console
from rekindle.core.clock import Clock, SystemClock
from rekindle.net import tokens
from rekindle.net.pki import CertificateAuthority, ensure_server_cert, fingerprint

log = logging.getLogger(__name__)


@dataclass
class CloudState:
    settings: CloudSettings
    services: CloudServices
    ca: CertificateAuthority
    tls_cert: Path
    tls_key: Path
    ca_file: Path
    token_public: Path
    maintenance: Maintenance
    #: Sends the outbox; None when no SMTP server is configured.
    mailer: Mailer | None = None


def prepare(settings: CloudSettings, clock: Clock | None = None) -> CloudState:
    """Create (first run) or load everything the cloud keeps on disk, and migrate the
    database. Idempotent: data survives restarts."""
    d = settings.data_dir
    d.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(d / "ca")
    ensure_server_cert(ca, d / "tls", [settings.host, *settings.hostnames])
    token_key = tokens.load_or_create_signing_key(d / "keys" / "token.key")
    public = d / "keys" / "token.pub"
    if not public.exists():
        public.write_bytes(tokens.public_pem(token_key))
    kek = KeyEncryptionKey.load_or_create(d / "keys" / "kek")
    db = Database(settings.sqlalchemy_url())
    db.migrate()
    svc = CloudServices(
        db,
        kek=kek,
        ca=ca,
        token_key=token_key,
        clock=clock or SystemClock(),
        default_storage_url=settings.storage_url,
        token_ttl_s=settings.token_ttl_s,
        connected_grace_s=settings.connected_grace_s,
        session_ttl_s=settings.session_ttl_s,
        catalog=StorageCatalog(token_key, d / "ca" / "ca.pem", d / "cache"),
        email=bool(settings.smtp_host),
        console_url=settings.console_url(),
        defreeze_days=settings.defreeze_days,
    )
    mail = None
    if settings.smtp_host:
        mail = Mailer(
            db,
            svc.clock,
            SmtpSettings(
                host=settings.smtp_host,
                port=settings.smtp_port,
                starttls=settings.smtp_starttls,
                user=settings.smtp_user,
                password=settings.smtp_secret(),
                sender=settings.smtp_from,
                ca_file=settings.smtp_ca_file,
            ),
        )
    maintenance = Maintenance(
        svc,
        interval=timedelta(hours=settings.retention_interval_h),
        prune_grace=timedelta(seconds=settings.prune_grace_s),
    )
    svc.on_retention_changed.append(maintenance.queue_for_policy)
    return CloudState(
        settings,
        svc,
        ca,
        d / "tls" / "tls.pem",
        d / "tls" / "tls.key",
        d / "ca" / "ca.pem",
        public,
        maintenance,
        mail,
    )


def create_app(state: CloudState, *, run_scheduler: bool = True) -> FastAPI:
    waker = Waker()
    state.services.on_job_queued.append(waker.wake)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waker.loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(_watch_queue(state, waker))]
        if run_scheduler:
            tasks.append(asyncio.create_task(_scheduler(state)))
            tasks.append(asyncio.create_task(_maintenance(state)))
            tasks.append(asyncio.create_task(_defreezes(state)))
            if state.mailer is not None:
                tasks.append(asyncio.create_task(_mail(state, state.mailer)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="Rekindle cloud",
        version=__version__,
        lifespan=lifespan,
        description="Control plane of Rekindle: admins under /api/v1, agents under /agent/v1.",
    )
    app.state.services = state.services
    app.state.maintenance = state.maintenance
    app.state.waker = waker
    app.state.ca_fingerprint = fingerprint(state.ca.cert)
    app.state.ca_pem = state.ca.pem.decode()
    install_error_handlers(app)
    app.include_router(admin_router())
    app.include_router(agent_router())
    install_console(app)

    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app


async def _watch_queue(state: CloudState, waker: Waker) -> None:
    """Wake the long-polls of servers that got a job from another cloud process (or whose
    retry delay ended): one query a second for the whole process, however many agents."""
    svc = state.services
    interval = state.settings.queue_watch_s
    last_id, _ = await run_in_threadpool(svc.runnable_since, 2**31 - 1, svc.now())
    since = svc.now()
    while True:
        await asyncio.sleep(interval)
        try:
            now = svc.now()
            last_id, servers = await run_in_threadpool(svc.runnable_since, last_id, since)
            since = now
            for server_id in servers:
                waker.wake(server_id)
        except Exception:
            log.exception("queue watcher pass failed")


async def _scheduler(state: CloudState) -> None:
    interval = state.settings.scheduler_interval_s
    while True:
        try:
            n = await run_in_threadpool(state.services.fire_due_schedules)
            if n:
                log.info("scheduler fired %d schedule(s)", n)
            await run_in_threadpool(state.services.check_offline_agents)
        except Exception:
            log.exception("scheduler pass failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)


async def _maintenance(state: CloudState) -> None:
    """Queue the retention runs that are due and carry out queued ones, one at a time (a
    run may take long: it happens in a worker thread, off the event loop)."""
    m = state.maintenance
    interval = state.settings.maintenance_poll_s
    measured = -1e18
    while True:
        try:
            if time.monotonic() - measured >= state.settings.storage_check_s:
                measured = time.monotonic()
                await run_in_threadpool(m.check_storages)
            await run_in_threadpool(m.queue_due)
            while await run_in_threadpool(m.run_next) is not None:
                pass
        except Exception:
            log.exception("retention pass failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)


async def _mail(state: CloudState, mailer: Mailer) -> None:
    interval = state.settings.mail_poll_s
    while True:
        try:
            await run_in_threadpool(mailer.deliver_due)
        except Exception:
            log.exception("mail pass failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)


async def _defreezes(state: CloudState) -> None:
    """Restores waiting for archived data: on their own loop, so a long retention run never
    holds up a restore whose data is back."""
    interval = state.settings.maintenance_poll_s
    while True:
        try:
            await run_in_threadpool(state.services.advance_defreezes)
        except Exception:
            log.exception("defreeze pass failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)
