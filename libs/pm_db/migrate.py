"""`python -m pm_db.migrate` / `pm-migrate.pex`: apply (or list) pending migrations.

Reads DATABASE_URL. `--dry-run` lists what would be applied without changing anything.
Exit codes: 0 done, 1 a migration failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pm_db.migrations_runner import MigrationError, apply_migrations, pending_migrations
from pm_settings import ServiceSettings, SettingsError, load_settings


class MigrateSettings(ServiceSettings):
    """Settings of the migration runner."""

    database_url: str


async def _run(dsn: str, dry_run: bool) -> int:
    if dry_run:
        for version in await pending_migrations(dsn):
            print(f"WOULD APPLY {version}")
        return 0
    report = await apply_migrations(dsn)
    for version in report.applied:
        print(f"APPLIED {version}")
    print(f"{len(report.applied)} applied, {len(report.already_applied)} already applied")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="pm-migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list pending migrations only")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(MigrateSettings, os.environ)
    except SettingsError as exc:
        print(f"pm-migrate: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(asyncio.run(_run(settings.database_url, args.dry_run)))
    except MigrationError as exc:
        print(f"pm-migrate: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"pm-migrate: cannot reach the database: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
