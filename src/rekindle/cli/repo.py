"""`rekindle repo ...`: the repository engine on the command line (docs/CLI.md).

Each command parses options, calls one library function and prints its result; no logic
lives here that the library lacks. Heavy modules are imported inside commands so that a
no-change backup does not pay for importing what it does not use.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from rekindle.cli.common import (
    CTX,
    cache_root,
    human_bytes,
    open_location,
    open_repo,
    print_json,
    read_secret,
    repo_location,
)
from rekindle.core.errors import DamageFoundError, ExitCode, RekindleError, UsageError
from rekindle.repository.repo import Repository

app = typer.Typer(
    help="Work with a repository directly (init, backup, restore, check, ...).",
    no_args_is_help=True,
)
key_app = typer.Typer(
    help="Manage the keys (passwords) that open a repository.", no_args_is_help=True
)
app.add_typer(key_app, name="key")


class _Console:
    """rich's console, created at its first use: rich is not imported before the key
    derivation, the peak of a command's memory (see format/codec.py)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return getattr(self._console, name)


out = _Console()
err = _Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.callback()
def repo_options(
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            "-r",
            help="Repository: a directory or s3://bucket/prefix (env REKINDLE_REPO)",
        ),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--password-file",
            help="Read the password from this file (env REKINDLE_PASSWORD_FILE; or the "
            "password itself in REKINDLE_PASSWORD)",
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Operator key file (32 bytes or 64 hex) (env REKINDLE_KEY_FILE)",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Local cache directory (env REKINDLE_CACHE_DIR)",
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Keep no local cache.")] = False,
    limit_kib: Annotated[
        int | None,
        typer.Option(
            "--limit-kib",
            min=1,
            help="Cap repository traffic (uploads and downloads together) at this many KiB/s.",
        ),
    ] = None,
) -> None:
    CTX.repo, CTX.password_file, CTX.key_file = repo, password_file, key_file
    CTX.limit_kib = limit_kib
    CTX.cache_dir, CTX.no_cache = cache_dir, no_cache


@app.command()
def init(
    copy_keys_from: Annotated[
        str | None,
        typer.Option(
            help="Share keys and chunker with this repository, so 'copy' between them is cheap.",
        ),
    ] = None,
    from_password_file: Annotated[
        Path | None,
        typer.Option(
            help="Password of --copy-keys-from (env REKINDLE_FROM_PASSWORD)",
        ),
    ] = None,
    pack_size_mib: Annotated[int | None, typer.Option(help="Target pack size in MiB.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a new repository."""
    backend = open_location(repo_location())
    secret = read_secret(prompt="New repository password: ", confirm=True)
    source = None
    if copy_keys_from:
        source = Repository.open(
            open_location(copy_keys_from),
            read_secret(
                password_file=from_password_file,
                env="REKINDLE_FROM_PASSWORD",
                flag="--from-password-file",
            ),
            cache_root=None,
        )
    repo = Repository.init(
        backend,
        secret,
        cache_root=cache_root(),
        master_from=source,
        pack_size=pack_size_mib * 1024 * 1024 if pack_size_mib else None,
    )
    with repo:
        if json_:
            print_json({"id": repo.id, "location": backend.location})
        else:
            out.print(f"created repository {repo.id[:12]} at {backend.location}")
            out.print("Keep the password safe: without it the data cannot be read.")


@app.command()
def backup(
    paths: Annotated[list[str], typer.Argument(help="Files and directories to back up.")],
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-e", help="Gitignore-style pattern to leave out (repeatable)."),
    ] = None,
    exclude_file: Annotated[
        Path | None, typer.Option(help="Read exclude patterns from a file, one per line.")
    ] = None,
    one_file_system: Annotated[
        bool, typer.Option("--one-file-system", "-x", help="Do not cross into other file systems.")
    ] = False,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag (repeatable).")] = None,
    host: Annotated[str | None, typer.Option(help="Host name to record.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Back up PATHS into a new restore point. Exit status 3: done, but files were missed."""
    patterns = list(exclude or [])
    if exclude_file is not None:
        try:
            patterns += [
                ln
                for ln in exclude_file.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")
            ]
        except OSError as e:
            raise UsageError(f"cannot read {exclude_file}: {e.strerror}") from None
    with open_repo() as repo:
        # The engine and rich only after the key derivation, the peak of a no-change
        # backup's memory (see format/codec.py).
        from rekindle.cli.progress import LiveProgress, backup_line
        from rekindle.core.memory import limit_malloc_arenas
        from rekindle.repository.backup import BackupOptions, BackupStats
        from rekindle.repository.backup import backup as run_backup

        limit_malloc_arenas()  # before the backup's threads start
        opts = BackupOptions(
            paths=paths,
            excludes=patterns,
            one_file_system=one_file_system,
            tags=list(tag or []),
            host=host,
        )
        stats = BackupStats()
        live = LiveProgress(lambda: backup_line(stats), enabled=None)
        opts.estimate = live.enabled
        with live:
            result = run_backup(repo, opts, stats)
    snap = result.snapshot
    summary = {
        "id": snap.id,
        "short_id": snap.id[:8],
        "time": snap.time.isoformat(),
        "paths": snap.paths,
        "parent": snap.parent,
        **snap.stats,
    }
    if snap.missed:
        for path, reason in snap.missed:
            sys.stderr.write(f"missed: {path}: {reason}\n")
    if json_:
        print_json(summary)
    else:
        s = snap.stats
        out.print(
            f"restore point {snap.id[:8]} saved: {s['files_new']} new, {s['files_changed']} "
            f"changed, {s['files_unmodified']} unchanged files; {human_bytes(s['total_bytes'])} "
            f"processed, {human_bytes(s['data_added'])} added in {s['duration']:.1f}s"
        )
    if snap.missed:
        sys.stderr.write(
            f"rekindle: backup completed, but {len(snap.missed)} file(s) "
            "could not be read (listed above)\n"
        )
        raise typer.Exit(ExitCode.MISSED_FILES)


@app.command()
def restore(
    snapshot: Annotated[str, typer.Argument(help="Restore point id (prefix) or 'latest'.")],
    target: Annotated[Path, typer.Option("--target", "-t", help="Directory to restore into.")],
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", "-i", help="Restore only this path of the restore point (repeatable)."
        ),
    ] = None,
    existing: Annotated[
        str, typer.Option(help="Existing files: overwrite, skip, or rename (keep both).")
    ] = "overwrite",
    host: Annotated[str | None, typer.Option(help="With 'latest': of this host.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Restore a restore point (or parts of it) below TARGET, verifying every chunk."""
    from rekindle.cli.progress import LiveProgress, restore_line
    from rekindle.repository.restore import Existing, RestoreOptions, Restorer, RestoreStats

    try:
        mode = Existing(existing)
    except ValueError:
        raise UsageError("--existing must be overwrite, skip or rename") from None
    started = time.monotonic()
    with open_repo(read_only=True) as repo:
        snap = repo.find_snapshot(snapshot, host=host)
        restorer = Restorer(
            repo, snap, target, RestoreOptions(includes=list(include or []), existing=mode)
        )
        stats: RestoreStats = restorer.stats
        with LiveProgress(lambda: restore_line(stats, started)):
            restorer.run()
    result = {
        "id": snap.id,
        "files": stats.files,
        "dirs": stats.dirs,
        "bytes": stats.bytes_written,
        "skipped": stats.skipped,
        "errors": [{"path": p, "reason": r} for p, r in stats.errors],
        "duration": round(time.monotonic() - started, 3),
    }
    for path, reason in stats.errors:
        sys.stderr.write(f"not restored: {path}: {reason}\n")
    if json_:
        print_json(result)
    else:
        out.print(
            f"restored {stats.files} files, {human_bytes(stats.bytes_written)} from "
            f"{snap.id[:8]} to {target}"
        )
    if stats.errors:
        message = f"{len(stats.errors)} item(s) could not be restored (listed above)"
        if stats.damaged:
            raise DamageFoundError(message)
        raise RekindleError(message)


@app.command()
def snapshots(
    host: Annotated[str | None, typer.Option(help="Only this host.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List restore points, oldest first."""
    with open_repo(read_only=True) as repo:
        snaps = [s for s in repo.snapshots() if host is None or s.host == host]
    if json_:
        print_json(
            [
                {
                    "id": s.id,
                    "short_id": s.id[:8],
                    "time": s.time.isoformat(),
                    "host": s.host,
                    "paths": s.paths,
                    "tags": s.tags,
                    "parent": s.parent,
                    "stats": s.stats,
                    "missed": len(s.missed),
                }
                for s in snaps
            ]
        )
        return
    from rich.table import Table

    t = Table("ID", "Time", "Host", "Paths", "Tags", "Size", box=None)
    for s in snaps:
        t.add_row(
            s.id[:8],
            f"{s.time:%Y-%m-%d %H:%M:%S}",
            s.host,
            "\n".join(s.paths),
            ",".join(s.tags),
            human_bytes(float(s.stats.get("total_bytes", 0))),
        )
    out.print(t)
    out.print(f"{len(snaps)} restore point(s)")


@app.command()
def ls(
    snapshot: Annotated[str, typer.Argument(help="Restore point id (prefix) or 'latest'.")],
    path: Annotated[str, typer.Argument(help="Path inside the restore point.")] = "",
    json_: JsonOpt = False,
) -> None:
    """List the files of a restore point."""
    from rekindle.repository.browse import walk

    with open_repo(read_only=True) as repo:
        snap = repo.find_snapshot(snapshot)
        for p, node in walk(repo, snap, path):
            if json_:
                print_json(
                    {
                        "path": p,
                        "type": node.type.name.lower(),
                        "size": node.size,
                        "mode": oct(node.mode),
                        "mtime_ns": node.mtime_ns,
                    }
                )
            else:
                sys.stdout.write(f"{node.type.name.lower():8} {node.size:>12} {p}\n")


@app.command()
def find(
    pattern: Annotated[str, typer.Argument(help="Glob on names (or paths if it has '/').")],
    json_: JsonOpt = False,
) -> None:
    """Find files in every restore point."""
    from rekindle.repository.browse import find as run_find

    with open_repo(read_only=True) as repo:
        for snap in repo.snapshots():
            for p, node in run_find(repo, snap, pattern):
                if json_:
                    print_json({"snapshot": snap.id, "path": p, "size": node.size})
                else:
                    sys.stdout.write(f"{snap.id[:8]} {snap.time:%Y-%m-%d %H:%M} {p}\n")


@app.command()
def diff(
    first: Annotated[str, typer.Argument(help="Older restore point.")],
    second: Annotated[str, typer.Argument(help="Newer restore point.")],
    json_: JsonOpt = False,
) -> None:
    """Show what changed between two restore points.

    + added, - removed, M content modified, U metadata only (mode, owner, times), T type changed.
    """
    from rekindle.repository.browse import diff as run_diff

    with open_repo(read_only=True) as repo:
        a, b = repo.find_snapshot(first), repo.find_snapshot(second)
        for change in run_diff(repo, a, b):
            if json_:
                print_json({"change": change.kind, "path": change.path})
            else:
                sys.stdout.write(f"{change.kind} {change.path}\n")


@app.command()
def stats(json_: JsonOpt = False) -> None:
    """Repository size: raw, after deduplication and compression, and the ratio."""
    from rekindle.repository.browse import repo_stats

    with open_repo(read_only=True) as repo:
        st = repo_stats(repo)
    if json_:
        print_json(st.as_dict())
        return
    out.print(f"restore points:   {st.snapshots}")
    out.print(f"raw size:         {human_bytes(st.raw_bytes)} (all restore points)")
    out.print(f"unique data:      {human_bytes(st.unique_bytes)}")
    out.print(
        f"stored:           {human_bytes(st.stored_bytes)} in {st.blobs} blobs, {st.packs} packs"
    )
    out.print(f"dedup ratio:      {st.dedup_ratio:.2f}x")


@app.command()
def check(
    read_data: Annotated[
        bool, typer.Option("--read-data", help="Also read, decrypt and verify every byte.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Check the repository's structure (and data). Exit status 4 when damage is found."""
    from rekindle.repository.check import check as run_check

    with open_repo() as repo:
        report = run_check(repo, read_data=read_data)
    if json_:
        print_json(
            {
                "ok": report.ok,
                "errors": report.errors,
                "warnings": report.warnings,
                "damaged_packs": sorted(report.damaged_packs),
                "damaged_files": [{"snapshot": s, "path": p} for s, p in report.damaged_files],
            }
        )
    else:
        for w in report.warnings:
            out.print(f"warning: {w}")
        for e in report.errors:
            out.print(f"error: {e}")
        for s, p in report.damaged_files:
            out.print(f"damaged file: {s[:8]} {p}")
    if not report.ok:
        raise DamageFoundError(f"check found {len(report.errors)} error(s)")
    if not json_:
        out.print("no errors were found")


@app.command()
def repair(
    read_data: Annotated[
        bool,
        typer.Option("--read-data", help="Verify every blob; leave damaged ones out of the index."),
    ] = False,
) -> None:
    """Rebuild the index from the packs alone."""
    from rekindle.repository.repair import repair_index

    with open_repo() as repo:
        report = repair_index(repo, read_data=read_data)
    out.print(str(report))


@app.command()
def forget(
    ids: Annotated[list[str] | None, typer.Argument(help="Restore points to forget.")] = None,
    keep_last: Annotated[int | None, typer.Option(help="Keep the last N.")] = None,
    keep_hourly: Annotated[int | None, typer.Option(help="Keep one per hour for N hours.")] = None,
    keep_daily: Annotated[int | None, typer.Option(help="Keep one per day for N days.")] = None,
    keep_weekly: Annotated[int | None, typer.Option(help="Keep one per week.")] = None,
    keep_monthly: Annotated[int | None, typer.Option(help="Keep one per month.")] = None,
    keep_yearly: Annotated[int | None, typer.Option(help="Keep one per year.")] = None,
    keep_within: Annotated[
        str | None, typer.Option(help="Keep all newer than this (e.g. 60d, 12h, 1y2m).")
    ] = None,
    keep_tag: Annotated[list[str] | None, typer.Option(help="Keep those with this tag.")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Prune right after.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Remove restore points by id or by retention rules (data goes with 'prune')."""
    from rekindle.repository.forget import forget as run_forget
    from rekindle.repository.forget import forget_ids
    from rekindle.repository.retention import RetentionPolicy, parse_duration

    rules_given = any(
        v
        for v in (
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            keep_tag,
        )
    )
    if ids and rules_given:
        raise UsageError("give restore point ids or --keep-* rules, not both")
    with open_repo() as repo:
        if ids:
            removed = [s.id for s in (repo.find_snapshot(i) for i in ids)]
            if not dry_run:
                forget_ids(repo, removed)
            kept: list[str] = []
        else:
            policy = RetentionPolicy(
                keep_last=keep_last,
                keep_hourly=keep_hourly,
                keep_daily=keep_daily,
                keep_weekly=keep_weekly,
                keep_monthly=keep_monthly,
                keep_yearly=keep_yearly,
                keep_within=parse_duration(keep_within) if keep_within else None,
                keep_tags=frozenset(keep_tag or []),
            )
            if policy.is_empty():
                raise UsageError("no retention rule given: refusing to forget everything")
            res = run_forget(repo, policy, dry_run=dry_run)
            removed = [s.id for s in res.remove]
            kept = [s.id for s in res.keep]
        if not json_:
            verb = "would remove" if dry_run else "removed"
            out.print(f"{verb} {len(removed)} restore point(s), kept {len(kept)}")
            for sid in removed:
                out.print(f"  - {sid[:8]}")
        result: dict[str, object] = {"removed": removed, "kept": kept, "dry_run": dry_run}
        if prune and not dry_run:
            result["prune"] = _prune(repo, timedelta(hours=1), json_=json_)
        if json_:
            print_json(result)


def _prune(repo: Repository, grace: timedelta, *, json_: bool) -> dict[str, object]:
    """Run prune; print its report unless the caller prints JSON. Returns the report."""
    import dataclasses

    from rekindle.repository.prune import prune as run_prune

    report = run_prune(repo, grace=grace, progress=None if json_ else _say)
    if not json_:
        out.print(str(report))
    return dataclasses.asdict(report)


def _say(message: str) -> None:
    err.print(f"[dim]{message} ...[/]")


@app.command()
def prune(
    grace_minutes: Annotated[
        float, typer.Option(help="Delete unreferenced packs only after this many minutes.")
    ] = 60.0,
    json_: JsonOpt = False,
) -> None:
    """Reclaim space of forgotten restore points. Never blocks running backups."""
    with open_repo() as repo:
        report = _prune(repo, timedelta(minutes=grace_minutes), json_=json_)
    if json_:
        print_json(report)


@app.command()
def copy(
    to: Annotated[str, typer.Option("--to", help="Destination repository location.")],
    to_password_file: Annotated[
        Path | None, typer.Option(help="Password of the destination (env REKINDLE_TO_PASSWORD)")
    ] = None,
    ids: Annotated[list[str] | None, typer.Argument(help="Restore points (default all).")] = None,
) -> None:
    """Copy restore points to a related repository (see 'init --copy-keys-from')."""
    from rekindle.repository.copy import copy_snapshots

    with open_repo() as src:
        dst = Repository.open(
            open_location(to),
            read_secret(
                password_file=to_password_file,
                env="REKINDLE_TO_PASSWORD",
                flag="--to-password-file",
            ),
            cache_root=cache_root(),
        )
        with dst:
            wanted = [src.find_snapshot(i).id for i in ids] if ids else None
            report = copy_snapshots(src, dst, wanted)
    out.print(str(report))


@app.command()
def unlock(
    all_: Annotated[
        bool, typer.Option("--all", help="Remove every lock, not only stale ones.")
    ] = False,
) -> None:
    """Remove stale locks left by crashed processes."""
    from rekindle.repository.locks import remove_stale

    with open_repo() as repo:
        n = remove_stale(repo, all_locks=all_)
    out.print(f"removed {n} lock(s)")


@key_app.command("list")
def key_list(json_: JsonOpt = False) -> None:
    """List the key files."""
    with open_repo(read_only=True) as repo:
        rows = [
            {
                "id": name.split("/", 1)[1],
                "kind": kf.kind.name.lower(),
                "label": kf.label,
                "created": kf.created,
            }
            for name, kf in repo.key_files()
        ]
    if json_:
        print_json(rows)
        return
    from rich.table import Table

    t = Table("ID", "Kind", "Label", "Created", box=None)
    for r in rows:
        t.add_row(r["id"][:12], r["kind"], r["label"], r["created"])
    out.print(t)


def _new_secret(new_password_file: Path | None, new_key_file: Path | None) -> object:
    from rekindle.cli.common import read_secret as rs

    if new_key_file is not None:
        return rs(key_file=new_key_file)
    return rs(
        password_file=new_password_file,
        env="REKINDLE_NEW_PASSWORD",
        prompt="New password: ",
        confirm=True,
    )


@key_app.command("add")
def key_add(
    new_password_file: Annotated[
        Path | None, typer.Option(help="File holding the new password (env REKINDLE_NEW_PASSWORD)")
    ] = None,
    new_key_file: Annotated[
        Path | None,
        typer.Option(help="Add an operator key (32 bytes or 64 hex) instead of a password."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label shown by 'key list'.")] = None,
) -> None:
    """Add a password (or operator key) that also opens the repository."""
    from rekindle.repository.repo import Secret

    new = _new_secret(new_password_file, new_key_file)
    assert isinstance(new, Secret)  # noqa: S101 - narrowing for the type checker
    from rekindle.repository.locks import Lock

    with open_repo() as repo, Lock(repo, "key", exclusive=True):
        name = repo.add_key(new, label)
    out.print(f"added key {name.split('/', 1)[1][:12]}")


@key_app.command("remove")
def key_remove(key_id: Annotated[str, typer.Argument(help="Key id (prefix).")]) -> None:
    """Remove a key file (never the last one, nor the only one your password opens)."""
    from rekindle.repository.locks import Lock

    current = read_secret()
    with open_repo(secret=current) as repo, Lock(repo, "key", exclusive=True):
        name = repo.remove_key(key_id, current=current)
    out.print(f"removed key {name.split('/', 1)[1][:12]}")


@key_app.command("passwd")
def key_passwd(
    new_password_file: Annotated[
        Path | None, typer.Option(help="File holding the new password (env REKINDLE_NEW_PASSWORD)")
    ] = None,
) -> None:
    """Change the password: add a key with the new one, then remove the current one."""
    from rekindle.repository.repo import Secret

    current = read_secret()
    new = _new_secret(new_password_file, None)
    assert isinstance(new, Secret)  # noqa: S101 - narrowing for the type checker
    from rekindle.repository.locks import Lock

    with open_repo(secret=current) as repo, Lock(repo, "key", exclusive=True):
        mine = [n for n, kf in repo.key_files() if _opens_with(repo, n, current)]
        added = repo.add_key(new)
        for name in mine:
            repo.backend.delete(name)
    out.print(f"password changed (new key {added.split('/', 1)[1][:12]})")


def _opens_with(repo: Repository, name: str, secret: object) -> bool:
    from rekindle.repository.repo import Secret, _opens

    assert isinstance(secret, Secret)  # noqa: S101 - narrowing for the type checker
    return _opens(repo.backend, name, secret, repo.config.id)


__all__ = ["app", "os"]
