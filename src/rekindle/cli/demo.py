"""`rekindle demo`: what `make run` does until the cloud exists.

Creates (or reuses) a repository under ./var, backs up a directory (a generated sample tree
by default), prints statistics, restores the restore point into a fresh directory and
verifies it byte for byte. The password is generated once and kept in var/ with mode 0600.
"""

from __future__ import annotations

import filecmp
import os
import random
import secrets
import stat
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rekindle.cli.common import human_bytes
from rekindle.cli.progress import LiveProgress, backup_line
from rekindle.core.errors import DamageFoundError
from rekindle.repository.backup import BackupOptions, BackupStats, backup
from rekindle.repository.browse import repo_stats
from rekindle.repository.repo import Repository, Secret
from rekindle.repository.restore import restore
from rekindle.store.local import LocalBackend

out = Console()


def make_sample_tree(root: Path, seed: int = 7) -> None:
    """A small tree with the cases a backup tool must get right."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    words = [
        b"backup",
        b"restore",
        b"server",
        b"policy",
        b"cloud",
        b"agent",
        b"storage",
        b"snapshot",
        b"chunk",
        b"pack",
        b"index",
        b"tree",
        b"key",
        b"prune",
    ]
    for d in range(20):
        sub = root / f"projects/p{d:02d}/src"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(25):
            n = rng.randint(200, 40_000)
            text = b" ".join(rng.choice(words) for _ in range(n // 7))
            (sub / f"module_{f:02d}.py").write_bytes(text)
    (root / "media").mkdir(exist_ok=True)
    (root / "media/random.bin").write_bytes(rng.randbytes(8 * 1024 * 1024))
    # Same content twice: stored once.
    (root / "media/copy-of-random.bin").write_bytes((root / "media/random.bin").read_bytes())
    with (root / "media/disk.img").open("wb") as img:  # sparse: 64 MiB with two data islands
        img.write(b"boot" * 1024)
        img.seek(48 * 1024 * 1024)
        img.write(rng.randbytes(1024 * 1024))
        img.truncate(64 * 1024 * 1024)
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs/naïve résumé ✓.txt").write_text("unicode names survive\n")
    (root / "docs/empty").write_bytes(b"")
    link = root / "docs/latest"
    if not link.is_symlink():
        link.symlink_to("naïve résumé ✓.txt")
    hard = root / "docs/hardlink.txt"
    if not hard.exists():
        os.link(root / "docs/naïve résumé ✓.txt", hard)


def _verify(a: Path, b: Path) -> list[str]:
    """Differences between two trees: names, types, content, modes and mtimes."""
    problems = []
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        for name in dirnames + filenames:
            pa, pb = Path(dirpath) / name, b / rel / name
            try:
                sa, sb = pa.lstat(), pb.lstat()
            except FileNotFoundError:
                problems.append(f"missing: {rel / name}")
                continue
            if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or sa.st_mode != sb.st_mode:
                problems.append(f"type or mode differs: {rel / name}")
            elif stat.S_ISLNK(sa.st_mode):
                if os.readlink(pa) != os.readlink(pb):
                    problems.append(f"symlink differs: {rel / name}")
            elif stat.S_ISREG(sa.st_mode):
                if not filecmp.cmp(pa, pb, shallow=False):
                    problems.append(f"content differs: {rel / name}")
                elif sa.st_mtime_ns != sb.st_mtime_ns:
                    problems.append(f"mtime differs: {rel / name}")
    return problems


def demo(
    src: Annotated[
        Path | None, typer.Option(help="Directory to back up (default: a generated sample tree).")
    ] = None,
    var: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path("var"),
) -> None:
    """Back up a directory into a local repository, restore it elsewhere and verify it."""
    var.mkdir(parents=True, exist_ok=True)
    pw_file = var / "demo-password"
    if not pw_file.exists():
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    secret = Secret(passphrase=pw_file.read_bytes().strip())
    repo_dir = (var / "repo").resolve()
    if src is None:
        src = (var / "sample").resolve()
        if not src.exists():
            out.print(f"generating a sample tree in {src} ...")
            src.mkdir(parents=True)
            make_sample_tree(src)
    src = src.resolve()
    backend = LocalBackend(repo_dir)
    cache = (var / "cache").resolve()
    if backend.exists("config"):
        repo = Repository.open(backend, secret, cache_root=cache)
        out.print(f"opened repository {repo.id[:12]} at {repo_dir}")
    else:
        repo = Repository.init(backend, secret, cache_root=cache)
        out.print(f"created repository {repo.id[:12]} at {repo_dir}")
    with repo:
        stats = BackupStats()
        out.print(f"backing up {src} ...")
        with LiveProgress(lambda: backup_line(stats)):
            result = backup(repo, BackupOptions(paths=["."], cwd=str(src)), stats)
        s = result.snapshot.stats
        out.print(
            f"restore point [bold]{result.snapshot.id[:8]}[/]: {s['files_new']} new, "
            f"{s['files_changed']} changed, {s['files_unmodified']} unchanged files, "
            f"{human_bytes(s['total_bytes'])} processed, {human_bytes(s['data_added'])} "
            f"stored in {s['duration']:.2f}s"
        )
        for path, reason in result.snapshot.missed:
            out.print(f"  missed: {path}: {reason}")
        st = repo_stats(repo)
        out.print(
            f"repository: {st.snapshots} restore points, raw {human_bytes(st.raw_bytes)}, "
            f"stored {human_bytes(st.stored_bytes)}, dedup ratio {st.dedup_ratio:.2f}x"
        )
        target = (var / f"restore-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        started = time.monotonic()
        rstats = restore(repo, result.snapshot, target)
        out.print(
            f"restored {rstats.files} files, {human_bytes(rstats.bytes_written)} to "
            f"{target} in {time.monotonic() - started:.2f}s"
        )
    problems = _verify(src, target) + [f"{p}: {r}" for p, r in rstats.errors]
    if problems:
        for p in problems[:20]:
            out.print(f"[red]{p}[/]")
        raise DamageFoundError(f"verification failed: {len(problems)} difference(s)")
    out.print("[green]verified: the restored tree is byte-identical to the source[/]")
    out.print(
        "Try it yourself:\n"
        f"  export REKINDLE_REPO={repo_dir}\n"
        f"  .venv/bin/rekindle repo --password-file {pw_file.resolve()} snapshots",
        soft_wrap=True,
    )
