"""The agent's main loop: poll the cloud (each poll is a heartbeat), run the job it hands
out, report the result; on any network trouble, back off and try again, forever."""

from __future__ import annotations

import logging
import random
import threading
import time

from rekindle import __version__
from rekindle.agent.client import CloudClient, CloudError, platform_name
from rekindle.agent.jobs import JobContext, disk_free, run_job
from rekindle.agent.state import AgentState
from rekindle.net import protocol as p

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


class Agent:
    def __init__(self, state: AgentState, *, hostname: str, poll_wait: float = p.POLL_WAIT_S):
        self.state = state
        self.hostname = hostname
        self.poll_wait = poll_wait
        self.stop = threading.Event()
        self.running_job: int | None = None

    def heartbeat(self) -> p.Heartbeat:
        return p.Heartbeat(
            version=__version__,
            os=platform_name(),
            hostname=self.hostname,
            free_bytes=disk_free(self.state.dir),
            running_job=self.running_job,
        )

    def run(self) -> None:
        client = CloudClient(self.state)
        backoff = 1.0
        log.info("agent for server %d polling %s", client.ident.server_id, client.ident.cloud_url)
        try:
            while not self.stop.is_set():
                try:
                    job = client.poll(self.heartbeat(), wait=self.poll_wait)
                    backoff = 1.0
                except CloudError as e:
                    if not e.transient:
                        # 401/403: disabled or revoked. Keep asking slowly: an admin may
                        # enable the server again; a revoked agent gets nothing meanwhile.
                        log.error("%s", e)  # noqa: TRY400 - no traceback for a refusal
                        backoff = MAX_BACKOFF_S
                    else:
                        log.warning("%s; retrying in %.0f s", e, backoff)
                    self.stop.wait(backoff * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                if job is not None:
                    self.execute(client, job)
        finally:
            client.close()

    def execute(self, client: CloudClient, job: p.JobAssignment) -> None:
        log.info("job %d: %s", job.job_id, job.kind)
        self.running_job = job.job_id

        def sink(prog: p.Progress) -> bool:
            return client.progress(job.job_id, prog).cancel

        result = run_job(job, JobContext(self.state, self.hostname), sink)
        log.info(
            "job %d: %s%s", job.job_id, result.state, f" ({result.error})" if result.error else ""
        )
        # The result must reach the cloud: keep trying through outages (the job stays
        # "running" there meanwhile, and a restarted agent would mark it aborted).
        delay = 1.0
        while not self.stop.is_set():
            try:
                client.result(job.job_id, result)
                break
            except CloudError as e:
                if not e.transient:
                    log.error("cloud refused the result of job %d: %s", job.job_id, e)  # noqa: TRY400
                    break
                log.warning("%s; sending the result again in %.0f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        self.running_job = None
