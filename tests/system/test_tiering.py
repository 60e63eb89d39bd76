"""Tiering for real: four months of daily backups (the engine, injected clock) in an
organization's repository on a storage node with a local archive tier; the cloud (in process,
same clock) runs its daily retention run, which moves what only restore points older than the
policy's 90 days use to the archive tier through the node, with its maintenance token.

Afterwards: data packs really sit in the archive directory; every warm restore point plans a
restore with nothing to thaw and restores byte for byte straight away; a cold one plans
exactly a defreeze; statistics show warm and cold bytes per organization, storage and
server; and a second run moves nothing more."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from rekindle.cloud.app import CloudState
from rekindle.cloud.models import RestorePoint
from rekindle.core.clock import FakeClock
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.repo import Repository, Secret
from rekindle.repository.restore import restore
from rekindle.store.tier import LocalArchiveBackend
from tests.helpers import SMALL_CHUNKS
from tests.system.conftest import START_2024, tenant

DAYS = 120
COLD_AFTER = timedelta(days=90)


def test_the_daily_run_moves_cold_data_and_warm_restores_never_wait(
    cloud_and_archive_node: tuple[CloudState, Path, FakeClock], tmp_path: Path
) -> None:
    state, node_dir, clock = cloud_and_archive_node
    svc = state.services
    org = tenant(state, tmp_path / "src")
    src = org.src

    # Each day adds a file of its own and drops the one from ten days before: old data lives
    # only in old restore points. Small packs, so that days do not share one pack.
    warm_dir = node_dir / "orgs" / str(org.org_id)
    archive_dir = tmp_path / "archive" / "orgs" / str(org.org_id)
    secret = Secret(operator_key=org.key)
    ids: list[str] = []
    files: dict[str, dict[str, bytes]] = {}
    with Repository.init(
        LocalArchiveBackend(warm_dir, archive_dir),
        secret,
        cache_root=tmp_path / "engine-cache",
        clock=clock,
        pack_size=128 * 1024,
        chunk_sizes=SMALL_CHUNKS,
    ) as repo:
        for day in range(DAYS):
            (src / f"day-{day}.bin").write_bytes(os.urandom(48 * 1024))
            (src / f"day-{day - 10}.bin").unlink(missing_ok=True)
            snap = backup(
                repo,
                BackupOptions(paths=[str(src)], estimate=False, parent=ids[-1] if ids else None),
            ).snapshot
            ids.append(snap.id)
            files[snap.id] = {f.name: f.read_bytes() for f in src.iterdir()}
            clock.advance(86400)
    times = {sid: START_2024 + timedelta(days=d) for d, sid in enumerate(ids)}
    with svc.db.session() as s:
        s.add_all(
            RestorePoint(
                org_id=org.org_id,
                server_id=org.server_id,
                backup_set_id=org.backup_set_id,
                snapshot_id=sid,
                time=when,
                paths=[str(src)],
                files=10,
                bytes=10 * 48 * 1024,
                bytes_added=48 * 1024,
            )
            for sid, when in times.items()
        )

    (run,) = state.maintenance.run_now(org.actor)
    done = state.maintenance.run_next()
    assert done is not None and done.id == run.id
    assert done.state == "succeeded", (done.error, done.report)
    assert "tiering:" in done.report and done.bytes_archived > 0, done.report
    archived = {str(p.relative_to(archive_dir)) for p in archive_dir.rglob("*") if p.is_file()}
    assert archived and all(name.startswith("data/") for name in archived)
    assert not any((warm_dir / name).exists() for name in archived)  # moved, not copied

    # every warm restore point restores at once, every cold one through a defreeze
    now = clock.now()
    with svc.db.session() as s:
        points = s.query(RestorePoint).order_by(RestorePoint.time).all()
    warm = [rp for rp in points if rp.time >= now - COLD_AFTER]
    cold = [rp for rp in points if rp.time < now - COLD_AFTER]
    assert warm and cold
    for rp in warm:
        plan = svc.restore_size(org.actor, rp.id, [])
        assert plan.archived == [], rp.time
    thawed = [svc.restore_size(org.actor, rp.id, []).archived for rp in cold]
    assert any(thawed) and {name for plan in thawed for name in plan} <= archived
    with Repository.open(
        LocalArchiveBackend(warm_dir, archive_dir), secret, cache_root=tmp_path / "c2"
    ) as repo:
        for rp in (warm[0], warm[-1]):
            target = tmp_path / f"restored-{rp.id}"
            stats = restore(repo, repo.read_snapshot(rp.snapshot_id), target)
            assert not stats.errors, stats.errors
            restored = target / str(src).lstrip("/")
            got = {f.name: f.read_bytes() for f in restored.iterdir()}
            assert got == files[rp.snapshot_id]

    # statistics: the organization, its storage and its server are split warm / cold
    stats = svc.statistics(org.actor)
    assert stats["cold_bytes"] > 0 and stats["warm_bytes"] > 0
    (storage,) = stats["storages"]
    assert storage["cold_bytes"] == sum((archive_dir / n).stat().st_size for n in archived)
    assert storage["warm_bytes"] == sum(
        f.stat().st_size for d in ("data", "tree") for f in (warm_dir / d).rglob("*") if f.is_file()
    )
    (server,) = stats["servers"]
    assert server["cold_bytes"] > 0 and server["warm_bytes"] > 0

    # a second run at once finds nothing more to move, and keeps the measure
    (run2,) = state.maintenance.run_now(org.actor)
    again = state.maintenance.run_next()
    assert again is not None and again.id == run2.id and again.state == "succeeded"
    assert again.bytes_archived == 0, again.report
    assert svc.statistics(org.actor)["cold_bytes"] >= stats["cold_bytes"]
