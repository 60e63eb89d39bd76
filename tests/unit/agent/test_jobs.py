"""The agent's backup job rules, run on the real engine: the policy's bandwidth cap holds,
the estimate is reported while the backup runs, and a backup whose window closes stops
cleanly so that the next run does not send that data again.

The storage node is replaced by a local-disk backend (the network path is covered by the
system tests); everything above it is the agent's own code."""

from __future__ import annotations

import base64
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rekindle.agent import jobs
from rekindle.agent.state import AgentState
from rekindle.net import protocol as p
from rekindle.store.base import Backend
from rekindle.store.local import LocalBackend

MIB = 1024 * 1024
KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> jobs.JobContext:
    store = tmp_path / "store"
    store.mkdir()

    def local(*_args: object, **_kw: object) -> Backend:
        return LocalBackend(store)

    monkeypatch.setattr(jobs, "HttpBackend", local)
    return jobs.JobContext(AgentState(tmp_path / "agent"), "host1")


def _source(root: Path, files: int, size: int) -> Path:
    root.mkdir()
    for i in range(files):
        (root / f"part-{i}.bin").write_bytes(os.urandom(size))
    return root


def _job(
    src: Path, job_id: int, *, cap_kib: int = 0, window_s: float | None = None
) -> p.JobAssignment:
    end = datetime.now(UTC) + timedelta(seconds=window_s) if window_s is not None else None
    return p.JobAssignment(
        job_id=job_id,
        kind="backup",
        org_id=1,
        storage_url="https://node.invalid",
        storage_token="t",
        repo_key=KEY,
        bandwidth_kib=cap_kib,
        backup=p.BackupSpec(
            backup_set_id=1,
            backup_set_name="files",
            include=[str(src)],
            exclude=[],
            window_end=end,
        ),
    )


def test_the_bandwidth_cap_holds_and_the_estimate_is_reported(
    ctx: jobs.JobContext, tmp_path: Path
) -> None:
    src = _source(tmp_path / "src", 3, 4 * MIB)
    seen: list[p.Progress] = []
    when: list[float] = []

    def sink(progress: p.Progress) -> bool:
        seen.append(progress)
        when.append(time.monotonic())
        return False

    began = time.monotonic()
    result = jobs.run_backup(_job(src, 1, cap_kib=2048), ctx, sink)
    took = time.monotonic() - began
    assert result.state == "succeeded", result
    assert result.bytes_added > 12 * MIB  # random data: all of it goes up
    # 2 MiB/s with at most one second of burst: at least (12 - 2) / 2 seconds
    assert took >= 4.5, took
    # the estimate goes out as soon as the scan has counted the files, long before the end
    assert seen and seen[0].files_total == 3 and seen[0].bytes_total == 12 * MIB, seen
    assert when[0] - began < 1.5 < took - 3  # the upload had hardly begun
    assert any(s.eta_s is not None for s in seen), seen
    assert re.match(r"estimate after \d files: 3 files, 12582912 bytes", result.log[0])


def test_a_backup_stops_when_its_window_closes_and_the_next_run_continues(
    ctx: jobs.JobContext, tmp_path: Path
) -> None:
    total = 128 * MIB  # well beyond what the pipeline holds in flight (three 16 MiB packs)
    src = _source(tmp_path / "src", 16, total // 16)
    began = time.monotonic()
    first = jobs.run_backup(_job(src, 1, cap_kib=16 * 1024, window_s=1.5), ctx, lambda _p: False)
    assert first.state == "stopped", first
    assert first.error is not None and "the backup window closed" in first.error
    assert first.snapshot_id is None
    assert 0 < first.bytes_added < total
    assert time.monotonic() - began < 30  # it stopped, it did not upload everything first

    second = jobs.run_backup(_job(src, 2), ctx, lambda _p: False)
    assert second.state == "succeeded", second
    assert second.snapshot_id is not None
    # what the stopped run stored is not sent again
    assert second.bytes_added <= total - first.bytes_added + MIB
    assert first.bytes_added + second.bytes_added < total * 1.05
