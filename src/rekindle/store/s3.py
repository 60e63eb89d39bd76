"""S3-compatible backend (AWS S3, MinIO, Ceph RGW, ...) through boto3.

Endpoint, region and credentials come from the usual AWS variables (AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...). Exclusive
writes use a conditional PUT (``If-None-Match: *``), so two writers can never both create the
same immutable object. Throttling, 5xx answers and dropped connections are transient errors,
which `RetryingBackend` retries; everything else is permanent.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from rekindle.core.errors import (
    ArchivedError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
    UsageError,
)
from rekindle.store.base import Backend, Buffer, ObjectInfo, check_name
from rekindle.store.spool import Spool
from rekindle.store.tier import TierState

#: Storage classes whose objects must be restored (thawed) before they can be read.
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_EXISTS = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_TRANSIENT = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
}


def _translate(e: Exception, what: str) -> StorageError:
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or status == "404":
            return ObjectNotFoundError(f"{what}: not found")
        if code == "InvalidObjectState":  # an object in an archive class, not restored
            return ArchivedError(f"{what}: in archive storage; it needs a defreeze first")
        if code in _EXISTS or status == "412":
            return ObjectExistsError(f"{what}: already exists")
        if code in _TRANSIENT or status.startswith("5"):
            return TransientStorageError(f"{what}: S3 answered {code or status}")
        return StorageError(f"{what}: S3 answered {code or status}: {err.get('Message', '')}")
    if isinstance(e, botocore.exceptions.BotoCoreError):
        # Connection resets, timeouts, DNS failures: the request may be worth repeating.
        return TransientStorageError(f"{what}: {type(e).__name__}")
    return StorageError(f"{what}: {e}")


class S3Backend(Backend):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        storage_class: str | None = None,
        archive_class: str = "GLACIER",
        thaw_tier: str = "Standard",
    ) -> None:
        if archive_class not in ARCHIVE_CLASSES:
            raise UsageError(f"archive class must be one of {', '.join(ARCHIVE_CLASSES)}")
        self.archive_class = archive_class
        self.thaw_tier = thaw_tier
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._storage_class = storage_class
        if client is None:
            cfg = botocore.config.Config(
                retries={"max_attempts": 1, "mode": "standard"},  # RetryingBackend retries
                max_pool_connections=32,
                connect_timeout=10,
                read_timeout=60,
            )
            client = boto3.session.Session().client("s3", config=cfg)
        self._s3 = client

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        self._put(name, data if isinstance(data, bytes) else bytes(data), exclusive=exclusive)

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        # boto3 streams a seekable file from its position (and seeks back to retry). The
        # duplicate shares the spool's file offset, which the spool itself never uses to read.
        with io.FileIO(os.dup(spool.fd), "rb") as body:
            body.seek(0)
            self._put(name, body, exclusive=exclusive)

    def _put(self, name: str, body: bytes | io.FileIO, *, exclusive: bool) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name), "Body": body}
        if exclusive:
            args["IfNoneMatch"] = "*"
        if self._storage_class and name.startswith("data/"):
            args["StorageClass"] = self._storage_class
        try:
            self._s3.put_object(**args)
        except Exception as e:  # noqa: BLE001 - every failure becomes a StorageError
            raise _translate(e, f"writing {name}") from None

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            self.stat(name)
            return b""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        try:
            data: bytes = self._s3.get_object(**args)["Body"].read()
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"reading {name}") from None
        if length is not None and len(data) != length:
            raise StorageError(f"{name}: short read ({len(data)} of {length} bytes at {offset})")
        return data

    def stat(self, name: str) -> ObjectInfo:
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"stat {name}") from None
        return ObjectInfo(name, int(head["ContentLength"]), head["LastModified"])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(root) :], int(obj["Size"]), obj["LastModified"])
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"listing {prefix or '/'}") from None

    def delete(self, name: str) -> None:
        # S3's DeleteObject succeeds for missing keys; the contract wants ObjectNotFoundError.
        self.stat(name)
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"deleting {name}") from None

    # -- the archive tier (see store/tier.py) -------------------------------------------------
    def archive(self, name: str) -> None:
        """Copy the object onto itself with the archive storage class (same key, same
        bytes: an index naming it stays right)."""
        head = self._head(name)
        if head.get("StorageClass") in ARCHIVE_CLASSES:
            return
        key = self._key(name)
        try:
            self._s3.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                StorageClass=self.archive_class,
                MetadataDirective="COPY",
            )
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"archiving {name}") from None

    def thaw(self, name: str, days: int) -> None:
        if self.tier_state(name) in (TierState.WARM, TierState.THAWING):
            return
        try:
            self._s3.restore_object(
                Bucket=self.bucket,
                Key=self._key(name),
                RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": self.thaw_tier}},
            )
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "RestoreAlreadyInProgress":
                return
            raise _translate(e, f"thawing {name}") from None
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"thawing {name}") from None

    def tier_state(self, name: str) -> TierState:
        head = self._head(name)
        if head.get("StorageClass") not in ARCHIVE_CLASSES:
            return TierState.WARM
        restore = str(head.get("Restore") or "")
        if 'ongoing-request="true"' in restore:
            return TierState.THAWING
        if 'ongoing-request="false"' in restore:
            return TierState.THAWED
        return TierState.ARCHIVED

    def _head(self, name: str) -> dict[str, Any]:
        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, f"stat {name}") from None
        return head

    def close(self) -> None:
        self._s3.close()
