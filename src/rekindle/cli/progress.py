"""Progress display for long operations: a rich live line on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from rekindle.cli.common import human_bytes
from rekindle.repository.backup import BackupStats
from rekindle.repository.restore import RestoreStats

if TYPE_CHECKING:
    from rich.live import Live
    from rich.text import Text


def _eta(done: float, total: float, elapsed: float) -> str:
    if done <= 0 or total <= done or elapsed < 1:
        return "--:--"
    left = elapsed * (total - done) / done
    m, s = divmod(int(left), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def backup_line(s: BackupStats) -> str:
    elapsed = time.monotonic() - s.started
    with s.lock:
        files, read, total = s.files_done, s.bytes_read, s.scan_bytes
        scan_files, added = s.scan_files, s.bytes_added
    processed = s.bytes_total
    rate = read / elapsed if elapsed > 0 else 0
    pct = f"{100 * processed / total:5.1f}%" if total else "  ..."
    return (
        f"{pct}  {files}/{scan_files or '?'} files  {human_bytes(processed)}/"
        f"{human_bytes(total) if total else '?'}  read {human_bytes(rate)}/s  "
        f"ETA {_eta(processed, total, elapsed)}  added {human_bytes(added)}"
    )


def restore_line(s: RestoreStats, started: float) -> str:
    elapsed = time.monotonic() - started
    with s.lock:
        done, total, files = s.bytes_written, s.bytes_total, s.files
    rate = done / elapsed if elapsed > 0 else 0
    return (
        f"{files} files  {human_bytes(done)}/{human_bytes(total)}  {human_bytes(rate)}/s  "
        f"ETA {_eta(done, total, elapsed)}"
    )


class LiveProgress:
    """Refreshes a line from `render` a few times a second while the block runs."""

    def __init__(self, render: Callable[[], str], enabled: bool | None = None) -> None:
        self._render = render
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._stop = threading.Event()
        self._live: Live | None = None
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether a live line is shown (stderr is a terminal, unless forced)."""
        return self._enabled

    def __enter__(self) -> LiveProgress:
        if self._enabled:
            # rich only when a line is shown: importing it costs tens of milliseconds of start-up.
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._text(), console=Console(stderr=True), transient=True, auto_refresh=False
            )
            self._live.__enter__()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            if self._live is not None:
                self._live.update(self._text(), refresh=True)

    def _text(self) -> Text:
        from rich.text import Text

        return Text(self._render())

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._live is not None:
            self._live.__exit__(et, ev, tb)
