"""An open repository: config, keys, index, and typed access to its objects.

Owns the order of writes (FORMAT.md section 11) and the translation between backend objects
and format values. Every byte read from the backend goes through `rekindle.format`, which
authenticates it. Must never write outside the names FORMAT.md section 2 lists.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rekindle.core.clock import Clock, SystemClock
from rekindle.core.errors import (
    AccessDeniedError,
    ArchivedError,
    FormatError,
    IntegrityError,
    NotARepositoryError,
    ObjectExistsError,
    ObjectNotFoundError,
    RekindleError,
    SnapshotNotFoundError,
    UsageError,
    WrongPasswordError,
)
from rekindle.format import config as configfmt
from rekindle.format import keyfile, pack
from rekindle.format.crypto import RepoKeys, content_hash
from rekindle.format.envelope import open_document, seal_document
from rekindle.format.indexdoc import IndexDoc, PackEntries
from rekindle.format.pack import BlobEntry
from rekindle.format.registry import BlobKind, FileKind, KeyKind, prefix_for
from rekindle.format.snapshot import Snapshot
from rekindle.format.tree import Node, decode_tree
from rekindle.repository.index import LocalIndex, Location
from rekindle.store.base import Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Secret:
    """How to unlock a repository: a passphrase, or an operator key (32 bytes)."""

    passphrase: bytes | None = None
    operator_key: bytes | None = None

    def __repr__(self) -> str:
        return "Secret(<hidden>)"


def default_cache_root() -> Path:
    env = os.environ.get("REKINDLE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rekindle"


def pack_name(kind: BlobKind, pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"{prefix_for(kind)}/{h[:2]}/{h}"


def parse_pack_name(name: str) -> tuple[BlobKind, bytes] | None:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] not in ("data", "tree"):
        return None
    try:
        pid = bytes.fromhex(parts[2])
    except ValueError:
        return None
    if len(pid) != 32 or parts[1] != parts[2][:2]:
        return None
    return (BlobKind.DATA if parts[0] == "data" else BlobKind.TREE), pid


@dataclass(frozen=True, slots=True)
class TierRecord:
    """Data packs in the archive tier (`moved`) or bound for it (FORMAT.md section 12)."""

    name: str
    created: datetime
    moved: bool
    packs: tuple[str, ...]


class Repository:
    """Use `Repository.init` or `Repository.open`; close it (or use `with`)."""

    def __init__(
        self,
        backend: Backend,
        *,
        config: configfmt.RepoConfig,
        keys: RepoKeys,
        index: LocalIndex,
        cache_dir: Path | None,
        clock: Clock,
    ) -> None:
        self.backend = backend
        self.config = config
        self.keys = keys
        self.index = index
        self.cache_dir = cache_dir
        self.clock = clock
        self._pack_keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._pack_keys_lock = threading.Lock()
        #: Index files that failed authentication at the last sync (check names them,
        #: repair replaces them); their entries are missing from the local index.
        self.damaged_index_files: dict[str, str] = {}
        #: The tier records read at the last sync, by name (damaged ones are left out and
        #: named in `damaged_tier_records`, with the reason).
        self.tier_records: dict[str, TierRecord] = {}
        self.damaged_tier_records: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        backend: Backend,
        secret: Secret,
        *,
        cache_root: Path | None = None,
        clock: Clock | None = None,
        chunk_sizes: tuple[int, int, int] | None = None,
        pack_size: int | None = None,
        zstd_level: int | None = None,
        kdf: keyfile.KdfParams | None = None,
        master_from: Repository | None = None,
    ) -> Repository:
        """Create a repository. `master_from` shares keys and chunker with another repository
        so that `copy` between them moves blobs without re-chunking (CloudCache, tiers)."""
        clock = clock or SystemClock()
        if backend.exists("config"):
            raise UsageError(f"a repository already exists at {backend.location}")
        if any(True for _ in backend.list("keys/")):
            raise UsageError(f"{backend.location} is not empty: refusing to initialize")
        now = clock.now().isoformat()
        if master_from is not None:
            master = master_from.keys.master
            base = master_from.config
            cfg = configfmt.RepoConfig(
                id=os.urandom(32),
                created=now,
                chunk_min=base.chunk_min,
                chunk_avg=base.chunk_avg,
                chunk_max=base.chunk_max,
                pack_size=base.pack_size,
                zstd_level=base.zstd_level,
            )
        else:
            master = os.urandom(32)
            mn, avg, mx = chunk_sizes or (
                configfmt.DEFAULT_CHUNK_MIN,
                configfmt.DEFAULT_CHUNK_AVG,
                configfmt.DEFAULT_CHUNK_MAX,
            )
            cfg = configfmt.RepoConfig(
                id=os.urandom(32),
                created=now,
                chunk_min=mn,
                chunk_avg=avg,
                chunk_max=mx,
                pack_size=pack_size or configfmt.DEFAULT_PACK_SIZE,
                zstd_level=configfmt.DEFAULT_ZSTD_LEVEL if zstd_level is None else zstd_level,
            )
        keys = RepoKeys.from_master(master)
        kf = _wrap(master, secret, cfg.id, now=now, label=_label(), kdf=kdf)
        # Key first, config last: a directory with a config is a usable repository.
        data = kf.encode()
        backend.write(f"keys/{content_hash(data).hex()}", data)
        backend.write("config", cfg.encode(keys))
        return cls._finish_open(backend, cfg, keys, cache_root, clock)

    @classmethod
    def open(
        cls,
        backend: Backend,
        secret: Secret | Callable[[], Secret],
        *,
        cache_root: Path | None = None,
        clock: Clock | None = None,
    ) -> Repository:
        """Open a repository. `secret` may be a function, called only once the config has
        been read: a location that is no repository (or of a newer format) then fails
        before anyone is asked for a password."""
        clock = clock or SystemClock()
        cfg, mac = read_config(backend)
        master = _unlock(backend, secret if isinstance(secret, Secret) else secret(), cfg.id)
        keys = RepoKeys.from_master(master)
        cfg.verify(keys, mac)
        return cls._finish_open(backend, cfg, keys, cache_root, clock)

    @classmethod
    def _finish_open(
        cls,
        backend: Backend,
        cfg: configfmt.RepoConfig,
        keys: RepoKeys,
        cache_root: Path | None,
        clock: Clock,
    ) -> Repository:
        cache_dir = None
        if cache_root is not None:
            cache_dir = cache_root / cfg.id.hex()
        index = LocalIndex(cache_dir / "index.sqlite" if cache_dir else None)
        repo = cls(backend, config=cfg, keys=keys, index=index, cache_dir=cache_dir, clock=clock)
        repo.sync_index()
        return repo

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def id(self) -> str:
        return self.config.id.hex()

    # -- index --------------------------------------------------------------------------------
    def sync_index(self) -> tuple[int, int]:
        """Mirror the backend's index files into the local cache. Returns (added, dropped)."""
        present = {info.name for info in self.backend.list("index/")}
        known = self.index.known_files()
        gone = known - present
        if gone:
            self.index.drop_files(gone)
        added = 0
        for name in sorted(present - known):
            try:
                doc = self.read_index_file(name)
            except ObjectNotFoundError:
                continue  # deleted by a prune between list and read
            except IntegrityError as e:
                # One damaged index file must not make the repository unusable: its packs
                # are still readable once `repair` re-indexes them.
                self.damaged_index_files[name] = str(e)
                continue
            self.damaged_index_files.pop(name, None)
            self.index.add_file(name, ((p.pack_id, p.blobs) for p in doc.packs))
            added += 1
        self.sync_tier_records()
        return added, len(gone)

    def sync_tier_records(self) -> None:
        """Read the tier records that appeared, forget those deleted, and give the index the
        cold set they name."""
        present = {info.name for info in self.backend.list("tier/")}
        records = {n: r for n, r in self.tier_records.items() if n in present}
        damaged: dict[str, str] = {}
        for name in sorted(present - set(records)):
            try:
                records[name] = self._read_tier_record(name)
            except ObjectNotFoundError:
                continue  # replaced by a tiering run between list and read
            except (IntegrityError, KeyError, TypeError, ValueError) as e:
                # Its packs count as warm: a backup may then depend on one of them (its
                # restore needs a defreeze), which loses nothing. `check` names it, and the
                # next tiering run replaces it from the archive's own answers.
                log.warning("tier record %s is unreadable (%s); ignoring it", name, e)
                damaged[name] = str(e)
        self.tier_records = records
        self.damaged_tier_records = damaged
        self._apply_cold()

    def _apply_cold(self) -> None:
        self.index.set_cold(
            {pid for r in self.tier_records.values() for n in r.packs if (pid := _pack_id(n))}
        )

    def _read_tier_record(self, name: str) -> TierRecord:
        data = self.backend.read(name)
        _check_name_hash(name, data)
        doc = open_document(self.keys, FileKind.TIER, data, name)
        return TierRecord(
            name,
            datetime.fromisoformat(doc["created"]),
            bool(doc["moved"]),
            tuple(str(p) for p in doc["packs"]),
        )

    def write_tier_record(self, packs: list[str], *, moved: bool) -> TierRecord:
        created = self.clock.now()
        doc = {"v": 1, "created": created.isoformat(), "moved": moved, "packs": sorted(packs)}
        data = seal_document(self.keys, FileKind.TIER, doc)
        name = f"tier/{content_hash(data).hex()}"
        self.backend.write(name, data)
        record = TierRecord(name, created, moved, tuple(sorted(packs)))
        self.tier_records[name] = record
        self._apply_cold()
        return record

    def delete_tier_record(self, name: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self.backend.delete(name)
        self.tier_records.pop(name, None)
        self.damaged_tier_records.pop(name, None)
        self._apply_cold()

    def index_file_names(self) -> set[str]:
        return self.index.known_files()

    def read_index_file(self, name: str) -> IndexDoc:
        data = self.backend.read(name)
        _check_name_hash(name, data)
        return IndexDoc.from_doc(open_document(self.keys, FileKind.INDEX, data, name), name)

    def write_index(self, packs: list[PackEntries], supersedes: list[bytes] | None = None) -> str:
        doc = IndexDoc(packs=packs, supersedes=list(supersedes or []))
        data = seal_document(self.keys, FileKind.INDEX, doc.to_doc())
        name = f"index/{content_hash(data).hex()}"
        self.backend.write(name, data)
        self.index.add_file(name, ((p.pack_id, p.blobs) for p in packs))
        return name

    # -- blobs --------------------------------------------------------------------------------
    def pack_key(self, kind: BlobKind, pack_id: bytes) -> bytes:
        """The pack's key, from its header's salt (cached: reading a header is a request)."""
        with self._pack_keys_lock:
            k = self._pack_keys.get(pack_id)
            if k is not None:
                self._pack_keys.move_to_end(pack_id)
                return k
        name = pack_name(kind, pack_id)
        head = self.backend.read(name, 0, pack.HEADER_SIZE)
        k = self.keys.pack_key(pack.salt_of(head, name))
        with self._pack_keys_lock:
            self._pack_keys[pack_id] = k
            if len(self._pack_keys) > 4096:
                self._pack_keys.popitem(last=False)
        return k

    def read_blob(self, chunk_id: bytes, locations: list[Location] | None = None) -> bytes:
        """The verified plaintext of a chunk; tries every copy the index knows of (or the
        `locations` a caller looked up in advance)."""
        return bytes(self.read_blob_view(chunk_id, locations))

    def read_blob_view(
        self,
        chunk_id: bytes,
        locations: list[Location] | None = None,
        scratch: bytearray | None = None,
    ) -> bytes | memoryview:
        """`read_blob`, decrypting into `scratch` when given: the result may then be a view
        into it, valid until its next use (restore writes it out at once)."""
        if locations is None:
            locations = self.index.lookup_all(chunk_id)
        if not locations:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} is not in the index")
        # Copies are listed warm first; another copy may stand in for one that is damaged,
        # gone, in the archive tier, or outside what the storage lets this reader see.
        errors: list[RekindleError] = []
        for loc in locations:
            try:
                return self.read_blob_at(loc.pack, loc.entry, scratch)
            except (IntegrityError, ObjectNotFoundError, ArchivedError, AccessDeniedError) as e:
                errors.append(e)
        # "needs a defreeze" says more than the failure of another copy
        raise next((e for e in errors if isinstance(e, ArchivedError)), errors[-1])

    def read_blob_at(
        self, pack_id: bytes, entry: BlobEntry, scratch: bytearray | None = None
    ) -> bytes | memoryview:
        name = pack_name(entry.kind, pack_id)
        key = self.pack_key(entry.kind, pack_id)
        sealed = self.backend.read(name, entry.offset, entry.length)
        return pack.open_blob_with_key(self.keys, key, entry, sealed, name, scratch=scratch)

    def read_pack_table(self, kind: BlobKind, pack_id: bytes) -> list[BlobEntry]:
        """A pack's own blob table: the truth `repair` and `check` compare the index with."""
        name = pack_name(kind, pack_id)
        size = self.backend.stat(name).size
        if size < pack.HEADER_SIZE + pack.TRAILER_SIZE:
            raise FormatError(f"{name}: truncated pack ({size} bytes)")
        head = self.backend.read(name, 0, pack.HEADER_SIZE)
        tlen = pack.table_length(
            self.backend.read(name, size - pack.TRAILER_SIZE, pack.TRAILER_SIZE), size, name
        )
        sealed = self.backend.read(name, size - pack.TRAILER_SIZE - tlen, tlen)
        return pack.read_table(self.keys, head, sealed, size, name)

    def load_tree(self, ids: list[bytes]) -> list[Node]:
        data = b"".join(self.read_blob(i) for i in ids)
        return decode_tree(data, f"tree {ids[0].hex()[:12]}" if ids else "tree")

    # -- restore points ---------------------------------------------------------------------
    def write_snapshot(self, snap: Snapshot) -> str:
        data = seal_document(self.keys, FileKind.SNAPSHOT, snap.to_doc())
        sid = content_hash(data).hex()
        # ObjectExistsError: the same bytes are already there (a retried write).
        with contextlib.suppress(ObjectExistsError):
            self.backend.write(f"snapshots/{sid}", data)
        snap.id = sid
        return sid

    def read_snapshot(self, sid: str) -> Snapshot:
        name = f"snapshots/{sid}"
        data = self.backend.read(name)
        _check_name_hash(name, data)
        return Snapshot.from_doc(open_document(self.keys, FileKind.SNAPSHOT, data, name), sid)

    def snapshot_ids(self) -> list[str]:
        return [info.name.split("/", 1)[1] for info in self.backend.list("snapshots/")]

    def snapshots(self) -> list[Snapshot]:
        """Every restore point, oldest first. Damaged ones raise: callers decide."""
        snaps = [self.read_snapshot(s) for s in self.snapshot_ids()]
        snaps.sort(key=lambda s: (s.time, s.id))
        return snaps

    def find_snapshot(self, ref: str, *, host: str | None = None) -> Snapshot:
        """By full id, unique prefix (>= 4 hex digits), or `latest` (optionally of a host)."""
        if ref == "latest":
            snaps = [s for s in self.snapshots() if host is None or s.host == host]
            if not snaps:
                raise SnapshotNotFoundError("the repository has no restore points yet")
            return snaps[-1]
        ref = ref.lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise UsageError(f"{ref!r} is not a restore point id (4 or more hex digits)")
        matches = [s for s in self.snapshot_ids() if s.startswith(ref)]
        if not matches:
            raise SnapshotNotFoundError(f"no restore point with id {ref}")
        if len(matches) > 1:
            raise UsageError(f"restore point id {ref} is ambiguous; give more digits")
        return self.read_snapshot(matches[0])

    def delete_snapshot(self, sid: str) -> None:
        self.backend.delete(f"snapshots/{sid}")

    # -- generic documents (locks, garbage records) ----------------------------------------------
    def seal(self, kind: FileKind, document: Any) -> bytes:
        return seal_document(self.keys, kind, document)

    def unseal(self, kind: FileKind, data: bytes, what: str) -> Any:
        return open_document(self.keys, kind, data, what)

    # -- keys ---------------------------------------------------------------------------------
    def key_files(self) -> Iterator[tuple[str, keyfile.KeyFile]]:
        for info in self.backend.list("keys/"):
            yield info.name, keyfile.decode(self.backend.read(info.name), info.name)

    def add_key(self, secret: Secret, label: str | None = None) -> str:
        kf = _wrap(
            self.keys.master,
            secret,
            self.config.id,
            now=self.clock.now().isoformat(),
            label=label or _label(),
            kdf=None,
        )
        data = kf.encode()
        name = f"keys/{content_hash(data).hex()}"
        self.backend.write(name, data)
        return name

    def remove_key(self, name_or_prefix: str, *, current: Secret) -> str:
        names = [n for n, _ in self.key_files()]
        matches = [n for n in names if n.split("/", 1)[1].startswith(name_or_prefix)]
        if len(matches) != 1:
            raise UsageError(f"key {name_or_prefix!r} matches {len(matches)} key files")
        if len(names) == 1:
            raise UsageError("refusing to remove the last key: the repository would be lost")
        target = matches[0]
        # Refuse to remove the key the caller used unless another one also opens it.
        remaining = [n for n in names if n != target]
        if not any(_opens(self.backend, n, current, self.config.id) for n in remaining):
            raise UsageError("refusing to remove the only key your password opens")
        self.backend.delete(target)
        return target


def _pack_id(name: str) -> bytes | None:
    parsed = parse_pack_name(name)
    return parsed[1] if parsed else None


def read_config(backend: Backend) -> tuple[configfmt.RepoConfig, str]:
    try:
        data = backend.read("config")
    except ObjectNotFoundError:
        raise NotARepositoryError(
            f"no repository at {backend.location} (no config); create one with 'rekindle repo init'"
        ) from None
    return configfmt.decode(data)


def _unlock(backend: Backend, secret: Secret, repo_id: bytes) -> bytes:
    found = False
    for info in backend.list("keys/"):
        found = True
        try:
            kf = keyfile.decode(backend.read(info.name), info.name)
        except FormatError:
            continue
        try:
            if kf.kind is KeyKind.PASSPHRASE and secret.passphrase is not None:
                return kf.unwrap(secret.passphrase, repo_id)
            if kf.kind is KeyKind.OPERATOR and secret.operator_key is not None:
                return kf.unwrap(secret.operator_key, repo_id)
        except WrongPasswordError:
            continue
    if not found:
        raise NotARepositoryError(f"{backend.location} has no key files")
    raise WrongPasswordError("wrong password (no key file of this repository opens with it)")


def _opens(backend: Backend, name: str, secret: Secret, repo_id: bytes) -> bool:
    kf = keyfile.decode(backend.read(name), name)
    try:
        if kf.kind is KeyKind.PASSPHRASE and secret.passphrase is not None:
            kf.unwrap(secret.passphrase, repo_id)
            return True
        if kf.kind is KeyKind.OPERATOR and secret.operator_key is not None:
            kf.unwrap(secret.operator_key, repo_id)
            return True
    except WrongPasswordError:
        return False
    return False


def _wrap(
    master: bytes,
    secret: Secret,
    repo_id: bytes,
    *,
    now: str,
    label: str,
    kdf: keyfile.KdfParams | None,
) -> keyfile.KeyFile:
    if secret.operator_key is not None:
        return keyfile.wrap_with_operator_key(master, secret.operator_key, repo_id, now, label)
    if secret.passphrase is None or secret.passphrase == b"":
        raise UsageError("an empty password is not allowed")
    return keyfile.wrap_with_passphrase(master, secret.passphrase, repo_id, now, label, kdf=kdf)


def _label() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _check_name_hash(name: str, data: bytes) -> None:
    if content_hash(data).hex() != name.rsplit("/", 1)[-1]:
        raise IntegrityError(f"{name}: content does not match its name (damaged)")
