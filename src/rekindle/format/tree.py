"""Tree nodes and their msgpack serialization (docs/FORMAT.md section 10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from rekindle.core.errors import FormatError
from rekindle.format.registry import NodeType

TREE_VERSION = 1

# A content item is a chunk id (32 bytes) or a hole of that many zero bytes.
ContentItem = bytes | int


@dataclass(slots=True)
class Node:
    name: bytes
    type: NodeType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    content: list[ContentItem] = field(default_factory=list)  # files
    subtree: list[bytes] = field(default_factory=list)  # directories
    link_target: bytes | None = None
    rdev: int | None = None
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    inode: int | None = None  # with device and nlink: only for files with several links
    device: int | None = None
    nlink: int | None = None
    changed_while_read: bool = False

    def to_doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "n": self.name,
            "t": int(self.type),
            "m": self.mode,
            "u": self.uid,
            "g": self.gid,
            "mt": self.mtime_ns,
            "ct": self.ctime_ns,
        }
        if self.user is not None:
            d["un"] = self.user
        if self.group is not None:
            d["gn"] = self.group
        if self.type is NodeType.FILE:
            d["s"] = self.size
            d["c"] = self.content
        elif self.type is NodeType.DIR:
            d["sub"] = self.subtree
        if self.link_target is not None:
            d["l"] = self.link_target
        if self.rdev is not None:
            d["rd"] = self.rdev
        if self.xattrs:
            d["x"] = [[k, v] for k, v in sorted(self.xattrs)]
        if self.nlink is not None:
            d["i"], d["d"], d["nl"] = self.inode, self.device, self.nlink
        if self.changed_while_read:
            d["chg"] = True
        return d

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Node:
        name = d["n"]
        if not isinstance(name, bytes):
            raise TypeError("node name must be bytes")
        content = d.get("c", [])
        for item in content:
            if not (isinstance(item, int) and item >= 0) and not (
                isinstance(item, bytes) and len(item) == 32
            ):
                raise TypeError("content item must be a 32-byte id or a hole length")
        return cls(
            name=name,
            type=NodeType(d["t"]),
            mode=int(d.get("m", 0)),
            uid=int(d.get("u", 0)),
            gid=int(d.get("g", 0)),
            user=d.get("un"),
            group=d.get("gn"),
            mtime_ns=int(d.get("mt", 0)),
            ctime_ns=int(d.get("ct", 0)),
            size=int(d.get("s", 0)),
            content=list(content),
            subtree=[bytes(x) for x in d.get("sub", [])],
            link_target=d.get("l"),
            rdev=d.get("rd"),
            xattrs=[(bytes(k), bytes(v)) for k, v in d.get("x", [])],
            inode=d.get("i"),
            device=d.get("d"),
            nlink=d.get("nl"),
            changed_while_read=bool(d.get("chg", False)),
        )


def encode_tree(nodes: list[Node]) -> bytes:
    """Serialize one directory; nodes are sorted by name so equal directories match."""
    ordered = sorted(nodes, key=lambda n: n.name)
    packed: bytes = msgpack.packb(
        {"v": TREE_VERSION, "nodes": [n.to_doc() for n in ordered]}, use_bin_type=True
    )
    return packed


def decode_tree(data: bytes, what: str = "tree") -> list[Node]:
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if doc.get("v") != TREE_VERSION:
            raise ValueError(f"unsupported tree version {doc.get('v')}")
        return [Node.from_doc(n) for n in doc["nodes"]]
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as e:
        raise FormatError(f"{what}: malformed tree: {e}") from None


def safe_name(name: bytes) -> bool:
    """A tree entry name we are willing to create on disk (FORMAT.md section 10)."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name
