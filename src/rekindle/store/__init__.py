"""Blob backends: where repository files live (memory, local disk, S3), plus wrappers.

A backend stores opaque, named byte strings. It knows nothing about packs, keys or
encryption; it must never import `rekindle.format` or `rekindle.repository`.
"""

from rekindle.store.base import Backend, ObjectInfo

__all__ = ["Backend", "ObjectInfo"]
