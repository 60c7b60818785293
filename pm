#!/usr/bin/env bash
# Production Master's entry point for local work: the dev stack, the test suite, lint.
# Installs the pinned local-stack tools (3rdparty/tools/requirements.txt) into .stack/venv when
# they are missing or the file changed, and the local embedding model into .stack/models
# (build-support/fetch-embedding-model.sh), then hands over to build-support/pm/main.py.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$root/.stack/venv"
requirements="$root/3rdparty/tools/requirements.txt"
stamp="$venv/.requirements.sha256"

ensure_venv() {
  local want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
    return
  fi
  echo "pm: installing the local-stack tools into .stack/venv (first run or changed requirements)" >&2
  [[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv"
  # The machine-wide pip config sets a constraint that breaks installs; never read it.
  PIP_CONFIG_FILE=/dev/null "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --cert /etc/ssl/certs/ca-certificates.crt -r "$requirements"
  printf '%s\n' "$want" >"$stamp"
}

mkdir -p "$root/.stack"
# Two ./pm runs at once must not install into the same venv concurrently.
exec 9>"$root/.stack/venv.lock"
flock 9
ensure_venv
# The local embedding model (similar incidents); without it only similarity is unavailable.
"$root/build-support/fetch-embedding-model.sh" "$venv/bin/python" ||
  echo "pm: warning: the embedding model could not be fetched; similar incidents stay unavailable" >&2
flock -u 9
exec 9>&-

exec "$venv/bin/python" "$root/build-support/pm/main.py" "$@"
