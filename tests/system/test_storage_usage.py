"""Storage statistics and the storage-full alert, measured through a real storage node: its
disk by default, or the repositories' bytes against a capacity the operator set; the alert
(and its mail) comes once on the way past 80 % and again only after dropping below 75 %."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rekindle.cloud.app import CloudState
from rekindle.cloud.models import Organization, OutboundEmail
from rekindle.cloud.services import Actor
from rekindle.core.clock import FakeClock
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.repo import Repository, Secret
from rekindle.store.local import LocalBackend


def _org_with_data(state: CloudState, node_dir: Path, tmp_path: Path) -> tuple[Actor, int]:
    svc = state.services
    org_id, _ = svc.create_organization("acme", "admin@acme.test", "correct horse")
    admin = svc.list_admins_by_email("admin@acme.test")
    with svc.db.session() as s:
        org = s.get(Organization, org_id)
        assert org is not None
        key = svc.kek.open(org.repo_key_sealed, f"org:{org.id}".encode())
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.bin").write_bytes(os.urandom(300_000))
    repo_dir = node_dir / "orgs" / str(org_id)
    with Repository.init(
        LocalBackend(repo_dir), Secret(operator_key=key), cache_root=tmp_path / "c"
    ) as repo:
        backup(repo, BackupOptions(paths=[str(src)], estimate=False, parent=None))
    stored = sum(f.stat().st_size for f in repo_dir.rglob("*") if f.is_file())
    return Actor(admin.id, admin.org_id, admin.role), stored


def test_usage_statistics_and_the_storage_full_alert(
    cloud_and_node: tuple[CloudState, Path, FakeClock], tmp_path: Path
) -> None:
    state, node_dir, _clock = cloud_and_node
    svc, m = state.services, state.maintenance
    svc.email = True
    actor, stored = _org_with_data(state, node_dir, tmp_path)
    storage = svc.list_storages(actor)[0]

    # no capacity set: the node's disk (whether it is past 80 % is this machine's business)
    disk = shutil.disk_usage(node_dir)
    assert m.check_storages() == (1 if disk.used / disk.total >= 0.8 else 0)
    (row,) = svc.statistics(actor)["storages"]
    assert row["total_bytes"] == disk.total and 0 < row["used_bytes"] <= disk.total

    # a capacity just above what the repository takes: 91 % full, one alert, one mail
    svc.set_storage_capacity(storage.id, int(stored * 1.1))
    assert m.check_storages() == 1
    assert m.check_storages() == 0  # once on the way up
    (row,) = svc.statistics(actor)["storages"]
    assert row["used_bytes"] == stored and row["percent"] == round(100 / 1.1, 1)
    (alert,) = [e for e in svc.list_events(actor, alerts=True) if e.kind == "storage.full"]
    assert "91% full" in alert.message
    with svc.db.session() as s:
        (mail,) = s.query(OutboundEmail).all()
        assert "a storage is nearly full" in mail.subject and mail.recipients == ["admin@acme.test"]
    # room again (below 75 %), then full again: a new alert
    svc.set_storage_capacity(storage.id, stored * 2)
    assert m.check_storages() == 0
    svc.set_storage_capacity(storage.id, stored)
    assert m.check_storages() == 1

    stats = svc.statistics(actor)
    assert stats["storages"][0]["name"] == storage.name
    assert stats["cold_bytes"] is None  # measured by the retention run, which has not run
