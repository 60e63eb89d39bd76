"""Messages between the agent and the cloud (JSON over mutual TLS).

The agent speaks only when it wants something: it enrolls once, then long-polls for work
(each poll is also its heartbeat), reports progress while a job runs and the result at the
end. The cloud never connects to an agent, so agents behind NAT or firewalls work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

JobKind = Literal["backup", "restore"]
Existing = Literal["skip", "overwrite", "rename"]
FinalState = Literal["succeeded", "partial", "failed", "stopped"]

#: How long one long-poll waits for a job before returning empty (seconds).
POLL_WAIT_S = 20.0


#: Names an agent reports are shown in pages and mail subjects: no control characters.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class EnrollRequest(BaseModel):
    token: str = Field(min_length=8, max_length=200)
    hostname: str = Field(min_length=1, max_length=255, pattern=PRINTABLE)
    os: str = Field(min_length=1, max_length=100, pattern=PRINTABLE)
    csr_pem: str = Field(min_length=1, max_length=20000)


class EnrollResponse(BaseModel):
    server_id: int
    org_id: int
    certificate_pem: str
    ca_pem: str


class Heartbeat(BaseModel):
    version: str = Field(max_length=50, pattern=PRINTABLE)
    os: str = Field(max_length=100, pattern=PRINTABLE)
    hostname: str = Field(max_length=255, pattern=PRINTABLE)
    free_bytes: int | None = Field(default=None, ge=0)
    #: The job this agent is working on, if any: any other job the cloud thinks is running
    #: on this server was cut short (reboot, kill) and is marked aborted.
    running_job: int | None = Field(default=None, ge=1, le=2**63 - 1)


class BackupSpec(BaseModel):
    backup_set_id: int
    backup_set_name: str
    include: list[str]
    exclude: list[str]
    #: When the policy's window closes; None when the policy has no window.
    window_end: datetime | None = None
    #: The restore point this backup continues (the newest of this backup set); None for the
    #: first. The agent records it without reading it: backup tokens read no restore point.
    parent: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class RestoreSpec(BaseModel):
    snapshot: str
    include: list[str] = []
    target: str
    existing: Existing = "skip"
    #: Where the files were backed up from, to restore "to the original location".
    original_paths: list[str] = []
    #: Bytes the restore writes, as the cloud counted them when it planned the restore.
    size: int = Field(default=0, ge=0)


class JobAssignment(BaseModel):
    job_id: int
    kind: JobKind
    org_id: int
    storage_url: str
    storage_token: str
    #: The organization's repository operator key (base64). Sent per job over mutual TLS and
    #: kept in memory only: a revoked agent gets no further keys.
    repo_key: str
    bandwidth_kib: int = 0
    backup: BackupSpec | None = None
    restore: RestoreSpec | None = None


class PollResponse(BaseModel):
    job: JobAssignment | None = None


class Progress(BaseModel):
    phase: str = Field(default="", max_length=50)
    files_done: int = Field(default=0, ge=0)
    bytes_done: int = Field(default=0, ge=0)
    files_total: int | None = Field(default=None, ge=0)
    bytes_total: int | None = Field(default=None, ge=0)
    rate_bps: float = Field(default=0.0, ge=0)
    eta_s: float | None = Field(default=None, ge=0)
    log: list[str] = Field(default=[], max_length=200)


class ProgressAck(BaseModel):
    #: The admin cancelled the job: the agent stops it cleanly.
    cancel: bool = False


class MissedFile(BaseModel):
    path: str = Field(max_length=8192)
    reason: str = Field(max_length=1000)


class JobResult(BaseModel):
    state: FinalState
    error: str | None = Field(default=None, max_length=4000)
    snapshot_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    snapshot_time: datetime | None = None
    files: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
    bytes_added: int = Field(default=0, ge=0)
    missed: list[MissedFile] = Field(default=[], max_length=100000)
    log: list[str] = Field(default=[], max_length=1000)
