"""Who may call which tool, and what is kept of a call.

- `authorize`: a role may call a tool when the role's allow-list holds one of the tool's
  capabilities; write tools are refused to every role but `delivery`. Refusals are
  PermissionDenied naming the role and the capability; unknown servers and tools are NotFound
  listing the known names.
- `redact`: arguments and results lose tokens, keys, passwords and authorization values (by key
  name, and by value shape: bearer tokens, key=value secrets, long key-like strings) before they
  are stored or shown.
- `cap`: results are cut to a size limit with an explicit marker saying how much was dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pm_errors import NotFound, PermissionDenied
from pm_registry.config import WRITE_ROLE, RegistryConfig, ToolPolicy

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"(token|api[_-]?key|authorization|password|passwd|secret|access[_-]?key|cookie|credential|private[_-]?key)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # Authorization header values
    r"|\b(password|passwd|pwd|token|api[_-]?key|secret|access[_-]?key)\s*[=:]\s*[^\s&,;\"']{4,}"  # k=v secrets
    r"|\b(gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{20,})"  # key shapes
)


@dataclass(frozen=True, slots=True)
class Grant:
    """Why a call is allowed: the tool's policy and the capability that matched."""

    tool: ToolPolicy
    capability: str


def authorize(config: RegistryConfig, role: str, server: str, tool: str) -> Grant:
    """Allow `role` to call `server`/`tool`, or raise NotFound / PermissionDenied."""
    server_config = config.server(server)
    if server_config is None:
        known = sorted(s.name for s in config.servers)
        raise NotFound(f"unknown MCP server {server!r}", details={"known_servers": known})
    policy = server_config.tools.get(tool)
    if policy is None:
        raise NotFound(
            f"tool {tool!r} of server {server!r} is not in the registry's catalog",
            details={"known_tools": sorted(server_config.tools)},
        )
    if policy.access == "write" and role != WRITE_ROLE:
        raise PermissionDenied(
            f"role {role!r} may not call write tool {tool!r} ({policy.capabilities[0]}); only {WRITE_ROLE!r} may",
            details={"role": role, "capability": policy.capabilities[0]},
        )
    allowed = set(config.roles.get(role, ()))
    for capability in policy.capabilities:
        if capability in allowed:
            return Grant(policy, capability)
    raise PermissionDenied(
        f"role {role!r} lacks capability {policy.capabilities[0]!r} for tool {tool!r}",
        details={"role": role, "capability": policy.capabilities[0]},
    )


def redact(value: Any) -> Any:
    """A copy of `value` with secret-looking entries and substrings replaced by [REDACTED]."""
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(_mask, value)
    return value


def _mask(match: re.Match[str]) -> str:
    scheme = match.group(1) or match.group(2)
    return f"{scheme} {REDACTED}" if match.group(1) else (f"{scheme}={REDACTED}" if scheme else REDACTED)


def cap(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to `limit` characters with a marker naming what was dropped; (text, truncated)."""
    if len(text) <= limit:
        return text, False
    marker = f"\n[TRUNCATED: {len(text) - limit} of {len(text)} characters omitted; narrow the query]"
    return text[:limit] + marker, True
