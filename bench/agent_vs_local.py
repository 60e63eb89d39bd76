"""An agent backing up through a storage node over TLS, against the engine writing to a local
repository, on the same data in the same run (issue target: agent >= 0.8x local throughput).

For each repetition, in turn:
* local: `rekindle repo init` + `rekindle repo backup DATA` into a fresh directory;
* agent: a fresh installation (`rekindle cloud serve`, `rekindle storage serve`, an enrolled
  `rekindle agent run`, all on 127.0.0.1), a backup set of DATA, Backup Now; the time is from
  the admin's request to the job's end as the cloud records it.
Both are initial (full) backups with compression and encryption. Prints medians and the
ratio; appends a JSON line to --out.

    .venv/bin/python bench/agent_vs_local.py DATA [--reps 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REKINDLE = str(Path(sys.executable).parent / "rekindle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def data_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def local_run(data: Path, work: Path) -> float:
    env = {**os.environ, "REKINDLE_PASSWORD": "bench", "REKINDLE_CACHE_DIR": str(work / "cache")}
    repo = work / "repo"
    subprocess.run(
        [REKINDLE, "repo", "--repo", str(repo), "init"], env=env, check=True, capture_output=True
    )
    t = time.perf_counter()
    subprocess.run(
        [REKINDLE, "repo", "--repo", str(repo), "backup", str(data)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t


class Installation:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.cport, self.sport = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.cport}"
        self.env = {**os.environ, "REKINDLE_ADMIN_CONFIG": str(work / "admin.json")}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> None:
        with (self.work / f"{args[0]}.log").open("ab") as log:
            self.procs.append(
                subprocess.Popen(
                    [REKINDLE, *args],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def admin(self, *args: str) -> Any:
        out = subprocess.run(
            [REKINDLE, "admin", *args, "--json"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout)

    def up(self, data: Path) -> int:
        w = self.work
        subprocess.run(
            [
                REKINDLE,
                "cloud",
                "storage-credentials",
                "--data-dir",
                str(w / "cloud"),
                "--out",
                str(w / "storage"),
                "--hostname",
                "127.0.0.1",
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.start(
            "cloud",
            "serve",
            "--data-dir",
            str(w / "cloud"),
            "--port",
            str(self.cport),
            "--storage-url",
            f"https://127.0.0.1:{self.sport}",
        )
        self.start("storage", "serve", "--data-dir", str(w / "storage"), "--port", str(self.sport))
        ca = w / "cloud" / "ca" / "ca.pem"
        for _ in range(300):
            try:
                ctx = ssl.create_default_context(cafile=str(ca))
                httpx.get(f"{self.url}/health", verify=ctx, timeout=2).raise_for_status()
                httpx.get(f"https://127.0.0.1:{self.sport}/health", verify=ctx, timeout=2)
                break
            except (httpx.HTTPError, OSError, ssl.SSLError):
                time.sleep(0.1)
        subprocess.run(
            [
                REKINDLE,
                "admin",
                "login",
                "--cloud",
                self.url,
                "--ca-file",
                str(ca),
                "--password-file",
                str(w / "cloud" / "initial-admin-password"),
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        token = self.admin("activation-token", "1")["token"]
        subprocess.run(
            [
                REKINDLE,
                "agent",
                "enroll",
                "--cloud",
                self.url,
                "--ca-file",
                str(ca),
                "--token",
                token,
                "--data-dir",
                str(w / "agent"),
                "--hostname",
                "bench",
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        server = int(json.loads((w / "agent" / "agent.json").read_text())["server_id"])
        self.admin("backup-set-add", str(server), "data", "--include", str(data))
        self.start("agent", "run", "--data-dir", str(w / "agent"), "--hostname", "bench")
        for _ in range(300):
            if any(s["connected"] for s in self.admin("servers")):
                return server
            time.sleep(0.1)
        raise RuntimeError("agent did not connect")

    def down(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def agent_run(data: Path, work: Path) -> float:
    inst = Installation(work)
    try:
        server = inst.up(data)
        # Poll over one HTTPS connection: starting a `rekindle admin` process per poll would
        # take CPU from the agent on this 2-core machine and bias the measurement.
        cfg = json.loads((work / "admin.json").read_text())
        ctx = ssl.create_default_context(cafile=str(work / "cloud" / "ca" / "ca.pem"))
        with httpx.Client(
            base_url=f"{inst.url}/api/v1",
            verify=ctx,
            headers={"Authorization": f"Bearer {cfg['token']}"},
            timeout=30,
        ) as api:
            t = time.perf_counter()
            r = api.post(f"/servers/{server}/backup-now", json={})
            r.raise_for_status()
            job = r.json()
            while True:
                row = api.get(f"/jobs/{job['id']}").json()
                if row["state"] not in ("queued", "running"):
                    break
                time.sleep(0.1)
            wall = time.perf_counter() - t
        if row["state"] != "succeeded":
            raise RuntimeError(f"agent backup ended {row['state']}: {row['error']}")
        return wall
    finally:
        inst.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    size = data_bytes(args.data)
    local: list[float] = []
    agent: list[float] = []
    for rep in range(args.reps):
        for kind, fn, into in (("local", local_run, local), ("agent", agent_run, agent)):
            work = Path(tempfile.mkdtemp(prefix=f"rekindle-{kind}-"))
            try:
                secs = fn(args.data, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            into.append(secs)
            print(f"rep {rep} {kind:5}: {secs:6.2f} s  {size / secs / 1e6:6.1f} MB/s", flush=True)
    lm, am = statistics.median(local), statistics.median(agent)
    ratio = lm / am  # agent throughput / local throughput
    print(
        f"data {size / 1e6:.0f} MB; median local {lm:.2f} s ({size / lm / 1e6:.0f} MB/s), "
        f"agent via storage node {am:.2f} s ({size / am / 1e6:.0f} MB/s)"
    )
    print(
        f"agent/local throughput {ratio:.2f} (target >= 0.8): {'PASS' if ratio >= 0.8 else 'FAIL'}"
    )
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {
                        "time": time.time(),
                        "bytes": size,
                        "local_s": local,
                        "agent_s": agent,
                        "ratio": ratio,
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
