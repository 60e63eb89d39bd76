"""A retention run for real: two simulated years of daily backups (the engine, with an
injected clock) in an organization's repository served by a real storage node; the cloud
(in process, on the same injected clock) expires what the default policy no longer keeps
through the node with its maintenance token, prunes and checks. Afterwards exactly the
restore points the rules keep remain, in the catalog and in the repository, the space of the
others is reclaimed, `check --read-data` passes and the newest restores byte for byte."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from rekindle.cloud.app import CloudState
from rekindle.cloud.models import RestorePoint
from rekindle.core.clock import FakeClock
from rekindle.repository.backup import BackupOptions, backup
from rekindle.repository.check import check
from rekindle.repository.repo import Repository, Secret
from rekindle.repository.restore import restore
from rekindle.store.local import LocalBackend
from tests.cloud.test_retention import _kept_by_the_rules
from tests.system.conftest import START_2024, installation, tenant

DAYS = 730
START = START_2024


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_two_years_of_daily_backups_then_a_retention_run(
    cloud_and_node: tuple[CloudState, Path, FakeClock], tmp_path: Path
) -> None:
    state, node_dir, clock = cloud_and_node
    svc = state.services
    org = tenant(state, tmp_path / "src")
    actor, org_id, key, server, src = org.actor, org.org_id, org.key, org.server_id, org.src

    # Two years of daily backups straight into the node's directory: each day adds a file of
    # its own and drops the one from ten days before, so old data lives only in old points.
    repo_dir = node_dir / "orgs" / str(org_id)
    repo_dir.mkdir(parents=True)
    secret = Secret(operator_key=key)
    ids: list[str] = []
    with Repository.init(
        LocalBackend(repo_dir), secret, cache_root=tmp_path / "engine-cache", clock=clock
    ) as repo:
        for day in range(DAYS):
            (src / f"day-{day}.bin").write_bytes(os.urandom(4096))
            (src / f"day-{day - 10}.bin").unlink(missing_ok=True)
            result = backup(
                repo,
                BackupOptions(paths=[str(src)], estimate=False, parent=ids[-1] if ids else None),
            )
            ids.append(result.snapshot.id)
            clock.advance(86400)
    times = [START + timedelta(days=d) for d in range(DAYS)]
    with svc.db.session() as s:
        s.add_all(
            RestorePoint(
                org_id=org_id,
                server_id=server,
                backup_set_id=org.backup_set_id,
                snapshot_id=sid,
                time=t,
                paths=[str(src)],
                files=10,
                bytes=40960,
                bytes_added=4096,
            )
            for sid, t in zip(ids, times, strict=True)
        )
    kept = {ids[i] for i in _kept_by_the_rules(times)}
    data_before = _du(repo_dir / "data")

    (run,) = state.maintenance.run_now(actor)
    done = state.maintenance.run_next()
    assert done is not None and done.id == run.id
    assert done.state == "succeeded", (done.error, done.report)
    assert done.removed == DAYS - len(kept)
    assert "check: no errors" in done.report

    with svc.db.session() as s:
        catalog = {rp.snapshot_id for rp in s.query(RestorePoint).all()}
    assert catalog == kept
    in_storage = {f.name for f in (repo_dir / "snapshots").iterdir()}
    assert in_storage == kept
    assert ids[-1] in kept  # the newest stays
    data_after = _du(repo_dir / "data")
    assert data_after < data_before * 0.5, (data_before, data_after)
    assert done.bytes_freed > 0
    events = [e.message for e in svc.list_events(actor)]
    assert any(f"removed {done.removed} restore point(s)" in m for m in events)

    with Repository.open(LocalBackend(repo_dir), secret, cache_root=tmp_path / "c2") as repo:
        report = check(repo, read_data=True)
        assert report.ok, report.errors
        target = tmp_path / "restored"
        restore(repo, repo.read_snapshot(ids[-1]), target)
    restored = target / str(src).lstrip("/")
    assert sorted(f.name for f in restored.iterdir()) == sorted(f.name for f in src.iterdir())
    for f in src.iterdir():
        assert (restored / f.name).read_bytes() == f.read_bytes()


def test_a_shorter_retention_from_the_command_line(tmp_path: Path) -> None:
    env = {"REKINDLE_CLOUD_MAINTENANCE_POLL_S": "1", "REKINDLE_CLOUD_PRUNE_GRACE_S": "0"}
    with installation(extra_env=env) as product:
        src = product.root / "src-ret"
        src.mkdir()
        product.add_agent("ret", src)
        for i in range(3):
            (src / f"v{i}.txt").write_text(f"version {i}\n" * 5000)
            assert (b := product.backup_now("ret"))["state"] == "succeeded", b
        points = product.admin_json("restore-points")
        assert len(points) == 3
        policy = product.admin_json("groups")[0]["policy_id"]
        shorter = ["--keep-within-days", "0", "--keep-daily", "1", "--keep-weekly", "0"]
        shorter += ["--keep-monthly", "0", "--keep-yearly", "0"]
        refused = product.admin("policy-set", str(policy), *shorter, check=False)
        assert refused.returncode == 1
        assert "removes 2 restore point(s)" in refused.stderr
        assert "run again with --yes" in refused.stderr
        assert len(product.admin_json("restore-points")) == 3  # nothing changed
        product.admin("policy-set", str(policy), *shorter, "--yes")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = [r for r in product.admin_json("retention-runs") if r["trigger"] == "policy"]
            if runs and runs[0]["state"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        assert runs[0]["state"] == "succeeded", runs[0]
        assert runs[0]["removed"] == 2 and "check: no errors" in runs[0]["report"]
        (left,) = product.admin_json("restore-points")
        assert left["id"] == points[0]["id"]  # the newest (the list is newest first)
        dest = product.root / "after-retention"
        job = product.admin_json("restore", str(left["id"]), "--to-path", str(dest))
        assert product.wait_job(job["id"])["state"] == "succeeded"
        restored = dest / str(src).lstrip("/")
        for i in range(3):
            assert (restored / f"v{i}.txt").read_text() == f"version {i}\n" * 5000

        # the other new commands of the same kind, as a script would use them
        spare = product.admin_json("policy-add", "spare")
        assert product.admin("policy-remove", str(spare["id"])).stdout == (
            f"policy {spare['id']} removed\n"
        )
        refused = product.admin("policy-remove", str(policy), check=False)
        assert refused.returncode == 1 and "used by server group(s)" in refused.stderr
        (bs,) = product.admin_json("backup-sets", str(product.servers["ret"]))
        changed = product.admin_json("backup-set-set", str(bs["id"]), "--exclude", "*.tmp")
        assert changed["exclude"] == ["*.tmp"] and changed["include"] == bs["include"]
        removed = product.admin("backup-set-remove", str(bs["id"])).stdout
        assert removed == f"backup set {bs['id']} removed\n"
        assert product.admin_json("backup-sets", str(product.servers["ret"])) == []
        assert len(product.admin_json("restore-points")) == 1  # kept with its set gone
