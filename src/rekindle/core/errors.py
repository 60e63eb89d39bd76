"""One root exception for everything Rekindle raises on purpose.

Every error carries an exit code (stable, documented in docs/CLI.md) and a message meant for
a person: what went wrong and, where we know it, what to do. Storage errors also say whether
they are transient (worth a retry) or permanent. The command line maps these to one line on
stderr; nothing here knows about HTTP or terminals.
"""

from __future__ import annotations


class ExitCode:
    """Process exit codes. Frozen: scripts depend on them."""

    OK = 0
    ERROR = 1  # any error not listed below
    USAGE = 2  # bad command line (typer/click also use 2)
    MISSED_FILES = 3  # backup completed, but some files could not be read
    DAMAGE = 4  # check or restore found damaged data
    WRONG_PASSWORD = 5
    NOT_A_REPOSITORY = 6
    UNSUPPORTED_VERSION = 7
    LOCKED = 8  # an exclusive operation is running
    NO_SPACE = 9  # a destination ran out of space


class RekindleError(Exception):
    """Root of every error Rekindle raises deliberately."""

    exit_code = ExitCode.ERROR


class UsageError(RekindleError):
    exit_code = ExitCode.USAGE


class StorageError(RekindleError):
    """A backend operation failed. `transient` tells the retry layer whether to try again."""

    transient = False


class TransientStorageError(StorageError):
    transient = True


class ObjectNotFoundError(StorageError):
    """The named object does not exist in the backend."""


class ObjectExistsError(StorageError):
    """An object that must be written once already exists (packs, snapshots are immutable)."""


class NoSpaceError(StorageError):
    exit_code = ExitCode.NO_SPACE


class ReadOnlyError(StorageError):
    """A write was attempted through a read-only view of a backend."""


class AccessDeniedError(StorageError):
    """The storage refused the request: the credentials do not cover this object."""


class ArchivedError(StorageError):
    """The object is in the archive tier: it cannot be read until a thaw (defreeze) has
    brought it back to warm storage."""


class IntegrityError(RekindleError):
    """Data failed authentication or its hash: it is damaged or was tampered with."""

    exit_code = ExitCode.DAMAGE


class FormatError(IntegrityError):
    """Bytes do not have the layout docs/FORMAT.md gives (bad magic, short, bad lengths)."""


class WrongPasswordError(RekindleError):
    exit_code = ExitCode.WRONG_PASSWORD


class NotARepositoryError(RekindleError):
    exit_code = ExitCode.NOT_A_REPOSITORY


class UnsupportedVersionError(RekindleError):
    exit_code = ExitCode.UNSUPPORTED_VERSION


class RepositoryLockedError(RekindleError):
    exit_code = ExitCode.LOCKED


class SnapshotNotFoundError(RekindleError):
    pass


class DamageFoundError(RekindleError):
    """An operation finished but found damage (check, restore of a damaged restore point)."""

    exit_code = ExitCode.DAMAGE
