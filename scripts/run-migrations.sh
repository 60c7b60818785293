#!/usr/bin/env bash
# Apply pending database migrations (the operator guide's ./scripts/run-migrations.sh).
#
# Uses DATABASE_URL, or builds it from DB_HOST, DB_PORT (5432), DB_NAME, DB_USER, DB_PASSWORD and
# DB_SSL_MODE (require) like the predecessor's script. Runs the pm-migrate pex when it is next to
# this repo's dist/ (or PM_MIGRATE_PEX points at it), otherwise the pm_db module through Pants.
# Extra arguments go to the runner, e.g. --dry-run. Safe to run repeatedly and concurrently.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -z "${DATABASE_URL:-}" ]; then
  for var in DB_HOST DB_NAME DB_USER; do
    [ -n "${!var:-}" ] || { echo "run-migrations: set DATABASE_URL or $var" >&2; exit 2; }
  done
  urlencode() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
  auth=$(urlencode "$DB_USER")
  [ -n "${DB_PASSWORD:-}" ] && auth="$auth:$(urlencode "$DB_PASSWORD")"
  export DATABASE_URL="postgresql://$auth@$DB_HOST:${DB_PORT:-5432}/$DB_NAME?sslmode=${DB_SSL_MODE:-require}"
fi

pex=${PM_MIGRATE_PEX:-$root/dist/pm-migrate.pex}
if [ -f "$pex" ]; then
  exec python3.11 "$pex" "$@"
fi
cd "$root"
exec ./pants --no-pantsd run libs/pm_db:migrate -- "$@"
