"""Run the `rekindle` command as a user would: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REKINDLE = str(Path(sys.executable).parent / "rekindle")


@dataclass
class Cli:
    repo: Path
    env: dict[str, str]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [REKINDLE, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"rekindle {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
            )
        return p

    def json(self, *args: str) -> Any:
        out = self.run(*args, "--json").stdout.strip().splitlines()
        return json.loads(out[-1])

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [REKINDLE, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKINDLE_")}
    env.update(
        REKINDLE_REPO=str(tmp_path / "repo"),
        REKINDLE_PASSWORD="e2e password",
        REKINDLE_CACHE_DIR=str(tmp_path / "cache"),
        COLUMNS="200",
    )
    return Cli(tmp_path / "repo", env)
