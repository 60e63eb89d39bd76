"""A background scanner that counts files and bytes ahead of the backup, for progress/ETA.

It only reads directory entries (lstat) and never blocks the backup: if it is slower than
the backup, the estimate is simply not available yet. Excludes are not applied, so the
estimate errs on the high side.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rekindle.repository.backup import BackupStats


class Scanner:
    def __init__(self, roots: list[bytes], stats: BackupStats) -> None:
        self._roots = roots
        self._stats = stats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scanner")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        files = size = 0
        stack = list(self._roots)
        while stack and not self._stop.is_set():
            path = stack.pop()
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    files += 1
                    size += st.st_size
                    continue
                with os.scandir(path) as it:
                    for e in it:
                        est = e.stat(follow_symlinks=False)
                        if stat.S_ISDIR(est.st_mode):
                            stack.append(os.fsencode(e.path))
                        elif stat.S_ISREG(est.st_mode):
                            files += 1
                            size += est.st_size
            except OSError:
                continue
            with self._stats.lock:
                self._stats.scan_files, self._stats.scan_bytes = files, size
        with self._stats.lock:
            self._stats.scan_files, self._stats.scan_bytes = files, size
            self._stats.scan_done = not self._stop.is_set() or not stack


def start_scanner(roots: list[bytes], stats: BackupStats) -> Scanner:
    s = Scanner(roots, stats)
    s.start()
    return s
