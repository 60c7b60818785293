"""Applies the ordered plain-SQL migrations, once each, under an advisory lock.

Each file runs in its own transaction together with the row that records it, so a failed file
leaves nothing behind and a rerun picks up where the last one stopped. Several runners started
at once (a rollout with many replicas) queue on the advisory lock; the later ones find nothing
to do. A file changed after it was applied is an error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources

import asyncpg

from pm_errors import ConfigurationError

# Arbitrary but fixed: the key of the session-level advisory lock that serializes runners.
MIGRATION_LOCK_KEY = 7_402_938_112

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL
)
"""


class MigrationError(ConfigurationError):
    """The migrations cannot be applied (a changed file, a bad name, a failing statement)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file."""

    version: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What a run did."""

    applied: tuple[str, ...]
    already_applied: tuple[str, ...]


def load_migrations() -> tuple[Migration, ...]:
    """The migration files shipped with pm_db, in order."""
    folder = resources.files("pm_db").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        if not _NAME.match(entry.name):
            raise MigrationError(f"migration file name {entry.name!r} does not match NNNN_name.sql")
        found.append(Migration(entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    numbers = [m.version[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migration files share a number: {numbers}")
    return tuple(found)


async def _applied(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


def _check_unchanged(migrations: tuple[Migration, ...], applied: dict[str, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version} was changed after it was applied; add a new migration instead"
            )


async def pending_migrations(dsn: str, migrations: tuple[Migration, ...] | None = None) -> tuple[str, ...]:
    """Versions not applied yet (read-only; for --dry-run and status)."""
    migrations = migrations if migrations is not None else load_migrations()
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied = await _applied(conn) if exists else {}
    finally:
        await conn.close()
    _check_unchanged(migrations, applied)
    return tuple(m.version for m in migrations if m.version not in applied)


async def apply_migrations(dsn: str, migrations: tuple[Migration, ...] | None = None) -> MigrationReport:
    """Apply every pending migration; safe to run concurrently and repeatedly."""
    migrations = migrations if migrations is not None else load_migrations()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(_CREATE_LEDGER)
            applied = await _applied(conn)
            _check_unchanged(migrations, applied)
            done: list[str] = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                start = time.perf_counter()
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, checksum, duration_ms) VALUES ($1, $2, $3)",
                            migration.version,
                            migration.checksum,
                            int((time.perf_counter() - start) * 1000),
                        )
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"migration {migration.version} failed: {exc}") from exc
                done.append(migration.version)
            return MigrationReport(applied=tuple(done), already_applied=tuple(sorted(applied)))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
