"""What an enrolled agent keeps on disk (mode 0700 directory, secrets 0600):

| file | content |
| --- | --- |
| ``agent.json`` | cloud URL, server id, organization id |
| ``ca.pem`` | the installation's CA, pinned at enrollment |
| ``client.pem``, ``client.key`` | the agent's certificate and private key |
| ``cache/`` | the repository index cache and the files cache |
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rekindle.core.errors import UsageError


@dataclass
class AgentIdentity:
    cloud_url: str
    server_id: int
    org_id: int


class AgentState:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.identity_file = directory / "agent.json"
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "client.pem"
        self.key_file = directory / "client.key"
        self.cache_dir = directory / "cache"

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    @property
    def enrolled(self) -> bool:
        return self.identity_file.exists() and self.cert_file.exists()

    def identity(self) -> AgentIdentity:
        if not self.enrolled:
            raise UsageError(
                f"this agent is not enrolled (no {self.identity_file}): run "
                "'rekindle agent enroll --cloud URL --token TOKEN' first"
            )
        raw = json.loads(self.identity_file.read_text())
        return AgentIdentity(str(raw["cloud_url"]), int(raw["server_id"]), int(raw["org_id"]))

    def save_identity(self, ident: AgentIdentity) -> None:
        from rekindle.net.pki import write_private

        write_private(self.identity_file, json.dumps(asdict(ident), indent=2).encode())
