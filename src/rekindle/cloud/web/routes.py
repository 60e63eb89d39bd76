"""Console routes under /ui. Each handler authenticates the session, calls CloudServices
(in a worker thread: they use the database) and renders a template."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from rekindle import __version__
from rekindle.cloud.api import status_of
from rekindle.cloud.describe import describe_policy
from rekindle.cloud.schedule import DAY_NAMES
from rekindle.cloud.security import AuthError
from rekindle.cloud.services import Actor, CloudServices, duration_words, policy_fields
from rekindle.cloud.web import session as sess
from rekindle.cloud.web.charts import Mark, bar_chart, line_chart, timeline_chart
from rekindle.cloud.web.forms import default_policy_form, policy_from_form, policy_values
from rekindle.cloud.web.views import (
    dashboard_view,
    human_bytes,
    human_time,
    job_view,
    running_jobs,
)
from rekindle.core.errors import RekindleError, UsageError

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))
templates.env.filters["bytes"] = human_bytes
templates.env.filters["when"] = human_time
templates.env.filters["unixtime"] = lambda t: (
    "-" if t is None else human_time(datetime.fromtimestamp(t, UTC))
)
templates.env.globals["version"] = __version__
templates.env.globals["bar_chart"] = bar_chart
templates.env.globals["line_chart"] = line_chart
templates.env.globals["timeline_chart"] = timeline_chart
templates.env.globals["duration"] = duration_words


@dataclass
class Page:
    """Who is looking, and what every page template needs."""

    actor: Actor
    token: str
    csrf: str
    svc: CloudServices
    #: Open alerts, for the badge in the menu.
    alerts: int = 0


class LoginRequiredError(Exception):
    pass


def _svc(request: Request) -> CloudServices:
    svc: CloudServices = request.app.state.services
    return svc


async def _page(request: Request) -> Page:
    token = request.cookies.get(sess.SESSION_COOKIE)
    if not token:
        raise LoginRequiredError
    svc = _svc(request)
    try:
        actor = await run_in_threadpool(svc.authenticate, token)
    except AuthError:
        raise LoginRequiredError from None
    alerts = (
        0 if request.headers.get("HX-Request") else await run_in_threadpool(svc.count_alerts, actor)
    )
    return Page(actor, token, sess.csrf_for(token), svc, alerts)


def _render(request: Request, page: Page | None, name: str, **ctx: Any) -> HTMLResponse:
    ctx.setdefault("error", None)
    ctx.setdefault("notice", request.query_params.get("notice"))
    if page is not None:
        ctx.update(me=page.actor, csrf=page.csrf, open_alerts=page.alerts)
    return templates.TemplateResponse(request, name, ctx)


def console_router() -> APIRouter:
    r = APIRouter(prefix="/ui", include_in_schema=False)

    @r.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        token = sess.new_login_csrf()
        resp = _render(request, None, "login.html", csrf=token, email="")
        sess.set_cookie(resp, sess.LOGIN_CSRF_COOKIE, token)
        return resp

    @r.post("/login")
    async def login(
        request: Request,
        email: Annotated[str, Form(max_length=320)],
        password: Annotated[str, Form(max_length=1000)],
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        expected = request.cookies.get(sess.LOGIN_CSRF_COOKIE, "")
        if not expected or csrf != expected:
            return await login_form(request)
        svc = _svc(request)
        try:
            token = await run_in_threadpool(svc.login, email.strip(), password)
        except AuthError as e:
            failed = _render(request, None, "login.html", csrf=expected, email=email, error=str(e))
            failed.status_code = 401
            return failed
        done = RedirectResponse("/ui/", status_code=303)
        sess.set_cookie(done, sess.SESSION_COOKIE, token)
        sess.clear_cookie(done, sess.LOGIN_CSRF_COOKIE)
        return done

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        await run_in_threadpool(page.svc.logout, page.token)
        resp = RedirectResponse("/ui/login", status_code=303)
        sess.clear_cookie(resp, sess.SESSION_COOKIE)
        return resp

    @r.get("/", response_class=HTMLResponse)
    async def dashboard(request: Request) -> Response:
        page = await _page(request)
        view = await run_in_threadpool(dashboard_view, page.svc, page.actor)
        return _render(request, page, "dashboard.html", view=view, title="Dashboard")

    @r.get("/running", response_class=HTMLResponse)
    async def running(request: Request) -> Response:
        """The running-jobs panel alone: htmx swaps it in every 2 seconds."""
        page = await _page(request)
        running = await run_in_threadpool(running_jobs, page.svc, page.actor)
        return _render(request, page, "_running.html", running=running)

    @r.get("/servers", response_class=HTMLResponse)
    async def servers(request: Request, group: int | None = None, q: str = "") -> Response:
        page = await _page(request)

        def load() -> tuple[list[Any], list[Any]]:
            rows = page.svc.list_servers(page.actor, group)
            needle = q.strip().lower()
            rows = [s for s in rows if needle in s.hostname.lower()] if needle else rows
            shown = [(s, page.svc.is_connected(s)) for s in rows]
            return shown, page.svc.list_groups(page.actor)

        shown, groups = await run_in_threadpool(load)
        return _render(
            request,
            page,
            "servers.html",
            servers=shown,
            groups=groups,
            group=group,
            q=q,
            title="Servers",
        )

    @r.post("/servers/{server_id}/backup-now")
    async def backup_now(request: Request, server_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        job = await _act(lambda: page.svc.backup_now(page.actor, server_id, None))
        return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)

    @r.get("/servers/{server_id}", response_class=HTMLResponse)
    async def server(request: Request, server_id: int) -> Response:
        page = await _page(request)

        def load() -> dict[str, Any]:
            svc, me = page.svc, page.actor
            srv = svc.get_server(me, server_id)
            return {
                "server": srv,
                "connected": svc.is_connected(srv),
                "sets": svc.list_backup_sets(me, server_id),
                "jobs": [job_view(j) for j in svc.list_jobs(me, server_id, limit=10)],
                "points": svc.list_restore_points(me, server_id)[:20],
            }

        ctx = await _act(load)
        return _render(request, page, "server.html", title=ctx["server"].hostname, **ctx)

    @r.post("/servers/{server_id}/enabled")
    async def set_enabled(
        request: Request, server_id: int, enabled: Annotated[bool, Form()]
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        await _act(lambda: page.svc.set_server_enabled(page.actor, server_id, enabled))
        word = "enabled" if enabled else "disabled: its agent is refused from now on"
        return _back(f"/ui/servers/{server_id}", f"Server {word}.")

    @r.post("/servers/{server_id}/remove")
    async def remove_server(request: Request, server_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        await _act(lambda: page.svc.remove_server(page.actor, server_id))
        return _back(
            "/ui/servers", "Server removed; its data stays in the repository until pruned."
        )

    @r.post("/servers/{server_id}/backup-sets")
    async def add_backup_set(
        request: Request,
        server_id: int,
        name: Annotated[str, Form(max_length=200)],
        include: Annotated[str, Form(max_length=100_000)],
        exclude: Annotated[str, Form(max_length=100_000)] = "",
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        inc, exc = _lines(include), _lines(exclude)
        await _act(
            lambda: page.svc.create_backup_set(page.actor, server_id, name.strip(), inc, exc),
        )
        return _back(f"/ui/servers/{server_id}", f"Backup set {name.strip()!r} added.")

    @r.post("/servers/{server_id}/backup-sets/{set_id}")
    async def edit_backup_set(
        request: Request,
        server_id: int,
        set_id: int,
        *,
        name: Annotated[str, Form(max_length=200)],
        include: Annotated[str, Form(max_length=100_000)],
        exclude: Annotated[str, Form(max_length=100_000)] = "",
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        inc, exc = _lines(include), _lines(exclude)
        await _act(
            lambda: page.svc.update_backup_set(
                page.actor, set_id, name=name.strip(), include=inc, exclude=exc
            )
        )
        return _back(f"/ui/servers/{server_id}", f"Backup set {name.strip()!r} saved.")

    @r.post("/servers/{server_id}/backup-sets/{set_id}/remove")
    async def remove_backup_set(request: Request, server_id: int, set_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        await _act(lambda: page.svc.remove_backup_set(page.actor, set_id))
        return _back(
            f"/ui/servers/{server_id}",
            "Backup set removed; its restore points stay until retention removes them.",
        )

    @r.get("/groups", response_class=HTMLResponse)
    async def groups(request: Request) -> Response:
        page = await _page(request)

        def load() -> dict[str, Any]:
            svc, me = page.svc, page.actor
            return {
                "groups": svc.list_groups(me),
                "policies": {p.id: p for p in svc.list_policies(me)},
                "storages": {x.id: x for x in svc.list_storages(me)},
            }

        ctx = await _act(load)
        return _render(request, page, "groups.html", title="Server groups", **ctx)

    @r.post("/groups")
    async def add_group(
        request: Request,
        name: Annotated[str, Form(max_length=200)],
        policy: Annotated[str, Form()] = "",
        storage: Annotated[str, Form()] = "",
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        pol, sto = _opt_int(policy), _opt_int(storage)
        await _act(lambda: page.svc.create_group(page.actor, name.strip(), pol, sto))
        return _back("/ui/groups", f"Group {name.strip()!r} created.")

    @r.post("/groups/{group_id}/policy")
    async def set_group_policy(
        request: Request,
        group_id: int,
        policy: Annotated[str, Form()] = "",
        confirm_removal: Annotated[str, Form()] = "",
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        pol, confirm = _opt_int(policy), bool(confirm_removal)
        group = await _act(
            lambda: page.svc.set_group_policy(page.actor, group_id, pol, confirm_removal=confirm)
        )
        return _back("/ui/groups", f"Group {group.name!r} now follows the chosen policy.")

    @r.post("/groups/{group_id}/activation", response_class=HTMLResponse)
    async def activation(
        request: Request,
        group_id: int,
        hours: Annotated[int, Form(ge=1, le=24 * 30)] = 24,
        uses: Annotated[int, Form(ge=1, le=10_000)] = 1,
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        token = await _act(
            lambda: page.svc.create_activation_token(page.actor, group_id, hours, uses),
        )
        url = str(request.base_url).rstrip("/")
        command = (
            f"rekindle agent enroll --cloud {url} --ca-fingerprint "
            f"{request.app.state.ca_fingerprint} --token {token}"
        )
        return _render(
            request,
            page,
            "activation.html",
            title="Enroll a server",
            command=command,
            hours=hours,
            uses=uses,
        )

    @r.get("/policies", response_class=HTMLResponse)
    async def policies(request: Request) -> Response:
        page = await _page(request)
        rows = await _act(lambda: page.svc.list_policies(page.actor))
        return _render(
            request,
            page,
            "policies.html",
            title="Backup policies",
            policies=[(p, describe_policy(**policy_values(p))) for p in rows],
            form=default_policy_form(),
            days=DAY_NAMES,
        )

    @r.get("/policies/{policy_id}", response_class=HTMLResponse)
    async def policy(request: Request, policy_id: int) -> Response:
        page = await _page(request)

        def load() -> tuple[list[Any], list[Any]]:
            return page.svc.list_policies(page.actor), page.svc.list_groups(page.actor)

        rows, groups = await _act(load)
        row = next((p for p in rows if p.id == policy_id), None)
        if row is None:
            raise PageError(404, f"no backup policy {policy_id}")
        used_by = [g.name for g in groups if g.policy_id == policy_id]
        form = {"name": row.name, **policy_values(row)}
        return _render(
            request,
            page,
            "policy.html",
            title=row.name,
            policy=row,
            form=form,
            days=DAY_NAMES,
            preview=describe_policy(**policy_values(row)),
            used_by=used_by,
        )

    @r.post("/policies/preview", response_class=HTMLResponse)
    async def policy_preview(request: Request) -> Response:
        """The plain-language line under the form as the admin types, and for a saved
        policy the restore points a shorter retention would remove (htmx)."""
        page = await _page(request)
        form = await request.form()
        try:
            _name, fields = policy_from_form(form)
            # the same checks and normalisation the service applies when saving
            text = escape(describe_policy(**policy_fields(fields)))
        except (UsageError, ValueError) as e:
            return HTMLResponse(f'<span class="error">{escape(str(e))}</span>')
        policy_id = _opt_int(str(form.get("policy_id") or ""))
        if policy_id is None:
            return HTMLResponse(text)
        doomed = await _act(
            lambda: page.svc.retention_preview(page.actor, policy_id, fields["retention"])
        )
        removal = templates.get_template("_removal.html").render(
            doomed=doomed, servers=await run_in_threadpool(_hostnames, page)
        )
        return HTMLResponse(text + removal)

    @r.post("/policies")
    async def add_policy(request: Request) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        name, fields = _checked(policy_from_form, await request.form())
        row = await _act(lambda: page.svc.create_policy(page.actor, name, **fields))
        return _back(f"/ui/policies/{row.id}", f"Policy {name!r} created.")

    @r.post("/policies/{policy_id}")
    async def edit_policy(request: Request, policy_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        form = await request.form()
        _name, fields = _checked(policy_from_form, form)
        confirm = bool(form.get("confirm_removal"))
        await _act(
            lambda: page.svc.update_policy(page.actor, policy_id, confirm_removal=confirm, **fields)
        )
        note = " Retention runs now on its storage." if confirm else ""
        return _back(f"/ui/policies/{policy_id}", "Policy saved." + note)

    @r.get("/retention", response_class=HTMLResponse)
    async def retention_page(request: Request) -> Response:
        page = await _page(request)
        m = request.app.state.maintenance

        def load() -> dict[str, Any]:
            return {
                "expiring": m.expiring(page.actor),
                "runs": m.list_runs(page.actor, 50),
                "servers": _hostnames(page),
                "storages": {x.id: x.name for x in page.svc.list_storages(page.actor)},
            }

        ctx = await _act(load)
        return _render(request, page, "retention.html", title="Retention", **ctx)

    @r.post("/retention/run")
    async def retention_run(request: Request) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        m = request.app.state.maintenance
        runs = await _act(lambda: m.run_now(page.actor))
        return _back("/ui/retention", f"Retention queued on {len(runs)} storage(s).")

    @r.post("/policies/{policy_id}/remove")
    async def remove_policy(request: Request, policy_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        await _act(lambda: page.svc.remove_policy(page.actor, policy_id))
        return _back("/ui/policies", "Policy removed.")

    # -- the restore wizard: server, restore point, what, where, confirm -----------------------
    @r.get("/restore", response_class=HTMLResponse)
    async def restore_start(request: Request, server: int | None = None) -> Response:
        page = await _page(request)

        def load() -> dict[str, Any]:
            svc, me = page.svc, page.actor
            if server is None:
                points = svc.list_restore_points(me)
                counts: dict[int, int] = {}
                for p in points:
                    counts[p.server_id] = counts.get(p.server_id, 0) + 1
                servers = [s for s in svc.list_servers(me) if s.id in counts]
                return {"servers": servers, "counts": counts, "server": None}
            points = svc.list_restore_points(me, server)
            marks = [
                Mark(
                    p.time,
                    f"{human_time(p.time)}: {p.files} files, {human_bytes(p.bytes)}"
                    + (" (some files were missed)" if p.partial else ""),
                    f"/ui/restore/{p.id}/browse",
                    p.partial,
                )
                for p in points
            ]
            return {"server": svc.get_server(me, server), "points": points, "marks": marks}

        ctx = await _act(load)
        return _render(request, page, "restore_start.html", title="Restore", **ctx)

    @r.get("/restore/{rp_id}/browse", response_class=HTMLResponse)
    async def restore_browse(request: Request, rp_id: int, path: str = "") -> Response:
        page = await _page(request)
        path = path.strip("/")
        entries = await _act(lambda: page.svc.browse_restore_point(page.actor, rp_id, path))
        parts = [p for p in path.split("/") if p]
        crumbs = [("/".join(parts[: i + 1]), part) for i, part in enumerate(parts)]
        return _render(
            request,
            page,
            "restore_browse.html",
            title="Choose what to restore",
            rp_id=rp_id,
            path=path,
            crumbs=crumbs,
            entries=entries,
        )

    @r.get("/restore/{rp_id}/destination", response_class=HTMLResponse)
    async def restore_destination(request: Request, rp_id: int) -> Response:
        page = await _page(request)
        include = [p for p in request.query_params.getlist("include") if p.strip()]

        def load() -> dict[str, Any]:
            svc, me = page.svc, page.actor
            plan = svc.restore_size(me, rp_id, include)
            point = svc.get_restore_point(me, rp_id)
            source = svc.get_server(me, point.server_id)
            others = [s for s in svc.list_servers(me) if s.enabled]
            return {"plan": plan, "point": point, "source": source, "servers": others}

        ctx = await _act(load)
        return _render(
            request,
            page,
            "restore_destination.html",
            title="Where to restore",
            rp_id=rp_id,
            include=include,
            **ctx,
        )

    @r.post("/restore/{rp_id}")
    async def restore_confirm(request: Request, rp_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        form = await request.form()
        include = [str(p) for p in form.getlist("include") if str(p).strip()]
        where = str(form.get("where") or "original")
        path = str(form.get("path") or "").strip()
        target_server = _opt_int(str(form.get("server") or ""))
        existing = str(form.get("existing") or "skip")
        if where == "path" and not path:
            raise PageError(422, "give the directory to restore into")
        job = await _act(
            lambda: page.svc.start_restore(
                page.actor,
                rp_id,
                target_server_id=target_server if where == "server" else None,
                target_path=None if where == "original" else (path or None),
                include=include,
                existing=existing,
            ),
        )
        return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)

    @r.get("/events", response_class=HTMLResponse)
    async def events(request: Request, severity: str = "", server: str = "") -> Response:
        page = await _page(request)
        server_id = _opt_int(server)

        def load() -> dict[str, Any]:
            svc, me = page.svc, page.actor
            return {
                "events": svc.list_events(me, 200, severity=severity or None, server_id=server_id),
                "servers": svc.list_servers(me),
            }

        ctx = await _act(load)
        return _render(
            request,
            page,
            "events.html",
            title="Events",
            severity=severity,
            server=server_id,
            **ctx,
        )

    @r.get("/alerts", response_class=HTMLResponse)
    async def alerts(request: Request) -> Response:
        page = await _page(request)

        def load() -> dict[str, Any]:
            svc, me = page.svc, page.actor
            mine, effective, hours = svc.notification_settings(me)
            return {
                "alerts": svc.list_events(me, 500, alerts=True),
                "recipients": mine,
                "effective": effective,
                "offline_hours": hours,
                "email_enabled": svc.email,
                "emails": svc.list_emails(me, 20) if me.role == "org_admin" else [],
            }

        ctx = await _act(load)
        return _render(request, page, "alerts.html", title="Alerts", **ctx)

    @r.post("/alerts/notifications")
    async def set_notifications(
        request: Request,
        recipients: Annotated[str, Form(max_length=10_000)] = "",
        offline_hours: Annotated[int, Form(ge=1, le=8760)] = 24,
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        to = [a.strip() for a in recipients.replace(",", "\n").splitlines() if a.strip()]
        await _act(
            lambda: page.svc.set_notifications(
                page.actor, recipients=to, offline_after_hours=offline_hours
            )
        )
        return _back("/ui/alerts", "Email settings saved.")

    @r.post("/alerts/acknowledge")
    async def acknowledge(request: Request) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        form = await request.form()
        if form.get("all"):
            ids = None
        else:
            ids = [int(str(x)) for x in form.getlist("event") if str(x).isdigit()]
            if not ids:
                raise PageError(422, "tick the alerts to acknowledge")
        done = await _act(lambda: page.svc.acknowledge_alerts(page.actor, ids))
        return _back("/ui/alerts", f"{done} alert(s) acknowledged.")

    @r.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request) -> Response:
        page = await _page(request)
        rows = await _act(lambda: page.svc.list_audit(page.actor, 200))
        return _render(request, page, "audit.html", title="Audit log", entries=rows)

    @r.get("/admins", response_class=HTMLResponse)
    async def admins(request: Request) -> Response:
        page = await _page(request)

        def load() -> dict[str, Any]:
            return {
                "admins": page.svc.list_admins(page.actor),
                "groups": {g.id: g.name for g in page.svc.list_groups(page.actor)},
                "storages": page.svc.list_storages(page.actor),
            }

        ctx = await _act(load)
        return _render(request, page, "admins.html", title="Administrators", **ctx)

    @r.post("/admins", response_class=HTMLResponse)
    async def add_admin(
        request: Request,
        email: Annotated[str, Form(max_length=320)],
        role: Annotated[str, Form(max_length=20)],
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        form = await request.form()
        groups = [int(str(g)) for g in form.getlist("group") if str(g).isdigit()]
        _id, password = await _act(
            lambda: page.svc.create_admin(page.actor, email.strip(), role, groups),
        )
        return _render(
            request,
            page,
            "admin_created.html",
            title="Administrator added",
            email=email.strip(),
            password=password,
        )

    @r.post("/admins/{admin_id}")
    async def edit_admin(
        request: Request, admin_id: int, role: Annotated[str, Form(max_length=20)]
    ) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        form = await request.form()
        groups = [int(str(g)) for g in form.getlist("group") if str(g).isdigit()]
        disabled = bool(form.get("disabled"))
        row = await _act(
            lambda: page.svc.update_admin(
                page.actor, admin_id, role=role, group_ids=groups, disabled=disabled
            )
        )
        return _back("/ui/admins", f"Administrator {row.email} saved.")

    @r.get("/jobs", response_class=HTMLResponse)
    async def jobs(request: Request, state: str | None = None) -> Response:
        page = await _page(request)
        rows = await run_in_threadpool(page.svc.list_jobs, page.actor, None, state or None)
        return _render(
            request,
            page,
            "jobs.html",
            jobs=[job_view(j) for j in rows],
            state=state,
            title="Jobs",
        )

    @r.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job(request: Request, job_id: int) -> Response:
        page = await _page(request)
        row, missed = await _act(lambda: page.svc.get_job(page.actor, job_id))
        name = "_job.html" if request.headers.get("HX-Request") else "job.html"
        return _render(request, page, name, job=job_view(row), missed=missed, title=f"Job {job_id}")

    @r.post("/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: int) -> Response:
        page = await _page(request)
        await sess.check_csrf(request, page.csrf)
        await _act(lambda: page.svc.cancel_job(page.actor, job_id))
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)

    return r


def install_console(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=str(_HERE / "static")), name="ui-static")
    app.include_router(console_router())

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/ui/", status_code=307)

    handlers: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {}

    async def to_login(request: Request, _exc: Any) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    async def csrf_failed(request: Request, exc: Any) -> Response:
        return HTMLResponse(f"<p>{exc}</p>", status_code=403)

    handlers[LoginRequiredError] = to_login
    handlers[sess.CsrfError] = csrf_failed

    async def page_error(request: Request, exc: Any) -> Response:
        resp = _render(request, None, "error.html", message=str(exc), title="Not done")
        resp.status_code = exc.status
        return resp

    handlers[PageError] = page_error
    for cls, handler in handlers.items():
        app.add_exception_handler(cls, handler)


def _hostnames(page: Page) -> dict[int, str]:
    return {x.id: x.hostname for x in page.svc.list_servers(page.actor)}


def _back(url: str, notice: str) -> Response:
    """After a change, back to a page (POST-redirect-GET) with a line saying what happened."""
    return RedirectResponse(f"{url}?{urlencode({'notice': notice})}", status_code=303)


def _checked(parse: Callable[[Any], Any], form: Any) -> Any:
    try:
        return parse(form)
    except (UsageError, ValueError) as e:
        raise PageError(422, str(e)) from None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _opt_int(text: str) -> int | None:
    try:
        return int(text) if text.strip() else None
    except ValueError:
        raise PageError(422, f"{text!r} is not a number") from None


async def _act(fn: Callable[[], Any]) -> Any:
    """Run a service call for a page; a refusal (role, conflict, bad input) becomes an error
    page with the service's own message and the API's status instead of the API's JSON."""
    try:
        return await run_in_threadpool(fn)
    except RekindleError as e:
        raise PageError(status_of(e), str(e)) from e


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
