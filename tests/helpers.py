"""Shared test helpers: fast repositories and tree comparison."""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path

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
