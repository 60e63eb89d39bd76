"""The command-line contract of issue 2, section 4a, checked through real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REKINDLE, Cli
from tests.helpers import tree_differences


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "a.txt").write_text("alpha\n" * 1000)
    (src / "b.bin").write_bytes(os.urandom(200_000))
    (src / "empty").write_bytes(b"")
    (src / "link").symlink_to("dir/a.txt")
    return src


def _backup_json(cli: Cli, src: Path) -> dict[str, Any]:
    """`rekindle repo backup --json .` run inside src; its last line as JSON."""
    p = subprocess.run(
        [REKINDLE, "repo", "backup", "--json", "."],
        cwd=src,
        env=cli.env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def test_backup_snapshots_restore_check_stats(cli: Cli, tmp_path: Path) -> None:
    src = _src(tmp_path)
    init = cli.run("repo", "init")
    assert "created repository" in init.stdout
    summary = _backup_json(cli, src)
    assert len(summary["id"]) == 64
    assert summary["files_new"] == 3
    assert summary["total_bytes"] == 6000 + 200_000

    snaps = cli.json("repo", "snapshots")
    assert [s["id"] for s in snaps] == [summary["id"]]

    target = tmp_path / "restored"
    cli.run("repo", "restore", "latest", "--target", str(target))
    assert tree_differences(src, target) == []
    cli.run(
        "repo", "restore", summary["id"][:8], "--target", str(tmp_path / "part"), "--include", "dir"
    )
    assert sorted(p.name for p in (tmp_path / "part").rglob("*")) == ["a.txt", "dir"]

    assert "no errors" in cli.run("repo", "check").stdout
    assert "no errors" in cli.run("repo", "check", "--read-data").stdout
    stats = cli.json("repo", "stats")
    assert stats["snapshots"] == 1
    assert stats["raw_bytes"] == 206_000
    assert 0 < stats["stored_bytes"] < 206_000  # the text compresses

    ls = cli.run("repo", "ls", "latest").stdout
    assert "dir/a.txt" in ls
    found = cli.run("repo", "find", "a.txt").stdout
    assert "dir/a.txt" in found

    (src / "dir" / "a.txt").write_text("changed")
    second = _backup_json(cli, src)
    assert second["files_changed"] == 1 and second["files_unmodified"] == 2
    diff = cli.run("repo", "diff", summary["id"], second["id"]).stdout.splitlines()
    assert diff == ["M dir/a.txt"]

    forget = cli.json("repo", "forget", "--keep-last", "1", "--prune")
    assert forget["removed"] == [summary["id"]]
    assert [s["id"] for s in cli.json("repo", "snapshots")] == [second["id"]]
    assert "no errors" in cli.run("repo", "check", "--read-data").stdout


def test_wrong_password_is_a_clear_one_line_error(cli: Cli) -> None:
    cli.run("repo", "init")
    p = cli.run("repo", "snapshots", check=False, env={"REKINDLE_PASSWORD": "nope"})
    assert p.returncode == 5
    assert p.stderr.strip().splitlines() == [
        "rekindle: wrong password (no key file of this repository opens with it)"
    ]


def test_not_a_repository(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    p = cli.run("repo", "snapshots", check=False, env={"REKINDLE_REPO": str(tmp_path / "empty")})
    assert p.returncode == 6
    assert "no repository" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_newer_format_version_is_refused_before_the_password(cli: Cli) -> None:
    cli.run("repo", "init")
    config = cli.repo / "config"
    config.write_text(config.read_text().replace('"version": 1', '"version": 2'))
    p = cli.run("repo", "snapshots", check=False, env={"REKINDLE_PASSWORD": "irrelevant"})
    assert p.returncode == 7
    assert "version 2 is not supported" in p.stderr


def test_password_never_from_an_argument(cli: Cli) -> None:
    p = cli.run("repo", "--password", "x", "snapshots", check=False)
    assert p.returncode == 2


def test_password_file_and_key_management(cli: Cli, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from a file\n")
    env = {"REKINDLE_PASSWORD": ""}
    base = {k: v for k, v in cli.env.items() if k != "REKINDLE_PASSWORD"}
    cli.env = base
    cli.run("repo", "--password-file", str(pw), "init", env=env)
    new = tmp_path / "new"
    new.write_text("second password")
    cli.run("repo", "--password-file", str(pw), "key", "add", "--new-password-file", str(new))
    keys = cli.json("repo", "--password-file", str(new), "key", "list")
    assert len(keys) == 2
    cli.run("repo", "--password-file", str(new), "key", "passwd", "--new-password-file", str(pw))
    assert len(cli.json("repo", "--password-file", str(pw), "key", "list")) == 2
    # The old "second password" key was replaced: it no longer opens the repository.
    p = cli.run("repo", "--password-file", str(new), "snapshots", check=False)
    assert p.returncode == 5


def _as_nobody() -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root privileges")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_missed_files_exit_3_and_are_listed(cli: Cli, tmp_path: Path) -> None:
    prefix: list[str] = []
    base = tmp_path
    if os.geteuid() == 0:
        # Root reads everything: run the backup as 'nobody' so permissions apply. pytest keeps
        # its base directory private (and resets its mode when another worker starts), so
        # this test works in a directory of its own that 'nobody' can reach.
        prefix = _as_nobody()
        base = Path(tempfile.mkdtemp(prefix="rekindle-missed-"))
        base.chmod(0o777)
    try:
        env = {
            **cli.env,
            "REKINDLE_REPO": str(base / "repo"),
            "REKINDLE_CACHE_DIR": str(base / "cache"),
        }
        src = _src(base)
        secret = src / "secret"
        secret.write_text("unreadable")
        secret.chmod(0)
        cli.run("repo", "init", env=env)
        if prefix:
            subprocess.run(
                [
                    "chmod",
                    "-R",
                    "a+rwX",
                    str(base / "repo"),
                    str(base / "cache"),
                    str(src / "dir"),
                    str(src / "b.bin"),
                    str(src / "empty"),
                    str(src),
                ],
                check=True,
            )
            secret.chmod(0)
        p = subprocess.run(
            [*prefix, REKINDLE, "repo", "backup", "--json", "."],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert p.returncode == 3, p.stderr
        assert f"missed: {secret}" in p.stderr
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        assert summary["missed"] == 1
        assert summary["files_new"] == 3
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def test_full_disk_is_a_clear_error_and_the_repository_survives(cli: Cli, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=False
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount tmpfs here")
    try:
        env = {"REKINDLE_REPO": str(mnt / "repo")}
        cli.run("repo", "init", env=env)
        small = tmp_path / "small-src"
        small.mkdir()
        (small / "f").write_bytes(os.urandom(100_000))
        subprocess.run(
            [REKINDLE, "repo", "backup", "."],
            cwd=small,
            env={**cli.env, **env},
            check=True,
            capture_output=True,
        )
        big = tmp_path / "big-src"
        big.mkdir()
        for i in range(8):
            (big / f"r{i}").write_bytes(os.urandom(1_000_000))
        p = subprocess.run(
            [REKINDLE, "repo", "backup", "."],
            cwd=big,
            env={**cli.env, **env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert p.returncode == 9, p.stderr
        assert "No space" in p.stderr or "no space" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
        assert "no errors" in cli.run("repo", "check", "--read-data", env=env).stdout
        cli.run("repo", "restore", "latest", "--target", str(tmp_path / "back"), env=env)
        assert (tmp_path / "back" / "f").read_bytes() == (small / "f").read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_password_file_variable_and_precedence(cli: Cli, tmp_path: Path) -> None:
    cli.run("repo", "init")
    pw = tmp_path / "pw"
    pw.write_text("e2e password\n")
    env = {k: v for k, v in cli.env.items() if k != "REKINDLE_PASSWORD"}
    env["REKINDLE_PASSWORD_FILE"] = str(pw)
    p = subprocess.run(
        [REKINDLE, "repo", "snapshots"], env=env, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    # The variable's file wins over REKINDLE_PASSWORD.
    env["REKINDLE_PASSWORD"] = "wrong"
    assert cli.run("repo", "snapshots", env=env).returncode == 0
    env.pop("REKINDLE_PASSWORD_FILE")
    p = cli.run("repo", "snapshots", env=env, check=False)
    assert p.returncode == 5


def test_relative_backup_paths_and_bandwidth_limit(cli: Cli, tmp_path: Path) -> None:
    src = _src(tmp_path)
    cli.run("repo", "init")
    started = time.monotonic()
    p = subprocess.run(
        [REKINDLE, "repo", "--limit-kib", "400", "backup", "--json", "dir", "b.bin"],
        cwd=src,
        env=cli.env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert p.returncode == 0, p.stderr
    # ~200 KB of random data (plus trees and index) at 400 KiB/s, with a 400 KiB burst: the
    # limit must not make it slower than a few seconds, and the files must be there.
    assert elapsed < 30
    out = tmp_path / "out"
    cli.run("repo", "restore", "latest", "--target", str(out))
    assert sorted(x.name for x in out.iterdir()) == ["b.bin", "dir"]
    assert (out / "b.bin").read_bytes() == (src / "b.bin").read_bytes()


def test_forget_refuses_ids_together_with_rules(cli: Cli, tmp_path: Path) -> None:
    src = _src(tmp_path)
    cli.run("repo", "init")
    subprocess.run(
        [REKINDLE, "repo", "backup", "."], cwd=src, env=cli.env, check=True, capture_output=True
    )
    p = cli.run("repo", "forget", "latest", "--keep-last", "1", check=False)
    assert p.returncode == 2
    assert "not both" in p.stderr
    assert len(cli.json("repo", "snapshots")) == 1


def test_restore_exit_code_tells_damage_from_destination_trouble(cli: Cli, tmp_path: Path) -> None:
    src = _src(tmp_path)
    cli.run("repo", "init")
    subprocess.run(
        [REKINDLE, "repo", "backup", "."], cwd=src, env=cli.env, check=True, capture_output=True
    )
    # Destination trouble: a file where the target's subdirectory must go.
    target = tmp_path / "t"
    target.mkdir()
    (target / "dir").write_text("in the way")
    p = cli.run("repo", "restore", "latest", "--target", str(target), check=False)
    assert p.returncode == 1, p.stderr
    assert "not restored: dir" in p.stderr
    # Damage: every data pack deleted.
    for f in (cli.repo / "data").rglob("*"):
        if f.is_file():
            f.unlink()
    p = cli.run("repo", "restore", "latest", "--target", str(tmp_path / "t2"), check=False)
    assert p.returncode == 4, p.stderr
    assert "not restored: b.bin" in p.stderr
