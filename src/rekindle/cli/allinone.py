"""`rekindle allinone` (what `make run` runs): the cloud, a storage node and an enrolled local
agent in one process, on embedded defaults under ./var (SQLite, local disk, a self-signed CA).

First start: creates the organization 'default' and its admin with a random password (printed
once, kept in var/cloud/initial-admin-password, mode 0600), enrolls this machine's agent,
adds a backup set (a generated sample tree, or --src) and runs a first backup. Later starts
reuse everything: data survives restarts.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rekindle.core.errors import RekindleError, UsageError

out = Console(stderr=False)
log = logging.getLogger(__name__)


def _start(server: Any, name: str) -> threading.Thread:
    t = threading.Thread(target=server.run, name=name, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not t.is_alive():
            raise UsageError(f"the {name} did not start (is its port in use?)")
        if time.monotonic() > deadline:
            raise UsageError(f"the {name} did not start within 30 s")
        time.sleep(0.05)
    return t


def allinone(
    src: Annotated[
        Path | None, typer.Option(help="Directory to protect (default: a generated sample tree).")
    ] = None,
    var: Annotated[Path, typer.Option(help="Where everything is kept.")] = Path("var"),
    cloud_port: Annotated[int, typer.Option()] = 8443,
    storage_port: Annotated[int, typer.Option()] = 8444,
    exit_after_backup: Annotated[
        bool, typer.Option(help="Stop once the first backup is done (for scripts).")
    ] = False,
    archive_dir: Annotated[
        Path | None,
        typer.Option(
            help="The storage's archive tier, where data only old restore points use moves "
            "(default: VAR/archive; put it on another disk for real savings)."
        ),
    ] = None,
    thaw_delay_s: Annotated[
        float, typer.Option(help="How long a defreeze from the archive tier takes.")
    ] = 0.0,
) -> None:
    """Run cloud, storage node and a local agent together on embedded defaults."""
    from rekindle.agent.client import enroll
    from rekindle.agent.daemon import Agent
    from rekindle.agent.state import AgentState
    from rekindle.cli.demo import make_sample_tree
    from rekindle.cli.services import first_admin, write_storage_credentials
    from rekindle.cloud.app import create_app, prepare
    from rekindle.cloud.services import Actor
    from rekindle.cloud.settings import CloudSettings
    from rekindle.net.pki import write_private
    from rekindle.net.tlsserver import make_server
    from rekindle.storagenode.app import node_app

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    var = var.resolve()
    host = "127.0.0.1"
    cloud_url = f"https://{host}:{cloud_port}"
    storage_url = f"https://{host}:{storage_port}"
    settings = CloudSettings(
        data_dir=var / "cloud",
        host=host,
        port=cloud_port,
        storage_url=storage_url,
        scheduler_interval_s=15.0,
    )
    state = prepare(settings)
    svc = state.services
    new_password = first_admin(svc, settings.data_dir)
    pw_file = settings.data_dir / "initial-admin-password"
    storage_dir = var / "storage"
    write_storage_credentials(settings.data_dir, storage_dir, [host, "localhost"])

    cloud = make_server(
        create_app(state),
        host=host,
        port=cloud_port,
        certfile=state.tls_cert,
        keyfile=state.tls_key,
        client_ca=state.ca_file,
    )
    archive = (archive_dir or var / "archive").resolve()
    storage = make_server(
        node_app(storage_dir, archive_dir=archive, thaw_delay_s=thaw_delay_s),
        host=host,
        port=storage_port,
        certfile=storage_dir / "tls.pem",
        keyfile=storage_dir / "tls.key",
    )
    _start(storage, "storage node")  # first: the cloud measures its storage at once
    _start(cloud, "cloud")
    out.print(f"console      {cloud_url}/ui/  (log in as admin@localhost)")
    out.print(f"cloud API    {cloud_url}/api/v1  (OpenAPI: {cloud_url}/docs)")
    out.print(
        f"storage node {storage_url}  (data in {storage_dir / 'orgs'}, archive tier {archive})"
    )

    admin = svc.list_admins_by_email("admin@localhost")
    actor = Actor(admin.id, admin.org_id, admin.role)
    agent_state = AgentState(var / "agent")
    if not agent_state.enrolled:
        group = svc.list_groups(actor)[0]
        token = svc.create_activation_token(actor, group.id)
        enroll(agent_state, cloud_url, token, ca_pem=state.ca.pem, hostname="localhost")
    ident = agent_state.identity()
    agent = Agent(agent_state, hostname="localhost", poll_wait=10.0)
    threading.Thread(target=agent.run, name="agent", daemon=True).start()
    out.print(f"agent        enrolled as server {ident.server_id} (state in {agent_state.dir})")

    if not svc.list_backup_sets(actor, ident.server_id):
        if src is None:
            src = var / "sample"
            if not src.exists():
                make_sample_tree(src)
        src = src.resolve()
        if not src.is_dir():
            raise UsageError(f"{src} is not a directory")
        svc.create_backup_set(actor, ident.server_id, "files", [str(src)], [])
    sets = svc.list_backup_sets(actor, ident.server_id)
    if not svc.list_restore_points(actor, ident.server_id):
        job = svc.backup_now(actor, ident.server_id, sets[0].id)
        out.print(f"first backup of {', '.join(sets[0].include)} (job {job.id}) ...")
        _wait(svc, actor, job.id)

    admin_cfg = var / "admin.json"
    write_private(
        admin_cfg,
        json.dumps(
            {
                "cloud": cloud_url,
                "ca_file": str(state.ca_file),
                "token": svc.login_actor(actor),
            }
        ).encode(),
    )
    for rp in svc.list_restore_points(actor, ident.server_id)[:3]:
        out.print(
            f"restore point {rp.id}: {rp.time:%Y-%m-%d %H:%M:%S} UTC, {rp.files} files, "
            f"{rp.bytes} bytes"
        )
    out.print()
    if new_password is not None:
        out.print(
            f"admin: admin@localhost, password [bold]{new_password}[/] "
            f"(kept in {pw_file}, mode 0600; shown only on first start)"
        )
    else:
        out.print(f"admin: admin@localhost, password in {pw_file}")
    out.print("In another terminal:")
    out.print(f"  export REKINDLE_ADMIN_CONFIG={admin_cfg}   # already logged in", markup=False)
    out.print("  .venv/bin/rekindle admin restore-points", markup=False)
    out.print(
        "  .venv/bin/rekindle admin restore 1 --to-path /tmp/restored   # then: "
        "rekindle admin wait JOB",
        markup=False,
    )
    out.print("  .venv/bin/rekindle admin backup-now 1", markup=False)
    if exit_after_backup:
        _stop(cloud, storage, agent)
        return
    out.print("Running; Ctrl-C stops (data stays in var/).")
    # Stop cleanly on Ctrl-C and on SIGTERM (service managers), even when started in the
    # background by a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        _stop(cloud, storage, agent)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _wait(svc: Any, actor: Any, job_id: int, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        job, missed = svc.get_job(actor, job_id)
        prog = job.progress or {}
        line = (
            f"  {job.state}: {prog.get('files_done', 0)} files, {prog.get('bytes_done', 0)} bytes"
        )
        if line != last and job.state == "running":
            out.print(line)
            last = line
        if job.state not in ("queued", "running"):
            msg = f"job {job_id}: {job.state}"
            if job.error:
                msg += f" ({job.error})"
            if missed:
                msg += f"; {len(missed)} missed files"
            out.print(msg)
            if job.state not in ("succeeded", "partial"):
                raise RekindleError(f"the first backup did not succeed: {job.error}")
            return
        time.sleep(0.5)
    raise RekindleError(f"job {job_id} did not finish within {timeout:.0f} s")


def _stop(cloud: Any, storage: Any, agent: Any) -> None:
    agent.stop.set()
    cloud.should_exit = True
    storage.should_exit = True
    time.sleep(0.5)
    sys.stdout.flush()
