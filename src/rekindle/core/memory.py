"""Process-wide memory settings for commands that move a lot of data."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any

_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas before worker threads start; True if it was applied.

    glibc gives threads that contend for malloc arenas of their own, up to 8 per core, and
    keeps what is freed in each for reuse. A backup's threads pass large buffers around, so
    every arena settles at its own high-water mark: about 10 MiB of peak RSS on the
    benchmark's initial backup (docs/benchmarks.md), at no cost in speed. An administrator's
    MALLOC_ARENA_MAX wins; other C libraries are left alone.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def return_freed_memory() -> bool:
    """Give the memory malloc holds free back to the system (glibc's malloc_trim); True if
    it could be asked.

    Freed blocks in the middle of malloc's heaps stay in the process (counted in its RSS)
    until malloc reuses them: after a burst of short-lived buffers of varied sizes, such as
    the file data a backup worker holds for one batch, the process keeps its high-water
    mark. A call costs about a walk of malloc's free lists; callers make it after a burst,
    not per allocation.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None under another C library or system."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]  # int malloc_trim(size_t pad)
    trim.restype = ctypes.c_int
    return trim
