"""Crash safety: kill -9 backups and prunes at random moments, again and again.

Afterwards `check --read-data` passes and every restore point that completed restores
byte-identical to the source as it was when that backup ran. `make test` runs at least 30
kills of each; `make soak` (REKINDLE_SOAK_KILLS) runs many more.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REKINDLE, Cli
from tests.helpers import tree_differences

KILLS = int(os.environ.get("REKINDLE_SOAK_KILLS", "30"))


def _mutate(src: Path, rng: random.Random, round_: int) -> None:
    for i in range(rng.randint(3, 12)):
        d = src / f"d{rng.randint(0, 5)}"
        d.mkdir(exist_ok=True)
        (d / f"f{round_}_{i}").write_bytes(rng.randbytes(rng.randint(0, 300_000)))
    victims = sorted(src.rglob("f*"))
    for v in rng.sample(victims, min(2, len(victims))):
        v.unlink()
    (src / "big").write_bytes(rng.randbytes(3_000_000))  # several packs each time


def _backup(cli: Cli, src: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [REKINDLE, "repo", "backup", "--json", "."],
        cwd=src,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_at_random(p: subprocess.Popen[str], rng: random.Random, upto: float) -> str | None:
    """Kill -9 after a random delay; returns the restore point id if it finished first."""
    deadline = time.monotonic() + rng.uniform(0.05, upto)
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.communicate()
        return None
    out, err = p.communicate()
    assert p.returncode in (0, 3), err
    return str(json.loads(out.strip().splitlines()[-1])["id"])


def _verify_all(cli: Cli, tmp_path: Path, expected: dict[str, Path]) -> None:
    check = cli.run("repo", "check", "--read-data", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    present = {s["id"] for s in cli.json("repo", "snapshots")}
    for sid, copy in expected.items():
        if sid not in present:
            continue  # forgotten on purpose
        out = tmp_path / f"verify-{sid[:8]}"
        cli.run("repo", "restore", sid, "--target", str(out))
        assert tree_differences(copy, out) == [], sid
        shutil.rmtree(out)


def _start(cli: Cli, tmp_path: Path) -> Path:
    """A repository with small packs (many pack writes to interrupt) and an empty source."""
    src = tmp_path / "src"
    src.mkdir()
    cli.run("repo", "init", "--pack-size-mib", "1")
    return src


@pytest.mark.slow
def test_kill_backup_at_random_points(cli: Cli, tmp_path: Path) -> None:
    rng = random.Random(1234)
    src = _start(cli, tmp_path)
    expected: dict[str, Path] = {}
    kills = 0
    round_ = 0
    while kills < KILLS:
        round_ += 1
        _mutate(src, rng, round_)
        snapshot_of_src = tmp_path / f"copy{round_}"
        shutil.copytree(src, snapshot_of_src, symlinks=True)
        sid = _kill_at_random(_backup(cli, src), rng, 1.5)
        if sid is None:
            kills += 1
            shutil.rmtree(snapshot_of_src)
        else:
            expected[sid] = snapshot_of_src
        if round_ % 10 == 0:
            assert cli.run("repo", "check", check=False).returncode == 0
    # A clean run at the end re-uses what the killed runs uploaded.
    final = _kill_at_random(_backup(cli, src), rng, 1e9)
    assert final is not None
    expected[final] = src
    _verify_all(cli, tmp_path, expected)


@pytest.mark.slow
def test_kill_prune_at_random_points(cli: Cli, tmp_path: Path) -> None:
    rng = random.Random(99)
    src = _start(cli, tmp_path)
    expected: dict[str, Path] = {}
    kills = 0
    round_ = 0
    while kills < KILLS:
        round_ += 1
        _mutate(src, rng, round_)
        copy = tmp_path / f"copy{round_}"
        shutil.copytree(src, copy, symlinks=True)
        sid = _kill_at_random(_backup(cli, src), rng, 1e9)
        assert sid is not None
        expected[sid] = copy
        if len(expected) > 3:
            cli.run("repo", "forget", "--keep-last", "2")
            for gone in [
                s for s in expected if s not in {x["id"] for x in cli.json("repo", "snapshots")}
            ]:
                shutil.rmtree(expected.pop(gone))
        p = subprocess.Popen(
            [REKINDLE, "repo", "prune", "--grace-minutes", "0"],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if _kill_prune(p, rng):
            kills += 1
        check = cli.run("repo", "check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    cli.run("repo", "prune", "--grace-minutes", "0")
    _verify_all(cli, tmp_path, expected)


def _kill_prune(p: subprocess.Popen[str], rng: random.Random) -> bool:
    deadline = time.monotonic() + rng.uniform(0.05, 1.2)
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.005)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.communicate()
        return True
    _, err = p.communicate()
    assert p.returncode == 0, err
    return False
