"""A whole installation in real processes on loopback over TLS: `rekindle cloud serve`,
`rekindle storage serve` and agents (`rekindle agent run`), driven with `rekindle admin`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rekindle.cli.services import write_storage_credentials
from rekindle.cloud.app import CloudState, prepare
from rekindle.cloud.settings import CloudSettings
from rekindle.core.clock import FakeClock
from tests.conftest import _free_port

REKINDLE = str(Path(sys.executable).parent / "rekindle")


def _wait_healthy(url: str, ca: Path | None, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited early:\n{log.read_text()}")
        try:
            verify = ssl.create_default_context(cafile=str(ca)) if ca else False
            httpx.get(f"{url}/health", verify=verify, timeout=2).raise_for_status()
            return
        except (httpx.HTTPError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up:\n{log.read_text()}")


@dataclass
class Product:
    root: Path
    cloud_url: str
    storage_url: str
    ca: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: dict[str, int] = field(default_factory=dict)
    commands: dict[str, tuple[tuple[str, ...], list[str] | None]] = field(default_factory=dict)

    def start(
        self, name: str, *args: str, prefix: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*(prefix or []), REKINDLE, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.commands[name] = (args, prefix)
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Stop a process (SIGTERM) and start it again with the same command."""
        self.stop(name)
        args, prefix = self.commands[name]
        return self.start(name, *args, prefix=prefix)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [REKINDLE, "admin", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"rekindle admin {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}"
            )
        return p

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args, "--json").stdout)

    def agent_dir(self, host: str) -> Path:
        return self.root / f"agent-{host}"

    def enroll(self, host: str, group_id: int) -> int:
        token = self.admin_json("activation-token", str(group_id))["token"]
        out = subprocess.run(
            [
                REKINDLE,
                "agent",
                "enroll",
                "--cloud",
                self.cloud_url,
                "--ca-file",
                str(self.ca),
                "--token",
                token,
                "--data-dir",
                str(self.agent_dir(host)),
                "--hostname",
                host,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "enrolled as server" in out.stdout
        sid = int(json.loads((self.agent_dir(host) / "agent.json").read_text())["server_id"])
        self.servers[host] = sid
        return sid

    def start_agent(self, host: str) -> None:
        self.start(
            f"agent-{host}",
            "agent",
            "run",
            "--data-dir",
            str(self.agent_dir(host)),
            "--hostname",
            host,
        )

    def wait_connected(self, host: str, *, connected: bool = True, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = {s["id"]: s for s in self.admin_json("servers")}
            if rows[self.servers[host]]["connected"] is connected:
                return
            time.sleep(0.3)
        raise AssertionError(f"agent {host} still {'dis' if connected else ''}connected")

    def wait_job(self, job_id: int, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.admin_json("job", str(job_id))
            if job["state"] not in ("defreezing", "queued", "running"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not finish: {job}")

    def add_agent(self, host: str, src: Path) -> int:
        """Enroll HOST into the first group, give it a backup set of SRC, start its agent and
        wait until it is connected. Returns the server id."""
        group = self.admin_json("groups")[0]["id"]
        sid = self.enroll(host, group)
        self.admin("backup-set-add", str(sid), "files", "--include", str(src))
        self.start_agent(host)
        self.wait_connected(host)
        return sid

    def wait_uploading(self, job_id: int, timeout: float = 60) -> dict[str, Any]:
        """Wait until a job runs and has reported bytes done; returns its last state."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = self.admin_json("job", str(job_id))
            if row["state"] == "running" and row["progress"].get("bytes_done", 0) > 0:
                break
            time.sleep(0.2)
        return row

    def backup_now(self, host: str) -> dict[str, Any]:
        job = self.admin_json("backup-now", str(self.servers[host]))
        return self.wait_job(job["id"])


@contextlib.contextmanager
def installation(
    storage_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
) -> Iterator[Product]:
    """Cloud and storage node started, the first admin logged in; stopped and removed after."""
    root = Path(tempfile.mkdtemp(prefix="rekindle-sys-"))
    cport, sport = _free_port(), _free_port()
    cloud_url, storage_url = f"https://127.0.0.1:{cport}", f"https://127.0.0.1:{sport}"
    env = {
        **os.environ,
        **(extra_env or {}),
        "REKINDLE_ADMIN_CONFIG": str(root / "admin.json"),
        "REKINDLE_CLOUD_SCHEDULER_INTERVAL_S": "1",
        "REKINDLE_CLOUD_MAINTENANCE_POLL_S": "1",
        "REKINDLE_CACHE_DIR": str(root / "cache"),
    }
    prod = Product(root, cloud_url, storage_url, root / "cloud" / "ca" / "ca.pem", env)
    try:
        subprocess.run(
            [
                REKINDLE,
                "cloud",
                "storage-credentials",
                "--data-dir",
                str(root / "cloud"),
                "--out",
                str(root / "storage"),
                "--hostname",
                "127.0.0.1",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        cloud = prod.start(
            "cloud",
            "cloud",
            "serve",
            "--data-dir",
            str(root / "cloud"),
            "--port",
            str(cport),
            "--storage-url",
            storage_url,
        )
        _wait_healthy(cloud_url, prod.ca, cloud, root / "cloud.log")
        storage = prod.start(
            "storage",
            "storage",
            "serve",
            "--data-dir",
            str(root / "storage"),
            "--port",
            str(sport),
            *storage_args,
        )
        _wait_healthy(storage_url, prod.ca, storage, root / "storage.log")
        prod.admin(
            "login",
            "--cloud",
            cloud_url,
            "--ca-file",
            str(prod.ca),
            "--password-file",
            str(root / "cloud" / "initial-admin-password"),
        )
        try:
            yield prod
        except BaseException:
            _print_logs(root)  # a failure in CI is understood from its output alone
            raise
    finally:
        for name in list(prod.procs):
            prod.stop(name)
        shutil.rmtree(root, ignore_errors=True)


def _print_logs(root: Path, tail: int = 60) -> None:
    """The last lines of each process's log, for pytest's captured output of a failure."""
    for log in sorted(root.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-tail:]
        print(f"----- {log.name} (last {len(lines)} lines) -----", *lines, sep="\n")


@pytest.fixture(scope="module")
def product() -> Iterator[Product]:
    with installation() as prod:
        yield prod


def next_minute() -> str:
    """A start time 30 to 90 seconds ahead: the command that sets it must reach the cloud
    before that minute begins, or the schedule fires only the next day."""
    t = datetime.now(UTC) + timedelta(seconds=90)
    return f"{t:%H:%M}"


@pytest.fixture
def cloud_and_node(tmp_path: Path) -> Iterator[tuple[CloudState, Path, FakeClock]]:
    """A cloud in this process on an injected clock (START_2024), its default storage a real
    storage node process on local disk; (cloud state, the node's data directory, clock)."""
    with cloud_with_node(tmp_path) as found:
        yield found


@pytest.fixture
def cloud_and_archive_node(tmp_path: Path) -> Iterator[tuple[CloudState, Path, FakeClock]]:
    """`cloud_and_node` with a local archive tier in tmp_path/archive (thaws take 2 s)."""
    node_args = ("--archive-dir", str(tmp_path / "archive"), "--thaw-delay-s", "2")
    with cloud_with_node(tmp_path, node_args) as found:
        yield found


@contextlib.contextmanager
def cloud_with_node(
    tmp_path: Path, node_args: tuple[str, ...] = ()
) -> Iterator[tuple[CloudState, Path, FakeClock]]:
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    clock = FakeClock(START_2024)
    settings = CloudSettings(
        data_dir=tmp_path / "cloud", storage_url=url, prune_grace_s=0, retention_interval_h=24
    )
    state = prepare(settings, clock=clock)
    node_dir = tmp_path / "storage"
    write_storage_credentials(tmp_path / "cloud", node_dir, ["127.0.0.1"])
    log = tmp_path / "storage.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [
                REKINDLE,
                "storage",
                "serve",
                "--data-dir",
                str(node_dir),
                "--port",
                str(port),
                *node_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REKINDLE_CACHE_DIR": str(tmp_path / "cache")},
        )
    try:
        _wait_healthy(url, state.ca_file, node, log)
        yield state, node_dir, clock
    finally:
        node.terminate()
        node.wait(timeout=30)
        state.services.db.close()


START_2024 = datetime(2024, 1, 1, 22, 0, tzinfo=UTC)


@dataclass
class Tenant:
    """An organization with one enrolled server and a backup set of `src`, made through the
    cloud's services, and the key of its repository (for the engine to write to directly)."""

    actor: Any
    org_id: int
    key: bytes
    server_id: int
    backup_set_id: int
    src: Path


def tenant(state: CloudState, src: Path, hostname: str = "web1") -> Tenant:
    from rekindle.cloud.models import Organization
    from rekindle.cloud.services import Actor
    from rekindle.net import pki
    from rekindle.net import protocol as p

    svc = state.services
    org_id, _password = svc.create_organization("acme", "admin@acme.test", "correct horse")
    admin = svc.list_admins_by_email("admin@acme.test")
    actor = Actor(admin.id, admin.org_id, admin.role)
    with svc.db.session() as s:
        org = s.get(Organization, org_id)
        assert org is not None
        key = svc.kek.open(org.repo_key_sealed, f"org:{org.id}".encode())
    token = svc.create_activation_token(actor, svc.list_groups(actor)[0].id)
    server = svc.enroll(
        p.EnrollRequest(
            token=token,
            hostname=hostname,
            os="Linux",
            csr_pem=pki.make_csr(pki.new_key(), hostname).decode(),
        )
    ).server_id
    src.mkdir(exist_ok=True)
    backup_set = svc.create_backup_set(actor, server, "files", [str(src)], [])
    return Tenant(actor, org_id, key, server, backup_set.id, src)
