"""The whole command-line workflow on an S3 repository (moto in server mode on loopback)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

from tests.e2e.conftest import REKINDLE
from tests.helpers import tree_differences


def _run(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    p = subprocess.run(
        [REKINDLE, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_backup_restore_check_prune_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    rng = random.Random(9)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(30):
        (src / "sub" / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 200_000)))
    (src / "link").symlink_to("sub/f1")
    env = dict(
        os.environ,
        REKINDLE_REPO=f"s3://{s3_bucket}/team/repo",
        REKINDLE_PASSWORD="s3 test password",
        REKINDLE_CACHE_DIR=str(tmp_path / "cache"),
    )
    _run(env, "repo", "init", "--pack-size-mib", "1")
    first = json.loads(_run(env, "repo", "backup", "--json", ".", cwd=src).splitlines()[-1])
    (src / "sub" / "f3").write_bytes(b"changed")
    second = json.loads(_run(env, "repo", "backup", "--json", ".", cwd=src).splitlines()[-1])
    assert second["files_changed"] == 1
    _run(env, "repo", "check", "--read-data")
    _run(env, "repo", "restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_differences(src, tmp_path / "out") == []

    forgot = json.loads(_run(env, "repo", "forget", "--json", first["id"]).splitlines()[-1])
    assert forgot["removed"] == [first["id"]]
    pruned = json.loads(
        _run(env, "repo", "prune", "--grace-minutes", "0", "--json").splitlines()[-1]
    )
    assert pruned["packs_deleted"] >= 1
    _run(env, "repo", "check", "--read-data")
    snaps = json.loads(_run(env, "repo", "snapshots", "--json"))
    assert [s["id"] for s in snaps] == [second["id"]]

    # Everything lives under the prefix, nothing else in the bucket.
    import boto3

    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys and all(k.startswith("team/repo/") for k in keys)
    assert "team/repo/config" in keys
