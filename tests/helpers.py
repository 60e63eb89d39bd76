"""Shared test helpers: fast repositories, tree comparison, an SMTP sink."""

from __future__ import annotations

import contextlib
import filecmp
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from rekindle.format.keyfile import KdfParams
from rekindle.repository.repo import Repository, Secret
from rekindle.store.base import Backend

# Argon2 at test strength: the production parameters are tested in test_keys.
FAST_KDF = KdfParams(salt=b"k" * 16, time_cost=1, memory_kib=8, parallelism=1)
PASSWORD = Secret(passphrase=b"test password")
SMALL_CHUNKS = (4096, 16384, 65536)


def make_repo(backend: Backend, cache: Path | None, **kw: object) -> Repository:
    kw.setdefault("chunk_sizes", SMALL_CHUNKS)
    kw.setdefault("pack_size", 256 * 1024)
    return Repository.init(backend, PASSWORD, cache_root=cache, kdf=FAST_KDF, **kw)  # type: ignore[arg-type]


def tree_differences(a: Path, b: Path, *, check_mtime: bool = True) -> list[str]:
    """Every difference in names, types, modes, content, mtimes, symlinks, xattrs and hard
    links between two directory trees (b restored from a)."""
    problems: list[str] = []
    inode_map: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        for name in sorted(dirnames + filenames):
            pa, pb = Path(dirpath) / name, b / rel / name
            r = rel / name
            try:
                sa, sb = pa.lstat(), pb.lstat()
            except FileNotFoundError:
                problems.append(f"missing {r}")
                continue
            if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
                problems.append(f"type {r}")
                continue
            if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(
                sb.st_mode
            ):
                problems.append(f"mode {r} {oct(sa.st_mode)} {oct(sb.st_mode)}")
            if stat.S_ISLNK(sa.st_mode):
                if os.readlink(pa) != os.readlink(pb):
                    problems.append(f"symlink {r}")
                continue
            if check_mtime and not stat.S_ISDIR(sa.st_mode) and sa.st_mtime_ns != sb.st_mtime_ns:
                problems.append(f"mtime {r}")
            if stat.S_ISREG(sa.st_mode):
                if sa.st_size != sb.st_size or not filecmp.cmp(pa, pb, shallow=False):
                    problems.append(f"content {r}")
                if sa.st_nlink > 1:
                    prev = inode_map.setdefault(sa.st_ino, sb.st_ino)
                    if prev != sb.st_ino:
                        problems.append(f"hard link not preserved {r}")
                if sa.st_blocks < sa.st_size // 512 // 2 and sb.st_blocks > sa.st_blocks + 64:
                    problems.append(f"sparse file written densely {r}")
            xa = sorted((k, os.getxattr(pa, k, follow_symlinks=False)) for k in os.listxattr(pa))
            xb = sorted((k, os.getxattr(pb, k, follow_symlinks=False)) for k in os.listxattr(pb))
            if xa != xb:
                problems.append(f"xattrs {r}")
        for name in os.listdir(b / rel) if (b / rel).is_dir() else []:
            if not (Path(dirpath) / name).exists() and not (Path(dirpath) / name).is_symlink():
                problems.append(f"extra {rel / name}")
    return problems


@dataclass
class Sink:
    """What a test SMTP server (aiosmtpd on 127.0.0.1) received."""

    port: int
    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


def start_smtp(sink: Sink, **kw: Any) -> Any:
    """An aiosmtpd Controller for `sink` on its port (port 0 does not work with aiosmtpd)."""
    from aiosmtpd.controller import Controller

    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, **kw)
    controller.start()
    return controller


@contextlib.contextmanager
def smtp_sink() -> Iterator[Sink]:
    from tests.conftest import _free_port

    sink = Sink(_free_port())
    controller = start_smtp(sink)
    try:
        yield sink
    finally:
        controller.stop()


def growing_file(src: Path) -> Callable[[int, int], bytes]:
    """Makes `src` with `growing.log` and `still`; returns an `os.read` for monkeypatching
    that appends to growing.log each time it is read (a file that changes while read)."""
    src.mkdir()
    (src / "growing.log").write_bytes(b"first line\n")
    (src / "still").write_bytes(b"unchanged\n")
    real_read = os.read

    def read_then_append(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("growing.log"):
            with (src / "growing.log").open("ab") as f:
                f.write(b"written during the backup\n")
        return data

    return read_then_append
