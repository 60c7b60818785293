#!/usr/bin/env bash
# buf breaking: the contracts in the working tree against those of a git ref (default HEAD~1).
#
# The google/api protos are not committed (./pants extracts them into .pants-bootstrap/include),
# so `--against '.git#ref=...'` would see an empty module. Instead both sides are built into
# images, the old one from a temporary worktree that gets the same google/api protos.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ref=${1:-HEAD~1}
cd "$root"

if ! git rev-parse --verify -q "$ref^{commit}" >/dev/null || ! git cat-file -e "$ref:buf.yaml" 2>/dev/null; then
  echo "buf breaking: $ref has no contracts to compare with"
  exit 0
fi
[ -d .pants-bootstrap/include/google/api ] || ./pants --no-pantsd --version >/dev/null

work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add -q --detach "$work/old" "$ref"
mkdir -p "$work/old/.pants-bootstrap"
cp -r .pants-bootstrap/include "$work/old/.pants-bootstrap/include"
(cd "$work/old" && npx --prefix "$root" buf build -o "$work/old.binpb")
npx buf build -o "$work/new.binpb"
npx buf breaking "$work/new.binpb" --against "$work/old.binpb"
echo "buf breaking: no breaking changes against $ref"
