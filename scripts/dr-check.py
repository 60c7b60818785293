#!/usr/bin/env python3
"""The disaster-recovery checklist's last steps against a deployed Production Master:
liveness, readiness, and one test investigation from submission to report.

    scripts/dr-check.py --base-url https://pm.example.com --api-key "$PM_API_KEY"

Standard library only, so it runs from any machine with Python 3.9+ that reaches the public edge.
Exit status 0 when every step passed; otherwise 1, after saying which step failed and why. The
API key may also come from the PM_API_KEY environment variable (it is never printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any


class CheckFailed(Exception):
    pass


def _call(
    base_url: str, method: str, path: str, key: str = "", body: Any = None, timeout: float = 15
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method)
    request.add_header("accept", "application/json")
    if data is not None:
        request.add_header("content-type", "application/json")
    if key:
        request.add_header("x-api-key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        raise CheckFailed(f"{method} {path}: cannot reach {base_url}: {getattr(err, 'reason', err)}") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")[:200]


def check(base_url: str, key: str, ticket: str, mode: str, timeout: float, say: Any = print) -> dict[str, Any]:
    """Run the steps; the finished investigation (id, status, verdict, ...) when all passed."""
    status, body = _call(base_url, "GET", "/healthz")
    if status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        raise CheckFailed(f"/healthz answered {status}: {body}")
    say(f"ok   /healthz: {body.get('service', '?')} up for {body.get('uptime_seconds', '?')} s")

    status, body = _call(base_url, "GET", "/readyz")
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    failing = sorted(name for name, c in checks.items() if not c.get("healthy"))
    if status != 200 or failing:
        raise CheckFailed(f"/readyz answered {status}; not healthy: {', '.join(failing) or body}")
    say(f"ok   /readyz: {', '.join(sorted(checks))} healthy")

    status, body = _call(base_url, "POST", "/api/v1/investigate", key, {"ticket_id": ticket, "mode": mode})
    if status != 202:
        raise CheckFailed(f"POST /api/v1/investigate answered {status}: {body}")
    investigation_id = body["investigation_id"]
    say(f"ok   test investigation {investigation_id} queued for {ticket} ({mode})")

    deadline = time.monotonic() + timeout
    while True:
        status, body = _call(base_url, "GET", f"/api/v1/investigations/{investigation_id}", key)
        if status != 200:
            raise CheckFailed(f"GET /api/v1/investigations/{investigation_id} answered {status}: {body}")
        if body["status"] in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"the test investigation is still {body['status']} ({body['phase']}) after {timeout:.0f} s"
            )
        time.sleep(1)
    if body["status"] != "completed":
        raise CheckFailed(f"the test investigation ended {body['status']}: {body.get('error', '')}")
    status, report = _call(base_url, "GET", f"/api/v1/investigations/{investigation_id}/report", key)
    if status != 200 or not isinstance(report, dict) or not report.get("markdown"):
        raise CheckFailed(f"the report of {investigation_id} is not readable: {status} {report}")
    say(
        f"ok   test investigation completed in {body.get('elapsed_seconds', 0):.1f} s:"
        f" {report['verdict']} ({report['confidence']:.2f}), report readable"
    )
    return dict(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="the public edge, e.g. https://pm.example.com")
    parser.add_argument("--api-key", default=os.environ.get("PM_API_KEY", ""), help="default: $PM_API_KEY")
    parser.add_argument("--ticket", default=f"DR-CHECK-{int(time.time())}", help="ticket id of the test investigation")
    parser.add_argument("--mode", default="fast", choices=("fast", "balanced", "deep"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds the investigation may take")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("an API key is needed (--api-key or PM_API_KEY)")
    try:
        check(args.base_url, args.api_key, args.ticket, args.mode, args.timeout)
    except CheckFailed as failed:
        print(f"FAIL {failed}", file=sys.stderr)
        return 1
    print("ok   disaster-recovery check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
