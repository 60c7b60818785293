"""Where the real test stack is, and per-test isolation inside it."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import boto3
import pytest


@dataclass(frozen=True, slots=True)
class StackEnv:
    """Addresses of the components `./pm test` started."""

    pg_admin_dsn: str
    redis_url: str
    s3_endpoint: str
    vault_addr: str
    vault_token: str
    pg_bin: Path
    envoy_bin: Path
    stack_dir: Path

    def service_environ(self, *, database_url: str = "", bucket: str = "", registry_addr: str = "") -> dict[str, str]:
        """Environment for a service under test: the real stack, isolated stream namespace."""
        environ = {
            "REDIS_URL": self.redis_url,
            "STREAM_NAMESPACE": unique_name("t") + ":",
            "VAULT_ADDR": self.vault_addr,
            "VAULT_TOKEN": self.vault_token,
            "VAULT_PATH_PREFIX": unique_name("pm-test-"),
            "S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "LOG_LEVEL": "warning",
        }
        optional = {"DATABASE_URL": database_url, "S3_BUCKET": bucket, "REGISTRY_ADDR": registry_addr}
        environ.update({k: v for k, v in optional.items() if v})
        return environ

    def dsn_for(self, database: str) -> str:
        """The admin DSN pointed at another database."""
        base, _, _ = self.pg_admin_dsn.rpartition("/")
        return f"{base}/{database}"


_VARS = {
    "pg_admin_dsn": "PM_TEST_PG_ADMIN_DSN",
    "redis_url": "PM_TEST_REDIS_URL",
    "s3_endpoint": "PM_TEST_S3_ENDPOINT",
    "vault_addr": "PM_TEST_VAULT_ADDR",
    "vault_token": "PM_TEST_VAULT_TOKEN",
    "pg_bin": "PM_TEST_PG_BIN",
    "envoy_bin": "PM_TEST_ENVOY_BIN",
    "stack_dir": "PM_TEST_STACK_DIR",
}


def stack_env() -> StackEnv:
    """The test stack's addresses; fails the test when the suite was not started by ./pm test."""
    missing = [var for var in _VARS.values() if not os.environ.get(var)]
    if missing:
        pytest.fail(
            f"the real test stack is not running (missing {', '.join(missing)}); run the suite with ./pm test",
            pytrace=False,
        )
    values = {field: os.environ[var] for field, var in _VARS.items()}
    return StackEnv(
        pg_admin_dsn=values["pg_admin_dsn"],
        redis_url=values["redis_url"],
        s3_endpoint=values["s3_endpoint"],
        vault_addr=values["vault_addr"],
        vault_token=values["vault_token"],
        pg_bin=Path(values["pg_bin"]),
        envoy_bin=Path(values["envoy_bin"]),
        stack_dir=Path(values["stack_dir"]),
    )


def unique_name(prefix: str) -> str:
    """A short unique lower-case name for a database, bucket, stream namespace or Vault path."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def fresh_database(env: StackEnv) -> AsyncIterator[str]:
    """Create an empty database for one test and drop it afterwards; yields its DSN."""
    name = unique_name("pmtest_")
    admin = await asyncpg.connect(env.pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield env.dsn_for(name)
    finally:
        admin = await asyncpg.connect(env.pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextmanager
def fresh_bucket(env: StackEnv) -> Iterator[str]:
    """Create a versioned bucket for one test; yields its name."""
    name = unique_name("pm-test-")
    client = boto3.client(
        "s3",
        endpoint_url=env.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    yield name
