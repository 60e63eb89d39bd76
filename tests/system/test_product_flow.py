"""The product end to end, in the order an admin meets it: enroll two agents, back up (full,
then incremental), restore to another path, to the other server and to the original place,
queue a Backup Now for an offline agent, refuse a restore that does not fit, and let a
one-minute schedule fire. Real processes on loopback, every connection over TLS."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.system.conftest import REKINDLE as REKINDLE_BIN
from tests.system.conftest import Product, next_minute

STATE: dict[str, Any] = {}


def _same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, (
        cmp.left_only,
        cmp.right_only,
        cmp.diff_files,
    )
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert not mismatch and not errors
    for d in cmp.common_dirs:
        _same_tree(a / d, b / d)


def _make_source(root: Path) -> Path:
    src = root / "src-alpha"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "empty").write_bytes(b"")
    for i in range(40):
        (src / "docs" / f"note-{i}.txt").write_text(f"note {i}\n" * (i + 1))
    (src / "docs" / "deep" / "ünïcode name.txt").write_text("unicode\n")
    os.symlink("docs/note-1.txt", src / "link")
    return src


def test_enroll_two_agents(product: Product) -> None:
    groups = product.admin_json("groups")
    alpha = product.enroll("alpha", groups[0]["id"])
    pol = product.admin_json("policy-add", "every-minute", "--days", "daily", "--start", "00:00")
    grp = product.admin_json("group-add", "scheduled", "--policy", str(pol["id"]))
    beta = product.enroll("beta", grp["id"])
    STATE["policy"] = pol["id"]
    product.start_agent("alpha")
    product.start_agent("beta")
    product.wait_connected("alpha")
    product.wait_connected("beta")
    servers = {s["hostname"]: s for s in product.admin_json("servers")}
    assert servers["alpha"]["id"] == alpha and servers["beta"]["id"] == beta
    assert servers["alpha"]["os"].startswith("Linux")
    # beta's policy fires at the start of the next minute; the last test checks it ran
    # (set up here so that the wait overlaps the other tests)
    beta_src = product.root / "src-beta"
    beta_src.mkdir()
    (beta_src / "a.txt").write_text("beta data\n")
    product.admin("backup-set-add", str(beta), "files", "--include", str(beta_src))
    product.admin("policy-set", str(pol["id"]), "--start", next_minute())


def test_full_then_incremental_backup(product: Product) -> None:
    src = _make_source(product.root)
    STATE["src"] = src
    product.admin("backup-set-add", str(product.servers["alpha"]), "files", "--include", str(src))
    first = product.backup_now("alpha")
    assert first["state"] == "succeeded", first
    assert re.search(r"estimate after \d+ files: \d+ files, \d+ bytes", first["log"]), first
    (src / "docs" / "note-3.txt").write_text("changed\n")
    (src / "new.txt").write_text("new file\n")
    second = product.backup_now("alpha")
    assert second["state"] == "succeeded", second
    points = product.admin_json("restore-points", "--server", str(product.servers["alpha"]))
    assert len(points) == 2
    newest, oldest = points
    assert oldest["bytes_added"] > 3 * 1024 * 1024  # the full backup stored everything
    assert newest["bytes_added"] < 64 * 1024  # the incremental only what changed
    assert newest["files"] == oldest["files"] + 1
    STATE["rp"] = newest["id"]
    STATE["rp_old"] = oldest["id"]


def test_restore_to_another_path(product: Product) -> None:
    src: Path = STATE["src"]
    dest = product.root / "restored-alpha"
    job = product.admin_json("restore", str(STATE["rp"]), "--to-path", str(dest))
    done = product.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    _same_tree(src, dest / str(src).lstrip("/"))
    assert os.readlink(dest / str(src).lstrip("/") / "link") == "docs/note-1.txt"


def test_restore_selected_paths_to_the_other_server(product: Product) -> None:
    src: Path = STATE["src"]
    dest = product.root / "restored-on-beta"
    job = product.admin_json(
        "restore",
        str(STATE["rp"]),
        "--to-server",
        str(product.servers["beta"]),
        "--to-path",
        str(dest),
        "--include",
        str(src / "docs"),
    )
    assert job["server_id"] == product.servers["beta"]
    done = product.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    got = dest / str(src).lstrip("/")
    assert sorted(p.name for p in got.iterdir()) == ["docs"]
    _same_tree(src / "docs", got / "docs")


def test_restore_to_the_original_location(product: Product) -> None:
    src: Path = STATE["src"]
    (src / "docs" / "note-7.txt").unlink()  # lost
    (src / "docs" / "note-8.txt").write_text("edited after the backup\n")
    job = product.admin_json("restore", str(STATE["rp"]), "--existing", "rename")
    done = product.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    assert (src / "docs" / "note-7.txt").read_text() == "note 7\n" * 8
    # keep both: the edited file stays, the restored copy sits beside it
    assert (src / "docs" / "note-8.txt").read_text() == "edited after the backup\n"
    renamed = [p for p in (src / "docs").iterdir() if p.name.startswith("note-8.txt.restored")]
    assert len(renamed) == 1 and renamed[0].read_text() == "note 8\n" * 9


def test_backup_now_for_an_offline_agent_waits_in_the_queue(product: Product) -> None:
    product.stop("agent-alpha")
    product.wait_connected("alpha", connected=False)  # the cloud saw its poll drop
    job = product.admin_json("backup-now", str(product.servers["alpha"]))
    events = product.admin_json("events")
    assert any(e["kind"] == "job.queued" and e["job_id"] == job["id"] for e in events)
    assert product.admin_json("job", str(job["id"]))["state"] == "queued"
    product.start_agent("alpha")
    done = product.wait_job(job["id"])
    assert done["state"] == "succeeded", done


def test_cancel_stops_cleanly_and_the_next_run_continues(product: Product) -> None:
    src: Path = STATE["src"]
    bulk = src / "bulk"
    bulk.mkdir()
    # More than the agent buffers (three 16 MiB packs), so the stop lands mid-stream.
    for i in range(12):
        (bulk / f"part-{i}.bin").write_bytes(os.urandom(10 * 1024 * 1024))
    policy = product.admin_json("groups")[0]["policy_id"]
    product.admin("policy-set", str(policy), "--bandwidth-kib", "8192")  # the agent throttles
    try:
        job = product.admin_json("backup-now", str(product.servers["alpha"]))
        product.wait_uploading(job["id"])
        product.admin("cancel", str(job["id"]))
        done = product.wait_job(job["id"], timeout=120)
        assert done["state"] == "stopped", done
        assert "cancelled by an admin" in done["error"]
    finally:
        product.admin("policy-set", str(policy), "--bandwidth-kib", "0")
    again = product.backup_now("alpha")
    assert again["state"] == "succeeded", again
    newest = product.admin_json("restore-points", "--server", str(product.servers["alpha"]))[0]
    # part of the 120 MiB went up before the stop and is not sent again
    assert newest["bytes_added"] < 100 * 1024 * 1024, newest
    shutil.rmtree(bulk)


def test_restore_that_does_not_fit_fails_before_writing(product: Product) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    small = product.root / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        job = product.admin_json("restore", str(STATE["rp"]), "--to-path", str(small / "x"))
        done = product.wait_job(job["id"])
        assert done["state"] == "failed"
        assert "not enough free space" in done["error"]
        assert list(small.iterdir()) == []  # nothing written
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_missed_files_are_reported_and_tried_again(product: Product) -> None:
    """Root reads every file, so this agent runs as 'nobody' (like an agent confined by its
    service manager), and a file it may not read is missed, shown on the job, and backed up
    by the next run once readable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run an agent as 'nobody'")
    as_nobody = [shutil.which("setpriv") or "", "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(tempfile.mkdtemp(prefix="rekindle-nobody-"))
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the agent runs as nobody and must get in
        data, state = base / "data", base / "agent"
        data.mkdir()
        state.mkdir()
        os.chown(state, 65534, 65534)
        (data / "open.txt").write_text("readable\n")
        (data / "locked.db").write_text("secret ledger\n")
        os.chmod(data / "locked.db", 0o600)  # root's: 'nobody' cannot read it
        group = product.admin_json("groups")[0]["id"]
        token = product.admin_json("activation-token", str(group))["token"]
        shutil.copy(product.ca, base / "ca.pem")
        os.chmod(base / "ca.pem", 0o644)
        subprocess.run(
            [
                *as_nobody,
                REKINDLE_BIN,
                "agent",
                "enroll",
                "--cloud",
                product.cloud_url,
                "--ca-file",
                str(base / "ca.pem"),
                "--token",
                token,
                "--data-dir",
                str(state),
                "--hostname",
                "gamma",
            ],
            env=product.env,
            check=True,
            capture_output=True,
            timeout=60,
            cwd=base,
        )
        sid = int(json.loads((state / "agent.json").read_text())["server_id"])
        product.servers["gamma"] = sid
        product.admin("backup-set-add", str(sid), "files", "--include", str(data))
        product.start(
            "agent-gamma",
            "agent",
            "run",
            "--data-dir",
            str(state),
            "--hostname",
            "gamma",
            prefix=as_nobody,
        )
        product.wait_connected("gamma")
        first = product.backup_now("gamma")
        assert first["state"] == "partial", first
        assert [m["path"] for m in first["missed"]] == [str(data / "locked.db")]
        assert "Permission denied" in first["missed"][0]["reason"]
        os.chmod(data / "locked.db", 0o644)
        second = product.backup_now("gamma")
        assert second["state"] == "succeeded", second
        assert second["missed"] == []
        dest = base / "restored"
        dest.mkdir()
        os.chown(dest, 65534, 65534)  # the agent runs as 'nobody'
        job = product.admin_json(
            "restore",
            str(product.admin_json("restore-points", "--server", str(sid))[0]["id"]),
            "--to-path",
            str(dest),
        )
        assert product.wait_job(job["id"])["state"] == "succeeded"
        assert (dest / str(data).lstrip("/") / "locked.db").read_text() == "secret ledger\n"
    finally:
        if "agent-gamma" in product.procs:
            product.stop("agent-gamma")
        shutil.rmtree(base, ignore_errors=True)


def test_a_one_minute_schedule_fires(product: Product) -> None:
    deadline = time.monotonic() + 130
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = product.admin_json("jobs", "--server", str(product.servers["beta"]))
        done = [j for j in jobs if j["trigger"] == "scheduled" and j["state"] == "succeeded"]
        if done:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"no scheduled backup ran: {jobs}")
    assert len([j for j in jobs if j["trigger"] == "scheduled"]) == 1
