"""Process-wide memory settings for commands that move a lot of data."""

from __future__ import annotations

import ctypes
import os
import sys

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
