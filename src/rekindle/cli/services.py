"""`rekindle cloud`, `rekindle storage` and `rekindle agent`: the long-running processes."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rekindle.core.errors import UsageError

if TYPE_CHECKING:
    from rekindle.cloud.services import CloudServices

cloud_app = typer.Typer(help="The cloud: API, catalog, scheduler, CA.", no_args_is_help=True)
storage_app = typer.Typer(
    help="A storage node serving repositories over HTTPS.", no_args_is_help=True
)
agent_app = typer.Typer(help="The agent on a protected server.", no_args_is_help=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where this process keeps its state.")]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request drowns what matters; our own modules log the outcome.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@cloud_app.command("serve")
def cloud_serve(
    config: Annotated[
        Path | None,
        typer.Option(
            help="Settings file (KEY=VALUE lines, keys as the REKINDLE_CLOUD_* variables)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="State directory [var/cloud].")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port [8443].")] = None,
    storage_url: Annotated[
        str | None,
        typer.Option(help="Storage node assigned by default [https://127.0.0.1:8444]."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [SQLite in the data dir].")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the cloud over HTTPS (creates its CA, keys and database on first start).

    Settings: defaults, then the --config file, then REKINDLE_CLOUD_* variables, then these
    options."""
    from rekindle.cloud.app import create_app, prepare
    from rekindle.cloud.settings import CloudSettings
    from rekindle.net.tlsserver import make_server

    _logging(verbose)
    if config is not None and not config.is_file():
        raise UsageError(f"settings file {config} does not exist")
    given: dict[str, Any] = {
        "data_dir": data_dir,
        "host": host,
        "port": port,
        "storage_url": storage_url,
        "database_url": database_url,
    }
    settings = CloudSettings(
        _env_file=config,  # type: ignore[call-arg]
        **{k: v for k, v in given.items() if v is not None},
    )
    state = prepare(settings)
    if first_admin(state.services, settings.data_dir) is not None:
        pw_file = settings.data_dir / "initial-admin-password"
        sys.stderr.write(
            "first start: created organization 'default' with admin 'admin@localhost'; "
            f"the password is in {pw_file} (mode 0600)\n"
        )
    server = make_server(
        create_app(state),
        host=settings.host,
        port=settings.port,
        certfile=state.tls_cert,
        keyfile=state.tls_key,
        client_ca=state.ca_file,
    )
    logging.getLogger(__name__).info(
        "cloud listening on https://%s:%d", settings.host, settings.port
    )
    server.run()


def first_admin(svc: CloudServices, data_dir: Path) -> str | None:
    """On a cloud without organizations, create 'default' with the admin 'admin@localhost'
    and keep the password in DATA_DIR/initial-admin-password (0600). Returns the password
    when it was just created."""
    from rekindle.net.pki import write_private

    if svc.organization_count():
        return None
    _org, password = svc.create_organization("default", "admin@localhost")
    write_private(data_dir / "initial-admin-password", password.encode() + b"\n")
    return password


@cloud_app.command("add-org")
def cloud_add_org(
    name: str,
    admin_email: str,
    data_dir: DataDir = Path("var/cloud"),
    database_url: Annotated[str, typer.Option()] = "",
) -> None:
    """Create an organization with its first admin; prints the admin's password once."""
    from rekindle.cloud.app import prepare
    from rekindle.cloud.settings import CloudSettings

    state = prepare(CloudSettings(data_dir=data_dir, database_url=database_url))
    org_id, password = state.services.create_organization(name, admin_email)
    sys.stdout.write(f"organization {org_id} '{name}': admin {admin_email} password {password}\n")


@cloud_app.command("add-storage")
def cloud_add_storage(
    name: str,
    url: Annotated[str, typer.Argument(help="Where agents reach the node: https://HOST:PORT")],
    data_dir: DataDir = Path("var/cloud"),
    database_url: Annotated[str, typer.Option()] = "",
    capacity_gib: Annotated[
        float | None,
        typer.Option(help="Capacity for the 80 % alert (default: the node's disk)."),
    ] = None,
) -> None:
    """Register another storage node; admins then pick it for a server group
    (`rekindle admin group-add NAME --storage ID`)."""
    from rekindle.cloud.app import prepare
    from rekindle.cloud.settings import CloudSettings

    state = prepare(CloudSettings(data_dir=data_dir, database_url=database_url))
    capacity = int(capacity_gib * 2**30) if capacity_gib else None
    storage = state.services.add_storage(name, url, capacity)
    sys.stdout.write(f"storage {storage.id} '{name}' at {storage.url}\n")


@cloud_app.command("storage-capacity")
def cloud_storage_capacity(
    storage_id: int,
    gib: Annotated[
        float | None, typer.Option(help="Capacity in GiB; leave out for the node's disk.")
    ] = None,
    data_dir: DataDir = Path("var/cloud"),
    database_url: Annotated[str, typer.Option()] = "",
) -> None:
    """Set the capacity a storage's 80 % alert measures against."""
    from rekindle.cloud.app import prepare
    from rekindle.cloud.settings import CloudSettings

    state = prepare(CloudSettings(data_dir=data_dir, database_url=database_url))
    storage = state.services.set_storage_capacity(storage_id, int(gib * 2**30) if gib else None)
    where = f"{storage.capacity_bytes} bytes" if storage.capacity_bytes else "the node's disk"
    sys.stdout.write(f"storage {storage.id} '{storage.name}': capacity {where}\n")


@cloud_app.command("storage-credentials")
def cloud_storage_credentials(
    out: Annotated[Path, typer.Option(help="The storage node's data directory.")],
    hostname: Annotated[list[str], typer.Option("--hostname", help="Names of the node.")],
    data_dir: DataDir = Path("var/cloud"),
) -> None:
    """Give a storage node a TLS certificate from the cloud's CA and the token public key."""
    write_storage_credentials(data_dir, out, hostname)
    sys.stdout.write(f"wrote {out}/tls.pem, tls.key and token.pub\n")


def write_storage_credentials(cloud_dir: Path, out: Path, hostnames: list[str]) -> None:
    from rekindle.net.pki import CertificateAuthority, ensure_server_cert
    from rekindle.net.tokens import load_or_create_signing_key, public_pem

    ca = CertificateAuthority.load_or_create(cloud_dir / "ca")
    out.mkdir(parents=True, exist_ok=True)
    ensure_server_cert(ca, out, hostnames)
    key = load_or_create_signing_key(cloud_dir / "keys" / "token.key")
    (out / "token.pub").write_bytes(public_pem(key))


@storage_app.command("serve")
def storage_serve(
    data_dir: DataDir = Path("var/storage"),
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8444,
    backend: Annotated[
        str | None,
        typer.Option(
            envvar="REKINDLE_STORAGE_BACKEND",
            help=(
                "Keep the repositories on S3 instead: s3://BUCKET or s3://BUCKET/PREFIX"
                " (AWS_* variables)."
            ),
        ),
    ] = None,
    archive_dir: Annotated[
        Path | None,
        typer.Option(help="An archive tier on another disk (local repositories)."),
    ] = None,
    archive_class: Annotated[
        str | None,
        typer.Option(help="An archive tier on S3: GLACIER or DEEP_ARCHIVE (with --backend)."),
    ] = None,
    thaw_delay_s: Annotated[
        float,
        typer.Option(
            min=0,
            help="How long a thaw takes: the local archive waits this long (slow media); "
            "on S3, what to tell admins (default: what S3 documents).",
        ),
    ] = 0.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve each organization's repository over HTTPS: under DATA_DIR/orgs, or under
    BACKEND/orgs on S3. DATA_DIR must hold tls.pem, tls.key and token.pub (`rekindle cloud
    storage-credentials`); the node keeps its ledger (lock owners, restore grants) there."""
    if archive_class and not backend:
        raise UsageError("--archive-class needs --backend s3://...; use --archive-dir on disk")
    if archive_dir is not None and backend:
        raise UsageError("--archive-dir is for local repositories; on S3 use --archive-class")
    from rekindle.net.tlsserver import make_server
    from rekindle.storagenode.app import node_app

    _logging(verbose)
    for f in ("tls.pem", "tls.key", "token.pub"):
        if not (data_dir / f).exists():
            raise UsageError(
                f"{data_dir / f} is missing: run 'rekindle cloud storage-credentials' first"
            )
    server = make_server(
        node_app(
            data_dir,
            backend,
            archive_dir=archive_dir,
            archive_class=archive_class,
            thaw_delay_s=thaw_delay_s,
        ),
        host=host,
        port=port,
        certfile=data_dir / "tls.pem",
        keyfile=data_dir / "tls.key",
    )
    logging.getLogger(__name__).info(
        "storage node listening on https://%s:%d, repositories in %s",
        host,
        port,
        f"{backend}/orgs" if backend else data_dir / "orgs",
    )
    server.run()


@agent_app.command("enroll")
def agent_enroll(
    cloud: Annotated[str, typer.Option(help="The cloud's URL, https://HOST:PORT.")],
    token: Annotated[str, typer.Option(help="Activation token from the console or CLI.")],
    ca_fingerprint: Annotated[
        str | None,
        typer.Option(help="SHA-256 fingerprint of the cloud's CA (shown with the token)."),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="The cloud's CA certificate, instead of a fingerprint.")
    ] = None,
    data_dir: DataDir = Path("/var/lib/rekindle-agent"),
    hostname: Annotated[str | None, typer.Option(help="Name to enroll under.")] = None,
) -> None:
    """Register this server with the cloud: get a client certificate, pin the cloud's CA."""
    from rekindle.agent.client import enroll, fetch_ca
    from rekindle.agent.state import AgentState

    if ca_file is not None:
        ca_pem = ca_file.read_bytes()
    elif ca_fingerprint:
        ca_pem = fetch_ca(cloud, ca_fingerprint)
    else:
        raise UsageError("give --ca-fingerprint (shown with the activation token) or --ca-file")
    state = AgentState(data_dir)
    if state.enrolled:
        raise UsageError(f"{data_dir} already holds an enrolled agent; remove it to enroll again")
    ident = enroll(state, cloud, token, ca_pem=ca_pem, hostname=hostname)
    sys.stdout.write(
        f"enrolled as server {ident.server_id}; start the agent with "
        f"'rekindle agent run --data-dir {data_dir}'\n"
    )


@agent_app.command("run")
def agent_run(
    data_dir: DataDir = Path("/var/lib/rekindle-agent"),
    hostname: Annotated[str | None, typer.Option()] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the agent daemon: poll the cloud, run backups and restores."""
    from rekindle.agent.daemon import Agent
    from rekindle.agent.state import AgentState

    _logging(verbose)
    from rekindle.core.memory import limit_malloc_arenas

    limit_malloc_arenas()  # an agent's backups run in threads, for days on end
    Agent(AgentState(data_dir), hostname=hostname or socket.gethostname()).run()
