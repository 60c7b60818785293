"""PostgreSQL access: the connection pool and the schema migrations.

The schema lives in `pm_db/migrations/NNNN_name.sql`, plain SQL applied in order by
`apply_migrations` (also `python -m pm_db.migrate`, the `pm-migrate` pex and
`scripts/run-migrations.sh`).
"""

from pm_db.migrations_runner import (
    MIGRATION_LOCK_KEY,
    Migration,
    MigrationError,
    MigrationReport,
    apply_migrations,
    load_migrations,
    pending_migrations,
)
from pm_db.pool import open_pool, ping

__all__ = [
    "MIGRATION_LOCK_KEY",
    "Migration",
    "MigrationError",
    "MigrationReport",
    "apply_migrations",
    "load_migrations",
    "open_pool",
    "pending_migrations",
    "ping",
]
