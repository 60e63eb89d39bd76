"""What a storage token allows, per object name (FORMAT.md names the object kinds).

The agent encrypts everything before upload, so the node protects availability and
confidentiality of the structure, not of contents: a backup token can add objects and learn
which chunks exist (by reading the index), but cannot read a pack, delete anything but the
locks its own job took, or replace an object. A restore token reads only: the config, keys,
index, and packs, plus the one restore point it was issued for.
"""

from __future__ import annotations

from typing import Literal

from rekindle.net.tokens import StorageClaims

Op = Literal["read", "list", "write", "replace", "delete"]

_METADATA = ("keys/", "index/", "locks/")


def allowed(claims: StorageClaims, op: Op, name: str) -> bool:
    """May a request with `claims` do `op` on object (or list prefix) `name`?"""
    if claims.access == "backup":
        if op in ("read", "list"):
            return name == "config" or name.startswith((*_METADATA, "snapshots/"))
        if op == "write":
            return name == "config" or name.startswith(
                ("keys/", "data/", "tree/", "index/", "snapshots/", "locks/")
            )
        return name.startswith("locks/")  # replace (refresh) and delete: own locks only
    # restore
    if op in ("read", "list"):
        if name.startswith("snapshots/"):
            return op == "list" or name == f"snapshots/{claims.snapshot}"
        return name == "config" or name.startswith((*_METADATA, "data/", "tree/"))
    if op in ("write", "replace", "delete"):
        return name.startswith("locks/")
    return False
