"""`rekindle admin`: drive the cloud's API from a terminal or a script.

`rekindle admin login` keeps the cloud URL, its CA and a session token in
``$REKINDLE_ADMIN_CONFIG`` (default ``~/.config/rekindle/admin.json``, mode 0600). Every other
command prints a table, or JSON with ``--json``.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rekindle.core.errors import RekindleError, UsageError

if TYPE_CHECKING:
    import httpx

app = typer.Typer(
    help="Administer the cloud: servers, policies, jobs, restores.", no_args_is_help=True
)
out = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class ApiError(RekindleError):
    pass


def config_path() -> Path:
    env = os.environ.get("REKINDLE_ADMIN_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".config" / "rekindle" / "admin.json"


def _load() -> dict[str, str]:
    path = config_path()
    if not path.exists():
        raise UsageError("not logged in: run 'rekindle admin login --cloud URL --ca-file CA'")
    data: dict[str, str] = json.loads(path.read_text())
    return data


def _client(cfg: dict[str, str]) -> httpx.Client:
    import httpx

    ctx = ssl.create_default_context(cafile=cfg["ca_file"])
    headers = {"Authorization": f"Bearer {cfg['token']}"} if cfg.get("token") else {}
    return httpx.Client(base_url=cfg["cloud"], verify=ctx, headers=headers, timeout=60.0)


def call(
    method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
) -> Any:
    import httpx

    cfg = _load()
    with _client(cfg) as c:
        try:
            resp = c.request(method, f"/api/v1{path}", json=body, params=params)
        except httpx.TransportError as e:
            raise ApiError(f"cannot reach the cloud at {cfg['cloud']}: {e}") from e
    if resp.status_code >= 300:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        if isinstance(detail, list):  # pydantic validation errors
            detail = "; ".join(
                f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" for d in detail
            )
        raise ApiError(f"{detail} (HTTP {resp.status_code})")
    return resp.json() if resp.content else None


def show(rows: Any, as_json: bool, columns: list[str]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    items = rows if isinstance(rows, list) else [rows]
    table = Table()
    for c in columns:
        # fold, not "…": an id or a state cut short is useless on a narrow terminal
        table.add_column(c.removesuffix("_id").replace("_", " "), overflow="fold")
    for r in items:
        table.add_row(*(_cell(r.get(c)) for c in columns))
    out.print(table)


_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]00:00)?$")


_SNAPSHOT_ID = re.compile(r"^[0-9a-f]{64}$")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v)
    text = str(v)
    m = _ISO_TIME.match(text)
    if m:  # the API speaks UTC; seconds are enough for people
        return f"{m.group(1)} {m.group(2)}"
    if _SNAPSHOT_ID.match(text):  # short form in tables; --json keeps the whole id
        return text[:12]
    return text


@app.command()
def login(
    cloud: Annotated[str, typer.Option(help="https://HOST:PORT of the cloud.")],
    ca_file: Annotated[Path, typer.Option(help="The cloud's CA certificate (PEM).")],
    email: Annotated[str, typer.Option()] = "admin@localhost",
    password_file: Annotated[Path | None, typer.Option(help="File holding the password.")] = None,
) -> None:
    """Log in and remember the session. The password comes from --password-file,
    REKINDLE_ADMIN_PASSWORD, or a prompt: never from an argument."""
    if password_file is not None:
        password = password_file.read_text().strip()
    else:
        password = os.environ.get("REKINDLE_ADMIN_PASSWORD") or getpass.getpass("password: ")
    import httpx

    cfg = {"cloud": cloud.rstrip("/"), "ca_file": str(ca_file.resolve()), "token": ""}
    with _client(cfg) as c:
        try:
            resp = c.post("/api/v1/login", json={"email": email, "password": password})
        except httpx.TransportError as e:
            raise ApiError(f"cannot reach the cloud at {cloud}: {e}") from e
    if resp.status_code != 200:
        raise ApiError(f"login failed: {resp.json().get('detail')} (HTTP {resp.status_code})")
    cfg["token"] = resp.json()["token"]
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    sys.stdout.write(f"logged in to {cloud} as {email}\n")


@app.command()
def logout() -> None:
    """End the session and forget it."""
    call("POST", "/logout")
    config_path().unlink(missing_ok=True)


def _remove(path: str, what: str) -> None:
    call("DELETE", path)
    sys.stdout.write(f"{what} removed\n")


@app.command()
def servers(as_json: JsonOpt = False) -> None:
    """List servers with their agent status."""
    show(
        call("GET", "/servers"),
        as_json,
        ["id", "hostname", "group_id", "os", "connected", "enabled", "last_seen", "free_bytes"],
    )


@app.command("server-remove")
def server_remove(server_id: int) -> None:
    """Remove a disabled server: its backup sets, jobs and restore points leave the catalog
    (the data stays in the repository until pruned)."""
    _remove(f"/servers/{server_id}", f"server {server_id}")


@app.command("server-disable")
def server_disable(server_id: int, as_json: JsonOpt = False) -> None:
    """Disable a server: its agent certificate is refused from the next request on."""
    show(
        call("PATCH", f"/servers/{server_id}", {"enabled": False}),
        as_json,
        ["id", "hostname", "enabled"],
    )


@app.command("server-enable")
def server_enable(server_id: int, as_json: JsonOpt = False) -> None:
    show(
        call("PATCH", f"/servers/{server_id}", {"enabled": True}),
        as_json,
        ["id", "hostname", "enabled"],
    )


@app.command()
def storages(as_json: JsonOpt = False) -> None:
    """List the storage nodes a server group can use."""
    show(
        call("GET", "/storages"),
        as_json,
        ["id", "name", "url", "used_bytes", "total_bytes", "checked"],
    )


@app.command()
def stats(as_json: JsonOpt = False) -> None:
    """What the organization has stored, per server and per storage."""
    res = call("GET", "/stats")
    if as_json:
        show(res, True, [])
        return
    ratio = res["dedup_ratio"]
    sys.stdout.write(
        f"{res['restore_points']} restore points: {res['raw_bytes']} bytes backed up, "
        f"{res['stored_bytes']} stored (ratio {ratio if ratio else '-'}); "
        + (
            f"warm {res['warm_bytes']}, cold {res['cold_bytes']}\n"
            if res["warm_bytes"] is not None
            else "warm and cold bytes: not measured yet (the daily retention run does)\n"
        )
    )
    show(
        res["servers"],
        False,
        [
            "id",
            "hostname",
            "restore_points",
            "latest_bytes",
            "stored_bytes",
            "dedup_ratio",
            "warm_bytes",
            "cold_bytes",
            "last_backup",
        ],
    )
    show(
        res["storages"],
        False,
        [
            "id",
            "name",
            "used_bytes",
            "total_bytes",
            "percent",
            "warm_bytes",
            "cold_bytes",
            "dedup_ratio",
            "checked",
        ],
    )


@app.command()
def groups(as_json: JsonOpt = False) -> None:
    """List server groups."""
    show(call("GET", "/groups"), as_json, ["id", "name", "policy_id", "storage_id"])


@app.command("group-add")
def group_add(
    name: str,
    policy: Annotated[int | None, typer.Option(help="Backup policy id.")] = None,
    storage: Annotated[int | None, typer.Option(help="Storage id (default: the first).")] = None,
    as_json: JsonOpt = False,
) -> None:
    show(
        call("POST", "/groups", {"name": name, "policy_id": policy, "storage_id": storage}),
        as_json,
        ["id", "name", "policy_id", "storage_id"],
    )


KeepOpt = Annotated[int | None, typer.Option(min=0, help="Retention rule (0: unused).")]
_POINT_COLS = ["id", "server_id", "backup_set_id", "time", "files", "bytes", "snapshot_id"]

_POLICY_COLS = [
    "id",
    "name",
    "days",
    "start_time",
    "window_hours",
    "max_retries",
    "bandwidth_kib",
    "cold_after_days",
    "next_run",
]


@app.command()
def policies(as_json: JsonOpt = False) -> None:
    """List backup policies."""
    show(call("GET", "/policies"), as_json, _POLICY_COLS)


def _given(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command("policy-add")
def policy_add(
    name: str,
    days: Annotated[str | None, typer.Option(help="mon,tue,... or mon-fri or daily")] = None,
    start: Annotated[str | None, typer.Option(help="HH:MM, UTC")] = None,
    window_hours: Annotated[int | None, typer.Option(help="0: no window")] = None,
    retries: Annotated[int | None, typer.Option()] = None,
    retry_interval_min: Annotated[int | None, typer.Option()] = None,
    bandwidth_kib: Annotated[int | None, typer.Option(help="0: no cap")] = None,
    cold_after_days: Annotated[int | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    body = _given(
        name=name,
        days=days,
        start_time=start,
        window_hours=window_hours,
        max_retries=retries,
        retry_interval_min=retry_interval_min,
        bandwidth_kib=bandwidth_kib,
        cold_after_days=cold_after_days,
    )
    show(call("POST", "/policies", body), as_json, _POLICY_COLS)


@app.command("policy-set")
def policy_set(
    policy_id: int,
    days: Annotated[str | None, typer.Option()] = None,
    start: Annotated[str | None, typer.Option()] = None,
    window_hours: Annotated[int | None, typer.Option()] = None,
    retries: Annotated[int | None, typer.Option()] = None,
    retry_interval_min: Annotated[int | None, typer.Option()] = None,
    bandwidth_kib: Annotated[int | None, typer.Option()] = None,
    cold_after_days: Annotated[int | None, typer.Option()] = None,
    keep_within_days: KeepOpt = None,
    keep_daily: KeepOpt = None,
    keep_weekly: KeepOpt = None,
    keep_monthly: KeepOpt = None,
    keep_yearly: KeepOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm removing what a shorter retention drops.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a policy. A shorter retention lists the restore points it would remove and
    changes nothing unless --yes is given."""
    body = _given(
        days=days,
        start_time=start,
        window_hours=window_hours,
        max_retries=retries,
        retry_interval_min=retry_interval_min,
        bandwidth_kib=bandwidth_kib,
        cold_after_days=cold_after_days,
    )
    rules = _retention(
        policy_id,
        within_days=keep_within_days,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
    )
    if rules is not None:
        body["retention"] = rules
        doomed = call(
            "POST",
            f"/policies/{policy_id}/retention-preview",
            {"retention": body["retention"]},
        )
        if doomed and not yes:
            sys.stderr.write(f"this retention removes {len(doomed)} restore point(s):\n")
            show(doomed, as_json, _POINT_COLS)
            raise ApiError("nothing changed: run again with --yes to remove them")
        body["confirm_removal"] = bool(doomed)
    show(call("PATCH", f"/policies/{policy_id}", body), as_json, _POLICY_COLS)


@app.command("retention-preview")
def retention_preview(
    policy_id: int,
    keep_within_days: KeepOpt = None,
    keep_daily: KeepOpt = None,
    keep_weekly: KeepOpt = None,
    keep_monthly: KeepOpt = None,
    keep_yearly: KeepOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The restore points these rules (the given ones replace the policy's) would remove."""
    rules = _retention(
        policy_id,
        within_days=keep_within_days,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
        always=True,
    )
    body = {"retention": rules}
    show(call("POST", f"/policies/{policy_id}/retention-preview", body), as_json, _POINT_COLS)


def _retention(
    policy_id: int, *, always: bool = False, **keeps: int | None
) -> dict[str, Any] | None:
    """The policy's saved retention with the rules given on the command line in place; None
    when none was given (unless `always`)."""
    given = _given(**keeps)
    if not given and not always:
        return None
    current = next((x for x in call("GET", "/policies") if x["id"] == policy_id), None)
    if current is None:
        raise ApiError(f"no backup policy {policy_id}")
    return {**current["retention"], **given}


@app.command("retention-expiring")
def retention_expiring(as_json: JsonOpt = False) -> None:
    """The restore points the next retention run removes."""
    show(call("GET", "/retention/expiring"), as_json, _POINT_COLS)


_RUN_COLS = [
    "id",
    "storage_id",
    "state",
    "trigger",
    "created",
    "finished",
    "removed",
    "bytes_freed",
    "error",
]


@app.command("retention-runs")
def retention_runs(as_json: JsonOpt = False) -> None:
    """Retention runs (expire, prune, check), newest first; --json includes their reports."""
    show(call("GET", "/retention/runs"), as_json, _RUN_COLS)


@app.command("retention-run")
def retention_run(
    storage: Annotated[int | None, typer.Option(help="One storage (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a retention run now."""
    show(call("POST", "/retention/runs", {"storage_id": storage}), as_json, _RUN_COLS)


@app.command("policy-remove")
def policy_remove(policy_id: int) -> None:
    """Delete a backup policy that no server group uses."""
    _remove(f"/policies/{policy_id}", f"policy {policy_id}")


@app.command("group-set-policy")
def group_set_policy(
    group_id: int,
    policy: Annotated[
        int | None, typer.Option(help="Backup policy id; leave out to back up only on demand.")
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm removing what the new retention drops.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Give a server group another backup policy (one that keeps fewer of the group's restore
    points needs --yes)."""
    show(
        call("PATCH", f"/groups/{group_id}", {"policy_id": policy, "confirm_removal": yes}),
        as_json,
        ["id", "name", "policy_id", "storage_id"],
    )


@app.command("backup-sets")
def backup_sets(server_id: int, as_json: JsonOpt = False) -> None:
    show(
        call("GET", f"/servers/{server_id}/backup-sets"),
        as_json,
        ["id", "name", "include", "exclude"],
    )


@app.command("backup-set-add")
def backup_set_add(
    server_id: int,
    name: str,
    include: Annotated[list[str], typer.Option("--include", help="Absolute path to back up.")],
    exclude: Annotated[list[str] | None, typer.Option("--exclude")] = None,
    as_json: JsonOpt = False,
) -> None:
    body = {"name": name, "include": include, "exclude": exclude or []}
    show(
        call("POST", f"/servers/{server_id}/backup-sets", body),
        as_json,
        ["id", "name", "include", "exclude"],
    )


@app.command("backup-set-set")
def backup_set_set(
    backup_set_id: int,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Replaces the include paths.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Replaces the exclude patterns.")
    ] = None,
    no_exclude: Annotated[bool, typer.Option(help="Remove every exclude pattern.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a backup set; the next backup follows it."""
    body: dict[str, Any] = _given(name=name, include=include, exclude=exclude)
    if no_exclude:
        body["exclude"] = []
    show(
        call("PATCH", f"/backup-sets/{backup_set_id}", body),
        as_json,
        ["id", "name", "include", "exclude"],
    )


@app.command("backup-set-remove")
def backup_set_remove(backup_set_id: int) -> None:
    """Stop backing up a backup set; its restore points stay until retention removes them."""
    _remove(f"/backup-sets/{backup_set_id}", f"backup set {backup_set_id}")


@app.command("activation-token")
def activation_token(
    group_id: int,
    hours: Annotated[int, typer.Option()] = 24,
    uses: Annotated[int, typer.Option()] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Create an activation token and print the enrollment command for the agent."""
    res = call("POST", "/activation-tokens", {"group_id": group_id, "hours": hours, "uses": uses})
    if as_json:
        show(res, True, [])
    else:
        sys.stdout.write(res["command"] + " --data-dir /var/lib/rekindle-agent\n")


# What fits 80 columns; `job ID` adds attempt, restore point and progress, --json has all.
_JOB_COLS = ["id", "server_id", "kind", "state", "trigger", "created", "finished", "error"]


@app.command("backup-now")
def backup_now(
    server_id: int,
    backup_set: Annotated[int | None, typer.Option(help="Backup set id (default: first).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a backup now (queued until the agent connects if it is offline)."""
    show(
        call("POST", f"/servers/{server_id}/backup-now", {"backup_set_id": backup_set}),
        as_json,
        _JOB_COLS,
    )


@app.command()
def restore(
    restore_point: int,
    to_path: Annotated[
        str | None, typer.Option(help="Another directory (default: original).")
    ] = None,
    to_server: Annotated[int | None, typer.Option(help="Another server of the same OS.")] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Restore only this.")
    ] = None,
    existing: Annotated[str, typer.Option(help="skip, overwrite or rename (keep both)")] = "skip",
    as_json: JsonOpt = False,
) -> None:
    """Restore a restore point, whole or some paths, to its original place or elsewhere."""
    body = {
        "restore_point_id": restore_point,
        "target_path": to_path,
        "target_server_id": to_server,
        "include": include or [],
        "existing": existing,
    }
    show(call("POST", "/restores", body), as_json, _JOB_COLS)


@app.command()
def jobs(
    server: Annotated[int | None, typer.Option()] = None,
    state: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOpt = False,
) -> None:
    params = {k: v for k, v in {"server_id": server, "state": state}.items() if v is not None}
    show(call("GET", "/jobs", params=params), as_json, _JOB_COLS)


@app.command()
def job(job_id: int, as_json: JsonOpt = False) -> None:
    """A job with its progress, log and missed files."""
    res = call("GET", f"/jobs/{job_id}")
    if as_json:
        show(res, True, [])
        return
    show(res, False, [*_JOB_COLS, "attempt", "snapshot_id"])
    if res["progress"]:
        out.print(f"progress: {json.dumps(res['progress'])}", markup=False, highlight=False)
    if res["missed"]:
        show(res["missed"], False, ["path", "reason"])
    if res["log"]:
        out.print(res["log"], markup=False, highlight=False)


@app.command()
def cancel(job_id: int, as_json: JsonOpt = False) -> None:
    """Cancel a job: a queued one at once; a running backup stops cleanly, keeping what it
    stored for the next run."""
    show(call("POST", f"/jobs/{job_id}/cancel"), as_json, _JOB_COLS)


@app.command()
def wait(
    job_id: int, timeout: Annotated[float, typer.Option()] = 3600.0, as_json: JsonOpt = False
) -> None:
    """Wait until a job ends; exit 0 if it succeeded, 3 if partial, 1 otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        res = call("GET", f"/jobs/{job_id}")
        if res["state"] not in ("defreezing", "queued", "running"):
            break
        if time.monotonic() > deadline:
            raise ApiError(f"job {job_id} still {res['state']} after {timeout:.0f} s")
        time.sleep(1.0)
    show(res if as_json else [res], as_json, _JOB_COLS)
    if res["state"] == "partial":
        raise typer.Exit(3)
    if res["state"] != "succeeded":
        raise typer.Exit(1)


@app.command("restore-points")
def restore_points(
    server: Annotated[int | None, typer.Option()] = None, as_json: JsonOpt = False
) -> None:
    params = {"server_id": server} if server is not None else None
    show(
        call("GET", "/restore-points", params=params),
        as_json,
        [
            "id",
            "server_id",
            "backup_set_id",
            "time",
            "files",
            "bytes",
            "bytes_added",
            "partial",
            "snapshot_id",
        ],
    )


_EVENT_COLS = ["id", "time", "severity", "kind", "server_id", "message"]


@app.command()
def events(
    severity: Annotated[str | None, typer.Option(help="info, warning or error")] = None,
    server: Annotated[int | None, typer.Option(help="Only this server's events.")] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List events, newest first."""
    params = _given(severity=severity, server_id=server, limit=limit)
    show(call("GET", "/events", params=params), as_json, _EVENT_COLS)


@app.command()
def alerts(as_json: JsonOpt = False) -> None:
    """List open alerts: warnings and errors no admin has acknowledged."""
    show(call("GET", "/alerts"), as_json, _EVENT_COLS)


@app.command("alerts-ack")
def alerts_ack(
    event_ids: Annotated[list[int] | None, typer.Argument(help="Alerts to acknowledge.")] = None,
    all_open: Annotated[bool, typer.Option("--all", help="Every open alert.")] = False,
) -> None:
    """Acknowledge alerts; they stay in the event list."""
    body = {"all": True} if all_open else {"event_ids": event_ids or []}
    res = call("POST", "/alerts/acknowledge", body)
    sys.stdout.write(f"{res['acknowledged']} alert(s) acknowledged\n")


@app.command()
def audit(as_json: JsonOpt = False) -> None:
    show(call("GET", "/audit"), as_json, ["id", "time", "admin_id", "action", "target"])


@app.command()
def admins(as_json: JsonOpt = False) -> None:
    show(call("GET", "/admins"), as_json, ["id", "email", "role", "group_ids", "disabled"])


@app.command("admin-add")
def admin_add(
    email: str,
    role: Annotated[str, typer.Option(help="org_admin, group_admin or read_only")] = "read_only",
    group: Annotated[list[int] | None, typer.Option("--group")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an admin; prints the new admin's password once."""
    show(
        call("POST", "/admins", {"email": email, "role": role, "group_ids": group or []}),
        as_json,
        ["id", "password"],
    )


@app.command("admin-set")
def admin_set(
    admin_id: int,
    role: Annotated[str | None, typer.Option(help="org_admin, group_admin or read_only")] = None,
    group: Annotated[
        list[int] | None, typer.Option("--group", help="Replaces the admin's groups.")
    ] = None,
    disable: Annotated[
        bool | None, typer.Option("--disable/--enable", help="Refuse or allow their logins.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an admin's role or groups, or disable them (their sessions end at once)."""
    body = _given(role=role, group_ids=group, disabled=disable)
    show(
        call("PATCH", f"/admins/{admin_id}", body),
        as_json,
        ["id", "email", "role", "group_ids", "disabled"],
    )


@app.command()
def notifications(as_json: JsonOpt = False) -> None:
    """Who gets the organization's emails, and when a silent agent raises an alert."""
    show(
        call("GET", "/notifications"),
        as_json,
        ["recipients", "effective_recipients", "offline_after_hours", "email_enabled"],
    )


@app.command("notifications-set")
def notifications_set(
    to: Annotated[
        list[str] | None, typer.Option("--to", help="A recipient (replaces the list).")
    ] = None,
    admins: Annotated[
        bool, typer.Option("--admins", help="No list: mail the organization admins.")
    ] = False,
    offline_hours: Annotated[int | None, typer.Option(min=1, max=8760)] = None,
    as_json: JsonOpt = False,
) -> None:
    body: dict[str, Any] = _given(offline_after_hours=offline_hours)
    if to:
        body["recipients"] = to
    elif admins:
        body["recipients"] = []
    show(
        call("PUT", "/notifications", body),
        as_json,
        ["recipients", "effective_recipients", "offline_after_hours", "email_enabled"],
    )


@app.command()
def emails(as_json: JsonOpt = False) -> None:
    """The organization's outbox: sent, waiting and failed emails."""
    show(
        call("GET", "/emails"),
        as_json,
        ["id", "created", "state", "attempts", "subject", "recipients", "last_error"],
    )
