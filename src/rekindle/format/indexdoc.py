"""Index files: which blobs live in which pack (docs/FORMAT.md section 8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rekindle.core.errors import FormatError
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind

INDEX_VERSION = 1


@dataclass(slots=True)
class PackEntries:
    pack_id: bytes
    kind: BlobKind
    blobs: list[BlobEntry]


@dataclass(slots=True)
class IndexDoc:
    packs: list[PackEntries] = field(default_factory=list)
    supersedes: list[bytes] = field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return {
            "v": INDEX_VERSION,
            "packs": [
                [
                    p.pack_id,
                    int(p.kind),
                    [[b.id, b.offset, b.length, b.raw_length] for b in p.blobs],
                ]
                for p in self.packs
            ],
            "supersedes": self.supersedes,
        }

    @classmethod
    def from_doc(cls, d: Any, what: str) -> IndexDoc:
        try:
            if d["v"] != INDEX_VERSION:
                raise ValueError(f"unsupported index version {d['v']}")
            packs = []
            for pack_id, kind, blobs in d["packs"]:
                k = BlobKind(kind)
                if not isinstance(pack_id, bytes) or len(pack_id) != 32:
                    raise ValueError("pack id must be 32 bytes")
                entries = []
                for cid, off, length, raw in blobs:
                    if not isinstance(cid, bytes) or len(cid) != 32:
                        raise ValueError("chunk id must be 32 bytes")
                    entries.append(BlobEntry(cid, k, int(off), int(length), int(raw)))
                packs.append(PackEntries(pack_id, k, entries))
            return cls(packs=packs, supersedes=[bytes(x) for x in d.get("supersedes", [])])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{what}: malformed index: {e}") from None
