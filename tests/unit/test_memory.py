"""Process memory helpers (core/memory.py)."""

from __future__ import annotations

import os
import sys

import pytest

from rekindle.core.memory import return_freed_memory


def _rss_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("no Rss line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_freed_file_data_leaves_the_process_once_returned() -> None:
    """What a backup worker does with a batch: many file-sized buffers, freed once stored,
    between small objects that live on (what it reports). malloc keeps the freed blocks
    (the process stays at its high-water mark) until asked."""
    if not return_freed_memory():
        pytest.skip("the C library has no malloc_trim (not glibc)")
    before = _rss_kib()
    batch, reported = [], []
    for _ in range(4000):  # 80 MB of file data
        batch.append(os.urandom(20_000))
        reported.append(os.urandom(600))
    grown = _rss_kib() - before
    assert grown > 60_000
    del batch
    assert return_freed_memory()
    assert _rss_kib() - before < grown / 4
    assert len(reported) == 4000
