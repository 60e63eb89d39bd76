"""The repository's byte layouts, as docs/FORMAT.md specifies them.

Pure functions and value types only: this layer does no I/O (no files, sockets or backends)
and must never import `rekindle.store` or `rekindle.repository`. Everything that turns bytes
into values here authenticates them first or raises IntegrityError/FormatError.
"""
