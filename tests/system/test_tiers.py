"""The archive tier through a real storage node: only the cloud's maintenance token archives
data packs, reads of an archived pack fail with a clear error until a thaw, the local
archive's thaw takes its configured delay, and a node without an archive tier says so."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rekindle.cli.services import write_storage_credentials
from rekindle.core.errors import ArchivedError, StorageError
from rekindle.net import tokens
from rekindle.net.pki import CertificateAuthority
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.repo import Repository, Secret
from rekindle.store.http import HttpBackend
from tests.conftest import _free_port
from tests.system.conftest import REKINDLE, _wait_healthy

KEY = b"k" * 32


@dataclass
class Node:
    url: str
    ca: Path
    token_key: object
    archive_dir: Path
    opened: list[HttpBackend] = field(default_factory=list)

    def backend(self, access: tokens.Access, org: int = 1) -> HttpBackend:
        now = int(time.time())
        claims = tokens.StorageClaims(
            org=org, server=1, job=7, access=access, snapshot="", iat=now, exp=now + 600
        )
        token = tokens.sign(self.token_key, claims)  # type: ignore[arg-type]
        http = HttpBackend(self.url, org, token, ca_file=str(self.ca))
        self.opened.append(http)
        return http


def _node(tmp_path: Path, *args: str) -> Iterator[Node]:
    cloud = tmp_path / "cloud"
    CertificateAuthority.load_or_create(cloud / "ca")
    key = tokens.load_or_create_signing_key(cloud / "keys" / "token.key")
    data = tmp_path / "storage"
    write_storage_credentials(cloud, data, ["127.0.0.1"])
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REKINDLE, "storage", "serve", "--data-dir", str(data), "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REKINDLE_CACHE_DIR": str(tmp_path / "cache")},
        )
    try:
        _wait_healthy(url, cloud / "ca" / "ca.pem", proc, log)
        node = Node(url, cloud / "ca" / "ca.pem", key, tmp_path / "archive")
        yield node
        for http in node.opened:
            http.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _node(tmp_path, "--archive-dir", str(tmp_path / "archive"), "--thaw-delay-s", "2")


def _backed_up(node: Node, tmp_path: Path) -> tuple[list[str], list[str]]:
    """A repository with one backup through the node; (data packs, tree packs)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    http = node.backend("backup")
    with Repository.init(http, Secret(operator_key=KEY), cache_root=tmp_path / "c") as repo:
        backup(repo, BackupOptions(paths=[str(src)], estimate=False, parent=None))
    every = node.backend("maintenance")
    data = [i.name for i in every.list("data/")]
    trees = [i.name for i in every.list("tree/")]
    return data, trees


def test_archive_and_thaw_through_the_node(node: Node, tmp_path: Path) -> None:
    data, trees = _backed_up(node, tmp_path)
    assert data and trees
    pack = data[0]
    info = node.backend("catalog").tier_info()
    assert info == {"archive": True, "kind": "local", "thaw_estimate_s": 2.0}
    for access in ("backup", "restore", "catalog"):
        with pytest.raises(StorageError, match="may not archive"):
            node.backend(access).tier("archive", [pack])
    with pytest.raises(StorageError, match="not a data pack"):
        node.backend("maintenance").tier("archive", [trees[0]])
    assert node.backend("maintenance").tier("archive", [pack]) == {pack: "archived"}
    assert (node.archive_dir / "orgs" / "1" / pack).exists()
    catalog = node.backend("catalog")
    with pytest.raises(ArchivedError, match="needs a defreeze"):
        catalog.read(pack)
    assert pack in {i.name for i in catalog.list("data/")}  # still listed
    assert catalog.tier("thaw", [pack], days=1) == {pack: "thawing"}
    with pytest.raises(ArchivedError):
        catalog.read(pack)
    deadline = time.monotonic() + 30
    while catalog.tier("state", [pack])[pack] != "thawed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert len(catalog.read(pack)) == catalog.stat(pack).size
    with pytest.raises(StorageError, match="may not thaw"):
        node.backend("backup").tier("thaw", [pack])


def test_a_node_without_an_archive_tier_says_so(tmp_path: Path) -> None:
    for n in _node(tmp_path):
        data, _trees = _backed_up(n, tmp_path)
        assert n.backend("catalog").tier_info()["archive"] is False
        with pytest.raises(StorageError, match="no archive tier"):
            n.backend("maintenance").tier("archive", data[:1])


def test_backup_worker_processes_store_their_packs_on_the_node(node: Node, tmp_path: Path) -> None:
    """An agent's backup of many small files: its worker processes open their own client
    to the node (TLS, the same token, retries) and store their packs there themselves."""
    from rekindle.repository.check import check
    from rekindle.repository.restore import RestoreOptions, restore
    from rekindle.store.retry import RetryingBackend
    from tests.helpers import tree_differences

    src = tmp_path / "src"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(100 + 31 * i))
    http = RetryingBackend(node.backend("backup"))
    assert http.writer_factory() is not None
    opts = BackupOptions(
        paths=[str(src)],
        estimate=False,
        parent=None,
        processes=2,
        process_after_files=0,
        wait_for_processes=True,
    )
    with Repository.init(http, Secret(operator_key=KEY), cache_root=tmp_path / "c") as repo:
        result = backup(repo, opts)
        assert result.stats.worker_processes == 2
    every = node.backend("maintenance")  # a backup token may not list
    with Repository.open(every, Secret(operator_key=KEY), cache_root=tmp_path / "c2") as repo:
        assert check(repo, read_data=True).ok
        restore(repo, result.snapshot, tmp_path / "out", RestoreOptions(processes=0))
    assert tree_differences(src, tmp_path / "out" / str(src).lstrip("/")) == []
