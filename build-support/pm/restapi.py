"""The platform's REST API from ./pm commands (demo, benchmarks): JSON in, JSON out, an API key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


def call(method: str, url: str, api_key: str, body: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of one request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("x-api-key", api_key)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # - a loopback URL we built
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            return error.code, json.loads(payload or b"{}")
        except ValueError:
            return error.code, {"error": payload.decode(errors="replace")[:200]}
