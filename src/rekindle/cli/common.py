"""What every command needs: the repository location, the secret, the cache, output helpers.

Secrets come from the environment or files, never from arguments (they would show in `ps`),
and are never printed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rekindle.core.errors import RekindleError, UsageError
from rekindle.repository.repo import Repository, Secret, default_cache_root
from rekindle.store.base import Backend


class Context:
    """Options shared by the `repo` commands (set by the group callback)."""

    repo: str | None = None
    password_file: Path | None = None
    key_file: Path | None = None
    limit_kib: int | None = None
    cache_dir: Path | None = None
    no_cache: bool = False


CTX = Context()


def open_location(location: str) -> Backend:
    from rekindle.store.location import open_backend

    return open_backend(location, bandwidth=CTX.limit_kib * 1024 if CTX.limit_kib else None)


def repo_location() -> str:
    loc = CTX.repo or os.environ.get("REKINDLE_REPO")
    if not loc:
        raise UsageError("no repository given: use --repo LOCATION or set REKINDLE_REPO")
    return loc


def _read_secret_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} file {path}: {e.strerror}") from None
    return data


def _key_from_file(path: Path) -> Secret:
    raw = _read_secret_file(path, "key")
    # 32 bytes exactly: a raw key (which may well end in a newline byte); else hex digits.
    return Secret(operator_key=raw if len(raw) == 32 else _hex_key(raw))


def _password_from_file(path: Path) -> Secret:
    return Secret(passphrase=_read_secret_file(path, "password").rstrip(b"\r\n"))


def read_secret(
    *,
    password_file: Path | None = None,
    key_file: Path | None = None,
    env: str = "REKINDLE_PASSWORD",
    flag: str = "--password-file",
    prompt: str = "Repository password: ",
    confirm: bool = False,
) -> Secret:
    """The secret, from (in this order) options, the environment, or a terminal prompt.

    For the repository's own secret (env REKINDLE_PASSWORD) the options are the group's
    --key-file and --password-file and the environment adds REKINDLE_KEY_FILE and
    REKINDLE_PASSWORD_FILE; other secrets (of a second repository, or a new password) use
    their own option and `env`, `env`_FILE.
    """
    main = env == "REKINDLE_PASSWORD"
    key_path = key_file or (CTX.key_file if main else None)
    if key_path is not None:
        return _key_from_file(key_path)
    pw_path = password_file or (CTX.password_file if main else None)
    if pw_path is not None:
        return _password_from_file(pw_path)
    if main and (env_key := _env_path("REKINDLE_KEY_FILE")) is not None:
        return _key_from_file(env_key)
    if (env_file := _env_path(f"{env}_FILE")) is not None:
        return _password_from_file(env_file)
    value = os.environ.get(env)
    if value is not None:
        return Secret(passphrase=value.encode())
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat it: ") != first:
            raise UsageError("the passwords do not match")
        return Secret(passphrase=first.encode())
    raise UsageError(f"no password: set {env} or {env}_FILE, or use {flag}")


def _env_path(name: str) -> Path | None:
    v = os.environ.get(name)
    return Path(v) if v else None


def _hex_key(raw: bytes) -> bytes:
    try:
        key = bytes.fromhex(raw.decode().strip())
    except ValueError:
        raise UsageError("key file must hold 32 raw bytes or 64 hex digits") from None
    if len(key) != 32:
        raise UsageError("key file must hold 32 raw bytes or 64 hex digits")
    return key


def cache_root() -> Path | None:
    if CTX.no_cache:
        return None
    return CTX.cache_dir or default_cache_root()


def open_repo(*, secret: Secret | None = None, read_only: bool = False) -> Repository:
    """Open the repository of --repo/REKINDLE_REPO. The config is read before the secret,
    so a location that is no repository (or a newer format) fails before any prompt."""
    backend = open_location(repo_location())
    if read_only:
        from rekindle.store.readonly import ReadOnlyBackend

        backend = ReadOnlyBackend(backend)
    return Repository.open(backend, secret or read_secret, cache_root=cache_root())


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["CTX", "RekindleError", "human_bytes", "open_repo", "print_json"]
