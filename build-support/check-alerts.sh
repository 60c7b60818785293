#!/usr/bin/env bash
# promtool check rules + promtool test rules for observability/alerts. promtool comes from PATH,
# or from Debian's prometheus package, unpacked (not installed: no daemon) into .stack/tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  tools="$PWD/.stack/tools/prometheus"
  promtool="$tools/usr/bin/promtool"
  if [ ! -x "$promtool" ]; then
    mkdir -p "$tools"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; })
    dpkg-deb -x "$work"/prometheus_*.deb "$tools"
  fi
fi
"$promtool" --version | head -1
cd observability/alerts
"$promtool" check rules rules.yaml
"$promtool" test rules rules_test.yaml
