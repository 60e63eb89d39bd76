"""The agent rides out trouble: a cloud restart (it reconnects with backoff and goes on), and
being killed mid-backup (the cloud marks the job aborted; the next backup works)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.system.conftest import Product, _wait_healthy


def _setup(product: Product) -> Path:
    src = product.root / "src-res"
    src.mkdir()
    (src / "a.txt").write_text("resilience\n")
    product.add_agent("res", src)
    return src


def test_the_agent_reconnects_after_a_cloud_restart(product: Product) -> None:
    _setup(product)
    cloud = product.restart("cloud")
    _wait_healthy(product.cloud_url, product.ca, cloud, product.root / "cloud.log")
    product.wait_connected("res", timeout=90)  # backoff is at most 60 s
    job = product.backup_now("res")
    assert job["state"] == "succeeded", job
    assert product.procs["agent-res"].poll() is None  # the same agent process throughout


def test_a_backup_cut_short_by_a_kill_is_aborted_and_the_next_one_works(
    product: Product,
) -> None:
    src = product.root / "src-res"
    bulk = src / "bulk"
    bulk.mkdir()
    for i in range(6):
        (bulk / f"part-{i}.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    policy = product.admin_json("groups")[0]["policy_id"]
    product.admin("policy-set", str(policy), "--bandwidth-kib", "4096")
    try:
        job = product.admin_json("backup-now", str(product.servers["res"]))
        row = product.wait_uploading(job["id"])
        assert row["state"] == "running", row
        product.stop("agent-res", signal.SIGKILL)
    finally:
        product.admin("policy-set", str(policy), "--bandwidth-kib", "0")
    product.start_agent("res")
    aborted = product.wait_job(job["id"], timeout=60)
    assert aborted["state"] == "aborted", aborted
    assert "restart, reboot or kill" in aborted["error"]
    again = product.backup_now("res")
    assert again["state"] == "succeeded", again
    events = [e["kind"] for e in product.admin_json("events")]
    assert "job.aborted" in events
