"""Rekindle: self-hosted server backup and disaster recovery."""

__version__ = "0.1.0"
