"""The object-store port and its S3 and in-memory implementations."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pm_errors import NotFound, Unavailable
from pm_settings import ObjectStoreSettings


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Where a stored object version lives."""

    key: str
    version_id: str
    etag: str
    size: int

    def uri(self, bucket: str) -> str:
        """s3://bucket/key?versionId=..."""
        return f"s3://{bucket}/{self.key}?versionId={self.version_id}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes with its metadata."""

    ref: ObjectRef
    data: bytes
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    """Versioned object storage."""

    bucket: str

    async def put(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectRef: ...

    async def get(self, key: str, *, version_id: str | None = None) -> StoredObject: ...

    async def exists(self, key: str) -> bool: ...

    async def ping(self) -> None: ...


class S3ObjectStore:
    """boto3 against AWS S3 or an S3-compatible endpoint; blocking calls run in a thread."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                connect_timeout=timeout_seconds,
                read_timeout=timeout_seconds,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing and turn versioning on (local stacks and tests)."""

        def create() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError:
                self._client.create_bucket(Bucket=self.bucket)
            self._client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})

        await self._call(create)

    async def put(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectRef:
        reply = await self._call(
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=dict(metadata or {}),
                ChecksumAlgorithm="SHA256",
            )
        )
        return ObjectRef(key, reply.get("VersionId") or "null", reply["ETag"].strip('"'), len(data))

    async def get(self, key: str, *, version_id: str | None = None) -> StoredObject:
        extra = {"VersionId": version_id} if version_id else {}
        try:
            reply = await self._call(lambda: self._client.get_object(Bucket=self.bucket, Key=key, **extra))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchVersion", "404"):
                raise NotFound(f"object {key} not found") from exc
            raise
        data = await asyncio.to_thread(reply["Body"].read)
        ref = ObjectRef(key, reply.get("VersionId") or "null", reply["ETag"].strip('"'), len(data))
        return StoredObject(ref, data, reply.get("ContentType", "application/octet-stream"), reply.get("Metadata", {}))

    async def exists(self, key: str) -> bool:
        try:
            await self._call(lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def ping(self) -> None:
        """Raise Unavailable unless the bucket answers."""
        try:
            await self._call(lambda: self._client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            raise Unavailable(f"object store bucket {self.bucket} unavailable: {exc}") from exc

    async def _call(self, fn: Any) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except BotoCoreError as exc:
            raise Unavailable(f"object store unreachable: {type(exc).__name__}: {exc}") from exc


class InMemoryObjectStore:
    """Keeps versions in a dict; same semantics as a versioned bucket."""

    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self._versions: dict[str, list[StoredObject]] = {}
        self._ids = itertools.count(1)

    async def put(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectRef:
        ref = ObjectRef(key, f"v{next(self._ids)}", hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data))
        self._versions.setdefault(key, []).append(StoredObject(ref, data, content_type, dict(metadata or {})))
        return ref

    async def get(self, key: str, *, version_id: str | None = None) -> StoredObject:
        for stored in reversed(self._versions.get(key, [])):
            if version_id is None or stored.ref.version_id == version_id:
                return stored
        raise NotFound(f"object {key} not found")

    async def exists(self, key: str) -> bool:
        return key in self._versions

    async def ping(self) -> None:
        return None


def s3_store_from_settings(settings: ObjectStoreSettings) -> S3ObjectStore:
    """The S3 store a service's S3_* / AWS_* settings describe."""
    secret = settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
    return S3ObjectStore(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.aws_region,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=secret,
    )
