"""Response metadata that Envoy turns into an HTTP status and JSON body.

gRPC has no 201/202/204 and its error bodies are google.rpc.Status. The public REST surface
keeps the predecessor's status codes and JSON bodies, so a servicer states them as trailing
metadata and Envoy's Lua filter applies them (deploy/envoy/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc

# A servicer context of any request/response types.
Context = grpc.aio.ServicerContext[Any, Any]


def request_headers(context: Context) -> dict[str, str]:
    """Lower-cased text metadata (the HTTP headers of a transcoded REST request)."""
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers[key.lower()] = value
    return headers


HTTP_STATUS_KEY = "x-pm-http-status"
HTTP_BODY_KEY = "x-pm-http-body"

# Envoy and gRPC both cap header sizes; error bodies are short by design.
_MAX_BODY_CHARS = 7000


def http_metadata(
    status: int,
    body: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for an HTTP status, an optional JSON body and extra headers."""
    items: list[tuple[str, str]] = [(HTTP_STATUS_KEY, str(status))]
    if body is not None:
        encoded = json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=str)
        if len(encoded) > _MAX_BODY_CHARS:
            encoded = json.dumps({"error": str(body.get("error", "error body too large"))}, ensure_ascii=True)
        items.append((HTTP_BODY_KEY, encoded))
    for name, value in (headers or {}).items():
        items.append((name.lower(), value))
    return tuple(items)


def set_http_status(
    context: Context,
    status: int,
    body: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Make a successful RPC answer REST clients with `status` (e.g. 201, 202, 204, 503)."""
    context.set_trailing_metadata(http_metadata(status, body, headers))
