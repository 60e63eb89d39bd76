"""Backup's worker processes, seen from the backup (the worker side is backup_worker.py).

Each worker has one socket to this process and two threads here: a sender, which is the
only writer of the socket (so a thread that answers a worker never waits on one that feeds
it, and the two directions cannot block each other), and a collector, which reads
everything the worker says. The collector reserves the ids a worker found (the writer's
deduplication, shared with the backup's threads) and tells it which ones to store, then
hands the batch's outcomes to the backup; it indexes each pack the worker reports through
the backup's writer.

A worker that fails or dies once it has had work fails the backup: ids it was asked to
store may already be referenced by other files, so its batches cannot simply be retried
elsewhere. Nothing is lost by that: what was stored and indexed stays, and the next backup
starts from it. A worker that never starts is left out, and the threads do its share.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

from rekindle.core.errors import RekindleError
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind
from rekindle.repository.backup_worker import FileOutcome, Setup

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from rekindle.repository.writer import BlobWriter

log = logging.getLogger(__name__)

#: Batches a worker may hold at once: one it reads, one waiting for the store decision and
#: one queued, so it never waits for this process.
DEPTH = 3
#: A worker that has not said it is ready by then is left out.
START_S = 60.0
EXIT_S = 10.0


class WorkerProcessError(RekindleError):
    """A worker process failed: the backup fails (what it stored and indexed stays)."""


@dataclass(eq=False)
class _Proc:
    popen: subprocess.Popen[bytes]
    conn: Connection
    outbox: SimpleQueue[Any] = field(default_factory=SimpleQueue)
    threads: list[threading.Thread] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    gone: bool = False  # left out: it never started, or it was told to exit
    outstanding: int = 0  # batches sent and not answered
    batches: int = 0  # batches sent in all
    flushed: bool = False


class WorkerProcesses:
    def __init__(
        self,
        setup: Setup,
        count: int,
        writer: BlobWriter,
        on_read: Callable[[int], None],
    ) -> None:
        self._setup = setup
        self._writer = writer
        self._on_read = on_read
        self._cond = threading.Condition()
        self._error: str | None = None
        self._closing = False
        self._next = 0
        self._batches: dict[int, tuple[_Proc, Future[list[FileOutcome]]]] = {}
        self._procs: list[_Proc] = []
        try:
            for _ in range(count):
                self._procs.append(self._spawn())
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> _Proc:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "rekindle.repository.backup_worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        p = _Proc(popen, Connection(ours.detach()))
        p.outbox.put(self._setup)
        for role, target in (("send", self._send_loop), ("collect", self._collect)):
            t = threading.Thread(
                target=target, args=(p,), name=f"backup-worker-{popen.pid}-{role}", daemon=True
            )
            t.start()
            p.threads.append(t)
        return p

    @property
    def count(self) -> int:
        """Workers that read files."""
        with self._cond:
            return sum(1 for p in self._procs if p.batches)

    # -- the backup's side ---------------------------------------------------------------------
    def submit(
        self, files: list[tuple[bytes, os.stat_result]], *, wait: bool = False
    ) -> Future[list[FileOutcome]] | None:
        """Hand a batch of small files to the least busy worker (waiting while every worker
        holds DEPTH batches); None while none has started (`wait`: wait for all to start,
        for tests)."""
        with self._cond:
            while True:
                self._raise()
                self._leave_out_late()
                ready = [p for p in self._procs if p.ready and not p.gone]
                starting = any(not p.ready and not p.gone for p in self._procs)
                if wait and starting:
                    self._cond.wait(0.1)
                    continue
                if not ready:
                    return None
                p = min(ready, key=lambda q: q.outstanding)
                if p.outstanding < DEPTH:
                    break
                self._cond.wait()
            n = self._next
            self._next += 1
            p.outstanding += 1
            p.batches += 1
            fut: Future[list[FileOutcome]] = Future()
            self._batches[n] = (p, fut)
        p.outbox.put(("read", n, files))
        return fut

    def flush(self) -> None:
        """Wait for every batch's answer, then have every worker store its pack being
        filled and report it; on return every chunk a worker was asked to store is stored
        and handed to the writer."""
        with self._cond:
            while self._batches and self._error is None:
                self._cond.wait()
            self._raise()
            live = [p for p in self._procs if p.ready and not p.gone]
            for p in live:
                p.flushed = False
        for p in live:
            p.outbox.put(("flush",))
        with self._cond:
            while self._error is None and not all(p.flushed for p in live):
                self._cond.wait()
            self._raise()

    def close(self) -> None:
        """Stop every worker (killed if it does not exit in time) and its threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for p in self._procs:
            p.outbox.put(("exit",))
            p.outbox.put(None)  # ends the sender
        deadline = time.monotonic() + EXIT_S
        for p in self._procs:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            for t in p.threads:
                t.join(timeout=EXIT_S)
            p.conn.close()
        self._fail("the backup stopped")  # batches never answered (only after a failure)

    # -- per worker threads --------------------------------------------------------------------
    def _send_loop(self, p: _Proc) -> None:
        while True:
            msg = p.outbox.get()
            if msg is None:
                return
            try:
                p.conn.send(msg)
            except (OSError, ValueError):
                self._gone(p, "its connection broke")
                return

    def _collect(self, p: _Proc) -> None:
        try:
            while True:
                msg = p.conn.recv()
                kind = msg[0]
                if kind == "ids":
                    self._answer(p, msg[1], msg[2])
                elif kind == "pack":
                    pack_id, blobs, size = msg[1], msg[2], msg[3]
                    entries = [BlobEntry(i, BlobKind.DATA, o, ln, r) for i, o, ln, r in blobs]
                    self._writer.add_stored_pack(PackEntries(pack_id, BlobKind.DATA, entries), size)
                elif kind == "ready":
                    with self._cond:
                        p.ready = not p.gone
                        self._cond.notify_all()
                elif kind == "flushed":
                    with self._cond:
                        p.flushed = True
                        self._cond.notify_all()
                elif kind == "failed":
                    self._gone(p, str(msg[1]))
                    return
                else:
                    self._gone(p, f"an unknown message {kind!r}")
                    return
        except (EOFError, OSError):
            self._gone(p, "it ended unexpectedly")
        except BaseException as e:  # noqa: BLE001 - e.g. an index write failed: fail the backup
            self._gone(p, f"{type(e).__name__}: {e}")

    def _answer(self, p: _Proc, n: int, outcomes: list[FileOutcome]) -> None:
        store: list[bytes] = []
        read = 0
        for o in outcomes:
            if isinstance(o, tuple):
                read += o[2]
                store.extend(
                    cid for cid in o[0] if isinstance(cid, bytes) and self._writer.reserve(cid)
                )
        p.outbox.put(("store", n, store))
        with self._cond:
            p.outstanding -= 1
            _, fut = self._batches.pop(n)
            self._cond.notify_all()
        self._on_read(read)
        fut.set_result(outcomes)

    # -- failures ------------------------------------------------------------------------------
    def _gone(self, p: _Proc, why: str) -> None:
        with self._cond:
            if self._closing:
                return
            if not p.ready and p.outstanding == 0:
                # It never had work: leave it out, the threads do its share.
                p.gone = True
                self._cond.notify_all()
                log.warning("a backup worker process could not start (%s); using threads", why)
                return
        try:
            code: int | None = p.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        status = f" (exit status {code})" if code is not None else ""
        self._fail(f"backup worker process {p.popen.pid} failed: {why}{status}")

    def _leave_out_late(self) -> None:
        """Called with the lock held: workers that did not start in time are left out."""
        now = time.monotonic()
        for p in self._procs:
            if not p.ready and not p.gone and now - p.started_at > START_S:
                p.gone = True
                p.outbox.put(("exit",))
                log.warning("a backup worker process did not start in %.0f s", START_S)

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._error is None and not self._closing:
                self._error = reason
            batches = list(self._batches.values())
            self._batches.clear()
            self._cond.notify_all()
        for _, fut in batches:
            if not fut.done():
                fut.set_exception(WorkerProcessError(self._error or reason))

    def _raise(self) -> None:
        if self._error is not None:
            raise WorkerProcessError(self._error)
