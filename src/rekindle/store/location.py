"""Turn a repository LOCATION (a directory or ``s3://bucket/prefix``) into a backend."""

from __future__ import annotations

import os

from rekindle.core.errors import UsageError
from rekindle.store.base import Backend
from rekindle.store.retry import RetryingBackend


def open_backend(location: str, *, bandwidth: int | None = None) -> Backend:
    """Open the backend LOCATION names, wrapped for retries (and a bandwidth cap if given)."""
    backend: Backend
    if location.startswith("s3://"):
        from rekindle.store.s3 import S3Backend

        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"no bucket in {location!r}: use s3://BUCKET[/PREFIX]")
        backend = RetryingBackend(S3Backend(bucket, prefix))
    elif "://" in location:
        scheme = location.split("://", 1)[0]
        raise UsageError(f"unsupported location scheme {scheme!r}: use a directory or s3://")
    else:
        from rekindle.store.local import LocalBackend

        backend = LocalBackend(os.path.expanduser(location))
    if bandwidth:
        from rekindle.store.ratelimit import RateLimitedBackend

        backend = RateLimitedBackend(backend, bandwidth)
    return backend
