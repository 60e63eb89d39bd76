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

from rekindle.core.errors import ExitCode, RekindleError
from rekindle.format.indexdoc import PackEntries
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind
from rekindle.repository.backup_worker import FileOutcome, Setup, StatKey

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
    """A worker process failed: the backup fails (what it stored and indexed stays). Its
    exit status is that of the worker's error (a full disk stays a full disk)."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    #: Ids it was asked to store and has not yet reported in a pack: empty once it says it
    #: flushed, or the backup fails (a restore point must never name a chunk not stored).
    promised: set[bytes] = field(default_factory=set)

    @property
    def usable(self) -> bool:
        return self.ready and not self.gone

    @property
    def starting(self) -> bool:
        return not self.ready and not self.gone


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
        self._error: BaseException | None = None
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
                # -P: the working directory is not put on the import path (a module planted
                # in the directory being backed up must never run with the master key).
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "rekindle.repository.backup_worker",
                    str(theirs.fileno()),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its own session: Ctrl-C reaches the backup, which stops the workers.
                start_new_session=True,
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

    @property
    def starting(self) -> bool:
        """A worker is starting (not ready yet, not left out)."""
        with self._cond:
            self._leave_out_late()
            return any(p.starting for p in self._procs)

    # -- the backup's side ---------------------------------------------------------------------
    def submit(
        self, files: list[tuple[bytes, StatKey]], *, wait: bool = False
    ) -> Future[list[FileOutcome]] | None:
        """Hand a batch of small files to the least busy worker (waiting while every worker
        holds DEPTH batches); None while none has started (`wait`: wait for all to start,
        for tests)."""
        with self._cond:
            while True:
                self._raise()
                self._leave_out_late()
                ready = [p for p in self._procs if p.usable]
                if wait and any(p.starting for p in self._procs):
                    self._cond.wait(0.1)
                    continue
                if not ready:
                    return None
                p = min(ready, key=lambda q: (q.outstanding, q.batches))
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
            live = [p for p in self._procs if p.usable]
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
        with self._cond:
            failed = self._error is not None
        deadline = time.monotonic() + EXIT_S
        for p in self._procs:
            if failed or not p.usable:
                p.popen.kill()  # nothing it holds is wanted any more
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            for t in p.threads:
                t.join(timeout=EXIT_S)
            p.conn.close()
        # Batches never answered (only after a failure) fail their files' futures.
        self._fail(WorkerProcessError("the backup stopped before this file was read"))

    # -- per worker threads --------------------------------------------------------------------
    def _send_loop(self, p: _Proc) -> None:
        while True:
            msg = p.outbox.get()
            if msg is None:
                return
            try:
                p.conn.send(msg)
            except (OSError, ValueError):
                # The worker is gone: the collector reads what it said last (its reason)
                # up to the end of the stream, and reports it.
                return
            except BaseException as e:  # noqa: BLE001 - e.g. a message that cannot be pickled
                self._failed(p, f"a message could not be sent ({type(e).__name__}: {e})")
                return

    def _collect(self, p: _Proc) -> None:
        try:
            while True:
                try:
                    msg = p.conn.recv()
                except (EOFError, OSError):
                    self._failed(p, "it ended unexpectedly", ended=True)
                    return
                kind = msg[0]
                if kind == "ids":
                    self._answer(p, msg[1], msg[2])
                elif kind == "pack":
                    self._indexed(p, msg[1], msg[2], msg[3])
                elif kind == "ready":
                    with self._cond:
                        p.ready = not p.gone
                        self._cond.notify_all()
                elif kind == "flushed":
                    with self._cond:
                        if p.promised:
                            why = f"{len(p.promised)} chunk(s) it was to store were not stored"
                            raise WorkerProcessError(why)
                        p.flushed = True
                        self._cond.notify_all()
                elif kind == "failed":
                    self._failed(p, str(msg[1]), exit_code=int(msg[2]), ended=True)
                    return
                else:
                    self._failed(p, f"it sent an unknown message {kind!r}")
                    return
        except BaseException as e:  # noqa: BLE001 - an error of this process: it fails the backup
            self._fail(e)

    def _answer(self, p: _Proc, n: int, outcomes: list[FileOutcome]) -> None:
        with self._cond:
            p.outstanding -= 1
            _, fut = self._batches.pop(n)
            self._cond.notify_all()
        try:
            store: list[bytes] = []
            read = 0
            for o in outcomes:
                if isinstance(o, tuple):
                    read += o[2]
                    store.extend(
                        c for c in o[0] if isinstance(c, bytes) and self._writer.reserve(c)
                    )
            with self._cond:
                p.promised.update(store)
            p.outbox.put(("store", n, store))
            self._on_read(read)
        except BaseException as e:
            fut.set_exception(e)
            raise
        fut.set_result(outcomes)

    def _indexed(
        self, p: _Proc, pack_id: bytes, blobs: list[tuple[bytes, int, int, int]], size: int
    ) -> None:
        """A pack the worker stored: into the backup's index files."""
        entries = [BlobEntry(i, BlobKind.DATA, o, ln, r) for i, o, ln, r in blobs]
        with self._cond:
            p.promised.difference_update(e.id for e in entries)
        self._writer.add_stored_pack(PackEntries(pack_id, BlobKind.DATA, entries), size)

    # -- failures ------------------------------------------------------------------------------
    def _failed(
        self, p: _Proc, why: str, *, exit_code: int = ExitCode.ERROR, ended: bool = False
    ) -> None:
        """A worker failed or went away."""
        with self._cond:
            if self._closing or p.gone:
                return  # told to exit, or left out: nothing of the backup is lost
            if not p.ready and p.outstanding == 0:
                # It never had work: leave it out, the threads do its share.
                p.gone = True
                self._cond.notify_all()
                log.warning("a backup worker process could not start (%s); using threads", why)
                return
        code: int | None = None
        if ended:  # it is exiting: its exit status says more (a signal, for one)
            try:
                code = p.popen.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
        status = f" (exit status {code})" if code is not None else ""
        self._fail(
            WorkerProcessError(
                f"backup worker process {p.popen.pid} failed: {why}{status}", exit_code
            )
        )

    def _leave_out_late(self) -> None:
        """Called with the lock held: workers that did not start in time are left out."""
        now = time.monotonic()
        for p in self._procs:
            if p.starting and now - p.started_at > START_S:
                p.gone = True
                p.outbox.put(("exit",))
                log.warning("a backup worker process did not start in %.0f s", START_S)

    def _fail(self, error: BaseException) -> None:
        """Fail the backup: the first error is the one raised, everywhere."""
        with self._cond:
            if self._error is None and not self._closing:
                self._error = error
            first = self._error or error
            batches = list(self._batches.values())
            self._batches.clear()
            self._cond.notify_all()
        for _, fut in batches:
            if not fut.done():
                fut.set_exception(first)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
