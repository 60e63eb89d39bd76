"""Content-defined chunking of file data (FastCDC with a secret gear seed). No I/O."""

from __future__ import annotations

from collections.abc import Iterator

from rekindle.format.config import RepoConfig


class Chunker:
    """Cuts buffers into chunks. One instance per thread: FastCDC objects are not shareable."""

    def __init__(self, config: RepoConfig, seed: int) -> None:
        # Imported here, not with the module: not before a command's key derivation, the
        # peak of its memory (see format/codec.py).
        from pyfastcdc import FastCDC

        self.min_size = config.chunk_min
        self.max_size = config.chunk_max
        self._cdc = FastCDC(
            config.chunk_avg, min_size=config.chunk_min, max_size=config.chunk_max, seed=seed
        )

    def cut(self, buf: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Yield chunks of `buf`. A buffer no longer than min_size is one chunk."""
        if len(buf) <= self.min_size:
            yield memoryview(buf)
            return
        for c in self._cdc.cut_buf(buf):
            yield c.data
