"""Run one job the cloud assigned: a backup or a restore, with the engine, against the
storage node named in the assignment, reporting progress while it runs."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rekindle.agent.snapshots import freeze
from rekindle.agent.state import AgentState
from rekindle.core.errors import NotARepositoryError, RekindleError, UsageError
from rekindle.net import protocol as p
from rekindle.repository.backup import BackupOptions, BackupStats, BackupStopped, backup
from rekindle.repository.repo import Repository, Secret
from rekindle.repository.restore import Existing, RestoreOptions, RestoreStats, restore
from rekindle.store.base import Backend
from rekindle.store.http import HttpBackend
from rekindle.store.ratelimit import RateLimitedBackend
from rekindle.store.retry import RetryingBackend

log = logging.getLogger(__name__)

ProgressSink = Callable[[p.Progress], bool]  # returns True when the job should stop
PROGRESS_EVERY_S = 2.0
#: How often the reporter looks whether the estimate is ready, until it is.
ESTIMATE_CHECK_S = 0.1


@dataclass
class JobContext:
    state: AgentState
    hostname: str


def open_backend(job: p.JobAssignment, state: AgentState) -> Backend:
    backend: Backend = HttpBackend(
        job.storage_url, job.org_id, job.storage_token, ca_file=str(state.ca_file)
    )
    backend = RetryingBackend(backend)
    if job.bandwidth_kib > 0:
        # The policy's bandwidth cap is the agent's to enforce (the node serves many agents).
        backend = RateLimitedBackend(backend, job.bandwidth_kib * 1024)
    return backend


def open_repository(job: p.JobAssignment, state: AgentState, *, create: bool) -> Repository:
    backend = open_backend(job, state)
    secret = Secret(operator_key=base64.b64decode(job.repo_key))
    cache = state.cache_dir / f"org-{job.org_id}"
    try:
        return Repository.open(backend, secret, cache_root=cache)
    except NotARepositoryError:
        if not create:
            raise
        log.info("the organization's repository does not exist yet: creating it")
        return Repository.init(backend, secret, cache_root=cache)


class _Reporter:
    """Sends progress every few seconds from a side thread; remembers a cancel request.

    When `estimated()` turns true (the backup's scan has counted what there is to do), the
    estimate goes out at once rather than at the next tick."""

    def __init__(
        self,
        sink: ProgressSink,
        make: Callable[[], p.Progress],
        estimated: Callable[[], bool] | None = None,
    ) -> None:
        self.sink, self.make = sink, make
        self.estimated = estimated
        #: The first progress that carried an estimate (for the job log).
        self.first_estimate: p.Progress | None = None
        self.cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # A backup over before the first check still logs what the scan counted.
        if self.first_estimate is None and self.estimated is not None and self.estimated():
            self.first_estimate = self.make()

    def _run(self) -> None:
        waiting = self.estimated is not None
        last = time.monotonic()
        while not self._stop.wait(ESTIMATE_CHECK_S if waiting else PROGRESS_EVERY_S):
            now = time.monotonic()
            fresh = waiting and self.estimated is not None and self.estimated()
            if not fresh and waiting and now - last < PROGRESS_EVERY_S:
                continue
            last = now
            try:
                progress = self.make()
                if fresh:
                    waiting = False
                    self.first_estimate = progress
                if self.sink(progress):
                    self.cancel.set()
            except Exception as e:  # noqa: BLE001 - progress is best effort; the job goes on
                log.warning("could not report progress: %s", e)


def run_backup(job: p.JobAssignment, ctx: JobContext, sink: ProgressSink) -> p.JobResult:
    spec = job.backup
    if spec is None:
        raise UsageError("backup job without a backup set")
    repo = open_repository(job, ctx.state, create=True)
    stats = BackupStats()
    started = time.monotonic()

    def progress() -> p.Progress:
        elapsed = max(time.monotonic() - started, 1e-3)
        rate = stats.bytes_read / elapsed
        total = stats.scan_bytes if stats.scan_done else None
        eta = None
        if total is not None and rate > 0:
            eta = max(0.0, (total - stats.bytes_total) / max(rate, 1.0))
        return p.Progress(
            phase="backup",
            files_done=stats.files_done,
            bytes_done=stats.bytes_total,
            files_total=stats.scan_files if stats.scan_done else None,
            bytes_total=total,
            rate_bps=rate,
            eta_s=eta,
        )

    reporter = _Reporter(sink, progress, lambda: stats.scan_done)
    window_end = spec.window_end

    def should_stop() -> bool:
        if reporter.cancel.is_set():
            return True
        return window_end is not None and datetime.now(UTC) >= window_end

    try:
        opts = BackupOptions(
            paths=list(spec.include),
            excludes=list(spec.exclude),
            host=ctx.hostname,
            server=ctx.hostname,
            tags=[f"backup-set:{spec.backup_set_id}"],
            # The cloud shows an estimate: count the files ahead of reading them.
            estimate=True,
            should_stop=should_stop,
            parent=spec.parent,
        )
        with reporter, freeze(list(spec.include)) as frozen:
            opts.read_from = frozen.read_from
            notes = frozen.notes
            result = backup(repo, opts, stats)
    except BackupStopped as e:
        why = "cancelled by an admin" if reporter.cancel.is_set() else "the backup window closed"
        return p.JobResult(
            state="stopped",
            error=f"{why}: {e}",
            files=stats.files_done,
            bytes=stats.bytes_total,
            bytes_added=stats.bytes_added,
        )
    finally:
        repo.close()
    snap = result.snapshot
    missed = [p.MissedFile(path=path, reason=reason) for path, reason in stats.missed]
    changed = stats.changed_while_read
    log_lines = [*notes, *(f"file changed while read: {c}" for c in changed[:100])]
    if stats.worker_processes:
        log_lines.append(f"small files were read by {stats.worker_processes} worker processes")
    est = reporter.first_estimate
    if est is not None:
        eta = f", about {est.eta_s:.0f} s to go" if est.eta_s is not None else ""
        log_lines.insert(
            0,
            f"estimate after {est.files_done} files: {est.files_total} files, "
            f"{est.bytes_total} bytes{eta}",
        )
    return p.JobResult(
        state="partial" if missed else "succeeded",
        snapshot_id=snap.id,
        snapshot_time=snap.time,
        files=stats.files_done,
        bytes=stats.bytes_total,
        bytes_added=stats.bytes_added,
        missed=missed,
        error=f"{len(missed)} files could not be read" if missed else None,
        log=log_lines,
    )


def check_destination(target: Path) -> tuple[Path, int]:
    """The destination must be a directory we can write, or creatable under one. Returns
    that directory (the nearest that exists) and its free bytes."""
    probe = target
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            raise UsageError(f"restore destination {target} cannot be created")
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"restore destination {probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"restore destination {probe} is not writable")
    st = os.statvfs(probe)
    return probe, st.f_bavail * st.f_frsize


def run_restore(job: p.JobAssignment, ctx: JobContext, sink: ProgressSink) -> p.JobResult:
    spec = job.restore
    if spec is None:
        raise UsageError("restore job without a restore specification")
    target = Path(spec.target)
    if not target.is_absolute():
        raise UsageError(f"restore destination {target} must be an absolute path")
    where, free = check_destination(target)
    # The cloud counted the restore's size when it planned it. Files that exist may be
    # overwritten in place, but count everything: failing clearly before writing (or even
    # connecting to the storage node) beats failing half-way.
    need = spec.size
    if need > free:
        raise UsageError(
            f"not enough free space at {where}: the restore needs {need} bytes, "
            f"{free} are free; nothing was written"
        )
    repo = open_repository(job, ctx.state, create=False)
    try:
        snap = repo.find_snapshot(spec.snapshot)
        target.mkdir(parents=True, exist_ok=True)
        stats_holder: list[RestoreStats] = []
        started = time.monotonic()

        def progress() -> p.Progress:
            st = stats_holder[0] if stats_holder else None
            done = st.bytes_written if st else 0
            elapsed = max(time.monotonic() - started, 1e-3)
            rate = done / elapsed
            return p.Progress(
                phase="restore",
                files_done=st.files if st else 0,
                bytes_done=done,
                bytes_total=need,
                rate_bps=rate,
                eta_s=(need - done) / rate if rate > 0 else None,
            )

        def seen(st: RestoreStats) -> None:
            if not stats_holder:
                stats_holder.append(st)

        opts = RestoreOptions(includes=list(spec.include), existing=Existing(spec.existing))
        with _Reporter(sink, progress):
            stats = restore(repo, snap, target, opts, progress=seen)
    finally:
        repo.close()
    errors = [f"{path}: {reason}" for path, reason in stats.errors]
    state: p.FinalState = "failed" if stats.damaged else ("partial" if errors else "succeeded")
    return p.JobResult(
        state=state,
        files=stats.files,
        bytes=stats.bytes_written,
        error=f"{len(errors)} files were not restored" if errors else None,
        log=[
            f"restored {stats.files} files, {stats.bytes_written} bytes to {target}",
            *errors[:500],
        ],
    )


def run_job(job: p.JobAssignment, ctx: JobContext, sink: ProgressSink) -> p.JobResult:
    try:
        if job.kind == "backup":
            return run_backup(job, ctx, sink)
        return run_restore(job, ctx, sink)
    except RekindleError as e:
        log.error("job %d failed: %s", job.job_id, e)  # noqa: TRY400 - the reason is enough
        return p.JobResult(state="failed", error=str(e))
    except OSError as e:
        log.error("job %d failed: %s", job.job_id, e)  # noqa: TRY400 - the reason is enough
        return p.JobResult(state="failed", error=f"{e.strerror or e}: {e.filename or ''}")
    except Exception as e:
        log.exception("job %d failed unexpectedly", job.job_id)
        return p.JobResult(state="failed", error=f"internal error: {type(e).__name__}: {e}"[:4000])


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free
