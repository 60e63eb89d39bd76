"""What a storage token allows, per object name (FORMAT.md names the object kinds).

The agent encrypts everything before upload, so the node protects availability and
confidentiality of the structure, not of contents:

- a backup token can add objects and learn which chunks exist (by reading the index), but
  cannot read a pack, read or list restore points (the cloud tells the agent which restore
  point its backup continues), delete anything but the locks its own job took, or replace
  an object;
- a restore token reads the config, keys and index, the one restore point it was issued for,
  and only the packs of its grant: the list the cloud worked out from that restore point and
  the paths chosen (the tree packs of the restore point, the data packs of the chosen files);
- a catalog token, which only the cloud holds for itself, reads everything and writes nothing
  but grants;
- a maintenance token, which only the cloud holds for itself while it applies retention,
  prunes and moves cold data to the archive tier, reads everything, adds packs, index files,
  garbage and tier records and locks, and deletes restore points, packs, index files, garbage
  and tier records and its own locks; it never touches the config or the keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from rekindle.net.tokens import StorageClaims

Op = Literal["read", "list", "write", "replace", "delete"]

_METADATA = ("keys/", "index/", "tier/", "locks/")
_PRUNE_WRITES = ("data/", "tree/", "index/", "garbage/", "tier/", "locks/")
_PRUNE_DELETES = ("data/", "tree/", "index/", "garbage/", "tier/", "locks/", "snapshots/")
_PACK = re.compile(r"^(data|tree)/([0-9a-f]{2})/\2[0-9a-f]{62}$")


def is_pack(name: str) -> bool:
    return _PACK.match(name) is not None


def allowed(
    claims: StorageClaims, op: Op, name: str, granted: Callable[[str], bool] | None = None
) -> bool:
    """May a request with `claims` do `op` on object (or list prefix) `name`?

    `granted(name)` answers whether the restore token's grant holds a pack; it is asked
    only for pack reads by restore tokens (loading a grant costs a lookup)."""
    if claims.access == "catalog":
        return op in ("read", "list")
    if claims.access == "maintenance":
        if op in ("read", "list"):
            return True
        if name == "config" or name.startswith("keys/"):
            return False
        if op == "write":
            return name.startswith(_PRUNE_WRITES)
        if op == "delete":
            return name.startswith(_PRUNE_DELETES)
        return name.startswith("locks/")  # replace: refresh its own lock
    if claims.access == "backup":
        if name.startswith("snapshots/"):  # writes new ones; the cloud names its parent
            return op == "write"
        if op in ("read", "list"):
            return name == "config" or name.startswith(_METADATA)
        if op == "write":
            return name == "config" or name.startswith(
                ("keys/", "data/", "tree/", "index/", "snapshots/", "locks/")
            )
        return name.startswith("locks/")  # replace (refresh) and delete: own locks only
    # restore
    if op in ("read", "list"):
        if name.startswith("snapshots/"):
            return op == "list" or name == f"snapshots/{claims.snapshot}"
        if name.startswith(("data/", "tree/")):
            return op == "read" and granted is not None and is_pack(name) and granted(name)
        return name == "config" or name.startswith(_METADATA)
    if op in ("write", "replace", "delete"):
        return name.startswith("locks/")
    return False
