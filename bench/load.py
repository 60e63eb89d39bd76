"""Load benchmark: N simulated agents long-polling one cloud over mutual TLS.

Starts `rekindle cloud serve` (SQLite, its own data dir), enrolls N agents (one activation
token, real CSRs, real client certificates), gives each a backup set, and runs every agent as
an asyncio task that long-polls `/agent/v1/poll` the way `rekindle agent run` does. While they
poll, it measures:

* poll latency: round trip of a poll that returns at once (`wait=0`), sent as randomly chosen
  agents, one at a time;
* job dispatch latency: from the moment `POST /servers/ID/backup-now` returned to the moment
  the long-polling agent holds the job.

Prints p50/p95/p99/max and writes a JSON line. Usage:
    .venv/bin/python bench/load.py [--agents 1000] [--jobs 300] [--probes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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

import httpx

from rekindle.net import pki

REKINDLE = str(Path(sys.executable).parent / "rekindle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(name: str, ms: list[float]) -> dict[str, float]:
    out = {
        "n": len(ms),
        "p50": statistics.median(ms),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "max": max(ms),
    }
    print(
        f"{name:22} n={out['n']:5}  p50 {out['p50']:7.1f} ms  p95 {out['p95']:7.1f} ms  "
        f"p99 {out['p99']:7.1f} ms  max {out['max']:7.1f} ms"
    )
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rekindle-load-"))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {**os.environ, "REKINDLE_CLOUD_SCHEDULER_INTERVAL_S": "60"}
    log = (root / "cloud.log").open("wb")
    cloud = subprocess.Popen(
        [REKINDLE, "cloud", "serve", "--data-dir", str(root / "cloud"), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ca_file = root / "cloud" / "ca" / "ca.pem"
    try:
        for _ in range(300):
            if ca_file.exists():
                try:
                    ctx = ssl.create_default_context(cafile=str(ca_file))
                    httpx.get(f"{url}/health", verify=ctx, timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.1)
        ctx = ssl.create_default_context(cafile=str(ca_file))
        password = (root / "cloud" / "initial-admin-password").read_text().strip()
        admin = httpx.AsyncClient(base_url=url, verify=ctx, timeout=60)
        r = await admin.post(
            "/api/v1/login", json={"email": "admin@localhost", "password": password}
        )
        admin.headers["Authorization"] = f"Bearer {r.json()['token']}"
        group = (await admin.get("/api/v1/groups")).json()[0]["id"]
        token = (
            await admin.post(
                "/api/v1/activation-tokens", json={"group_id": group, "uses": args.agents}
            )
        ).json()["token"]

        t0 = time.perf_counter()
        enroller = httpx.AsyncClient(base_url=url, verify=ctx, timeout=60)
        agents: list[tuple[int, httpx.AsyncClient]] = []
        certs = root / "certs"
        certs.mkdir()
        sem = asyncio.Semaphore(16)

        async def enroll(i: int) -> None:
            key = pki.new_key()
            async with sem:
                res = await enroller.post(
                    "/agent/v1/enroll",
                    json={
                        "token": token,
                        "hostname": f"sim-{i}",
                        "os": "Linux sim",
                        "csr_pem": pki.make_csr(key, f"sim-{i}").decode(),
                    },
                )
                res.raise_for_status()
                body = res.json()
                (certs / f"{i}.pem").write_text(body["certificate_pem"])
                (certs / f"{i}.key").write_bytes(pki.key_pem(key))
                actx = ssl.create_default_context(cafile=str(ca_file))
                actx.load_cert_chain(str(certs / f"{i}.pem"), str(certs / f"{i}.key"))
                client = httpx.AsyncClient(
                    base_url=url, verify=actx, timeout=60, limits=httpx.Limits(max_connections=2)
                )
                agents.append((body["server_id"], client))
                await admin.post(
                    f"/api/v1/servers/{body['server_id']}/backup-sets",
                    json={"name": "files", "include": ["/srv"]},
                )

        await asyncio.gather(*(enroll(i) for i in range(args.agents)))
        print(f"enrolled {len(agents)} agents with backup sets in {time.perf_counter() - t0:.1f} s")

        queued_at: dict[int, float] = {}
        received_at: dict[int, float] = {}
        poll_errors = 0
        stop = asyncio.Event()
        hb = {"version": "sim", "os": "Linux sim", "hostname": "sim"}

        async def run_agent(client: httpx.AsyncClient) -> None:
            nonlocal poll_errors
            await asyncio.sleep(random.uniform(0, 20))  # real agents do not start in step
            while not stop.is_set():
                try:
                    r = await client.post("/agent/v1/poll", params={"wait": 20}, json=hb)
                    job = r.json().get("job")
                except (httpx.HTTPError, ValueError):
                    poll_errors += 1
                    await asyncio.sleep(1)
                    continue
                if job:
                    received_at[job["job_id"]] = time.perf_counter()
                    await client.post(
                        f"/agent/v1/jobs/{job['job_id']}/result", json={"state": "succeeded"}
                    )

        tasks = [asyncio.create_task(run_agent(c)) for _, c in agents]
        await asyncio.sleep(45)  # every agent has started and renewed its long-poll once

        poll_ms: list[float] = []
        for _ in range(args.probes):
            _, client = random.choice(agents)
            t = time.perf_counter()
            r = await client.post("/agent/v1/poll", params={"wait": 0}, json=hb)
            r.raise_for_status()
            poll_ms.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.02)

        for _ in range(args.jobs):
            sid, _ = random.choice(agents)
            sent = time.perf_counter()  # from before the admin's request: the API call counts
            r = await admin.post(f"/api/v1/servers/{sid}/backup-now", json={})
            r.raise_for_status()
            queued_at[r.json()["id"]] = sent
            await asyncio.sleep(0.05)
        deadline = time.perf_counter() + 60
        while not set(queued_at) <= set(received_at) and time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
        dispatch_ms = [
            (received_at[j] - t) * 1000 for j, t in queued_at.items() if j in received_at
        ]
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        print(
            f"{args.agents} agents long-polling one cloud process (SQLite), "
            f"{os.cpu_count()} CPUs, client and cloud on the same machine"
        )
        result = {
            "agents": args.agents,
            "poll": summary("poll (wait=0)", poll_ms),
            "dispatch": summary("job dispatch", dispatch_ms),
            "jobs_queued": len(queued_at),
            "jobs_dispatched": len(dispatch_ms),
            "poll_errors": poll_errors,
        }
        print(f"jobs dispatched {len(dispatch_ms)}/{len(queued_at)}, poll errors {poll_errors}")
        verdict = (
            "PASS" if result["dispatch"]["p99"] < 250 and result["poll"]["p99"] < 250 else "FAIL"
        )
        print(f"target p99 < 250 ms: {verdict}")
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": time.time(), **result}) + "\n")
    finally:
        cloud.send_signal(signal.SIGTERM)
        try:
            cloud.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cloud.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
