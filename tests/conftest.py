"""Fixtures shared by every test layer: real servers started on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 server (moto in server mode) on 127.0.0.1 for this test session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.environ.pop("AWS_ENDPOINT_URL", None)


_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any credentials
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-")[:40].strip("-]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).rstrip("-")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        for obj in client.list_objects_v2(Bucket=name).get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.close()
    return name


def _initdb() -> str | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL cluster on 127.0.0.1 for this session (Debian's postgresql, run as
    user postgres because initdb refuses root). Yields a server URL without a database."""
    import pwd
    import shutil
    import subprocess
    import time

    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    bindir = os.path.dirname(initdb)
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no 'postgres' user to run the PostgreSQL server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    else:
        pw = pwd.getpwuid(os.geteuid())
        run_as = []
    import tempfile
    from pathlib import Path

    del tmp_path_factory  # pytest's temp dirs are private to root; postgres must enter this one
    base = Path(tempfile.mkdtemp(prefix="rekindle-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    for d in (base, sock):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-c fsync=off -c listen_addresses=127.0.0.1 -p {port} -k {sock} -c max_connections=200"
    subprocess.run(
        [
            *run_as,
            f"{bindir}/pg_ctl",
            "-D",
            str(data),
            "-o",
            opts,
            "-w",
            "-l",
            str(base / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    time.sleep(0.2)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """A fresh, empty catalog database: SQLite in a temp dir, or a new PostgreSQL database."""
    from pathlib import Path

    if request.param == "sqlite":
        assert isinstance(tmp_path, Path)
        return f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    server: str = request.getfixturevalue("postgres_server")
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    dsn = server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
