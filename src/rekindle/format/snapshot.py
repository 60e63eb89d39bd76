"""Restore points (snapshots): what one backup produced (docs/FORMAT.md section 10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rekindle.core.errors import FormatError

SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class Snapshot:
    time: datetime
    host: str
    paths: list[str]
    tree: list[bytes]
    program: str
    parent: str | None = None
    tags: list[str] = field(default_factory=list)
    user: str = ""
    server: str | None = None
    excludes: list[str] = field(default_factory=list)
    stats: dict[str, int | float] = field(default_factory=dict)
    missed: list[tuple[str, str]] = field(default_factory=list)
    id: str = ""  # hex name in the backend; set when written or read, not serialized

    def to_doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "time": self.time.isoformat(),
            "host": self.host,
            "paths": self.paths,
            "tree": self.tree,
            "program": self.program,
            "tags": self.tags,
            "user": self.user,
            "excludes": self.excludes,
            "stats": self.stats,
            "missed": [list(m) for m in self.missed],
        }
        if self.parent:
            d["parent"] = self.parent
        if self.server:
            d["server"] = self.server
        return d

    @classmethod
    def from_doc(cls, d: Any, snapshot_id: str) -> Snapshot:
        try:
            if d["v"] != SNAPSHOT_VERSION:
                raise ValueError(f"unsupported restore point version {d['v']}")
            when = datetime.fromisoformat(d["time"])
            if when.tzinfo is None:
                raise ValueError("time has no timezone")
            tree = [bytes(x) for x in d["tree"]]
            if not tree or any(len(x) != 32 for x in tree):
                raise ValueError("tree must be a list of 32-byte ids")
            return cls(
                time=when,
                host=str(d["host"]),
                paths=[str(p) for p in d["paths"]],
                tree=tree,
                program=str(d.get("program", "")),
                parent=d.get("parent"),
                tags=[str(t) for t in d.get("tags", [])],
                user=str(d.get("user", "")),
                server=d.get("server"),
                excludes=[str(e) for e in d.get("excludes", [])],
                stats=dict(d.get("stats", {})),
                missed=[(str(a), str(b)) for a, b in d.get("missed", [])],
                id=snapshot_id,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"restore point {snapshot_id[:12]}: malformed: {e}") from None
