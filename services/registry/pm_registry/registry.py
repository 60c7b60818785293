"""The registry's behaviour behind the gRPC surface: catalog, authorization and tool calls.

A call goes through, in order: the caller's ids are checked; a repeated idempotency key returns
the first call's record; the role's allow-list is applied (a refusal is recorded as `denied`);
the tool must be in the live catalog and the arguments must satisfy its JSON schema (neither
reaches the server when it fails); then the server's circuit breaker, concurrency limit and
timeout apply, and read-only tools are retried with backoff after a timeout or a lost server.
Arguments and results are redacted, results are capped with a truncation marker, and every call
that reached the allow-list check is recorded in mcp_tool_calls under the returned call id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import mcp_types
from mcp.shared.exceptions import MCPError
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pm_errors import Conflict, InvalidArgument, NotFound, PermissionDenied, Unavailable
from pm_registry.breaker import CircuitBreaker, State
from pm_registry.config import WRITE_ROLE, RegistryConfig, ServerConfig
from pm_registry.connections import ServerConnection, ServerDown, describe_error
from pm_registry.policy import authorize, cap, redact
from pm_registry.store import CallRecord, CallStore

log = logging.getLogger(__name__)

OK, TOOL_ERROR, TIMEOUT, DENIED, UNAVAILABLE = "ok", "tool_error", "timeout", "denied", "unavailable"
RETRY_BASE_SECONDS = 0.2
ENDED = ("completed", "failed", "cancelled")
# The delivery role publishes what an investigation found once it has ended (not when cancelled).
DELIVERABLE = ("completed", "failed")
_CIRCUIT_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls, for the allow-list and the audit record."""

    agent_role: str
    investigation_id: str = ""
    step_id: str = ""
    agent_name: str = ""
    phase: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class ToolView:
    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    capabilities: tuple[str, ...]
    access: str


@dataclass(frozen=True, slots=True)
class ServerView:
    name: str
    transport: str
    health: str  # healthy | degraded | unhealthy
    circuit: State
    last_error: str
    tool_count: int
    last_success_at: datetime | None
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What CallTool answers."""

    call_id: str
    status: str
    content: list[dict[str, Any]] = field(default_factory=list)
    structured: dict[str, Any] | None = None
    duration_ms: int = 0
    truncated: bool = False
    error_message: str = ""
    attempts: int = 0


@dataclass
class _Server:
    connection: ServerConnection
    breaker: CircuitBreaker
    slots: asyncio.Semaphore

    @property
    def config(self) -> ServerConfig:
        return self.connection.config


def _uuid(value: str, name: str) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be a UUID, got {value[:60]!r}", details={"field": name}) from None


def _schema_error(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> str | None:
    validator_type = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    errors = sorted(validator_type(schema).iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(p) for p in first.absolute_path) or "(arguments)"
    return f"{where}: {first.message}"


def _content_items(result: mcp_types.CallToolResult) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for block in result.content:
        kind = getattr(block, "type", "text")
        if kind == "text":
            items.append({"type": "text", "text": getattr(block, "text", "")})
        elif kind in ("image", "audio"):
            items.append(
                {"type": kind, "mime_type": getattr(block, "mime_type", ""), "data": getattr(block, "data", "")}
            )
        else:
            dumped = block.model_dump(mode="json", by_alias=True, exclude_none=True)
            resource = dumped.get("resource") or {}
            items.append(
                {
                    "type": "resource",
                    "uri": str(resource.get("uri") or dumped.get("uri") or ""),
                    "mime_type": resource.get("mimeType") or dumped.get("mimeType") or "",
                    "text": resource.get("text") or json.dumps(dumped, sort_keys=True),
                }
            )
    return items


class RegistryMetrics:
    """pm_mcp_tool_call_total, pm_mcp_tool_call_duration_seconds, and per-server gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "pm_mcp_tool_call", "MCP tool calls by outcome.", ["server", "tool", "status"], registry=registry
        )
        self.duration = Histogram(
            "pm_mcp_tool_call_duration_seconds",
            "Duration of MCP tool calls, retries included.",
            ["server", "tool"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )


class _ServerGauges(Collector):
    """pm_mcp_server_health{server} (1 healthy, 0.5 degraded, 0 unhealthy) and pm_mcp_circuit_state{server}."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[GaugeMetricFamily]:
        health = GaugeMetricFamily("pm_mcp_server_health", "1 healthy, 0.5 degraded, 0 unhealthy.", labels=["server"])
        circuit = GaugeMetricFamily(
            "pm_mcp_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["server"]
        )
        for view in self._registry.servers():
            health.add_metric([view.name], {"healthy": 1.0, "degraded": 0.5}.get(view.health, 0.0))
            circuit.add_metric([view.name], _CIRCUIT_VALUE[view.circuit])
        return [health, circuit]


class Registry:
    """Servers, catalog and calls."""

    def __init__(
        self,
        config: RegistryConfig,
        connections: Sequence[ServerConnection],
        store: CallStore,
        metrics_registry: CollectorRegistry,
        *,
        result_max_chars: int = 60_000,
        excerpt_chars: int = 2_000,
    ) -> None:
        self.config = config
        self._servers = {
            c.name: _Server(
                c,
                CircuitBreaker(c.config.breaker.failures, c.config.breaker.reset_seconds),
                asyncio.Semaphore(c.config.max_concurrency),
            )
            for c in connections
        }
        self._store = store
        self._metrics = RegistryMetrics(metrics_registry)
        metrics_registry.register(_ServerGauges(self))
        self._result_max = result_max_chars
        self._excerpt = excerpt_chars

    # -- servers and catalog ----------------------------------------------------------------

    def servers(self) -> list[ServerView]:
        views = []
        for name, server in self._servers.items():
            circuit = server.breaker.state
            connection = server.connection
            if not connection.is_connected:
                health = "unhealthy"
            elif circuit is not State.CLOSED or server.breaker.consecutive_failures:
                health = "degraded"
            else:
                health = "healthy"
            views.append(
                ServerView(
                    name=name,
                    transport=server.config.transport,
                    health=health,
                    circuit=circuit,
                    last_error=connection.last_error,
                    tool_count=len(connection.tools),
                    last_success_at=connection.last_success_at,
                    consecutive_failures=server.breaker.consecutive_failures,
                )
            )
        return views

    def tools(self, server: str = "", capability: str = "", agent_role: str = "") -> list[ToolView]:
        """The live catalog joined with the configured policies, filtered."""
        if server and server not in self._servers:
            raise NotFound(f"unknown MCP server {server!r}", details={"known_servers": sorted(self._servers)})
        allowed = set(self.config.roles.get(agent_role, ())) if agent_role else None
        views = []
        for name, entry in self._servers.items():
            if server and name != server:
                continue
            for tool in entry.connection.tools.values():
                policy = entry.config.tools.get(tool.name)
                capabilities = tuple(policy.capabilities) if policy else ()
                access = policy.access if policy else "read"
                if capability and capability not in capabilities:
                    continue
                if allowed is not None:
                    if not allowed.intersection(capabilities):
                        continue
                    if access == "write" and agent_role != "delivery":
                        continue
                views.append(
                    ToolView(name, tool.name, tool.description or "", dict(tool.input_schema), capabilities, access)
                )
        return views

    # -- calls ------------------------------------------------------------------------------

    async def call(
        self, server: str, tool: str, arguments: Mapping[str, Any], caller: Caller, timeout_seconds: float = 0.0
    ) -> CallOutcome:
        """Call a tool; see the module docstring. Raises InvalidArgument, NotFound, PermissionDenied, Unavailable."""
        if not caller.agent_role:
            raise InvalidArgument(
                "agent_role is required: the allow-lists are per role", details={"field": "agent_role"}
            )
        investigation_id = _uuid(caller.investigation_id, "investigation_id")
        step_id = _uuid(caller.step_id, "step_id")
        if caller.idempotency_key:
            first = await self._store.by_idempotency_key(caller.idempotency_key)
            if first is not None:
                return self._replay(first, server, tool)
        call_id = uuid.uuid4()
        record = CallRecord(
            id=call_id,
            investigation_id=investigation_id,
            step_id=step_id,
            phase=caller.phase,
            agent_role=caller.agent_role,
            agent_name=caller.agent_name,
            server_name=server,
            tool_name=tool,
            capability=None,
            arguments=redact(dict(arguments)),
            result_digest=None,
            result_excerpt=None,
            result_bytes=0,
            truncated=False,
            status=DENIED,
            error_message=None,
            attempts=0,
            duration_ms=0,
            idempotency_key=caller.idempotency_key or None,
        )
        if investigation_id is not None:
            status = await self._store.investigation_status(investigation_id)
            if status is None:
                raise NotFound(
                    f"investigation {investigation_id} does not exist", details={"field": "investigation_id"}
                )
            if status in ENDED and not (caller.agent_role == WRITE_ROLE and status in DELIVERABLE):
                # A cancelled (or finished) investigation's steps get no more tools.
                raise Conflict(
                    f"investigation {investigation_id} is {status}: no more tool calls",
                    details={"investigation_id": str(investigation_id), "status": status},
                )
        try:
            grant = authorize(self.config, caller.agent_role, server, tool)
        except PermissionDenied as exc:
            await self._store.insert(replace(record, error_message=exc.message))
            self._metrics.calls.labels(server, tool, DENIED).inc()
            exc.details = {**exc.details, "call_id": str(call_id)}
            raise
        entry = self._servers[server]
        catalog = entry.connection.tools
        if catalog and tool not in catalog:
            raise NotFound(f"server {server!r} does not offer tool {tool!r}", details={"known_tools": sorted(catalog)})
        if tool in catalog:
            problem = _schema_error(catalog[tool].input_schema, arguments)
            if problem:
                raise InvalidArgument(
                    f"arguments do not match the schema of {server}/{tool}: {problem}",
                    details={"schema_error": problem},
                )
        record = replace(record, capability=grant.capability)
        budget = timeout_seconds or entry.config.timeout_seconds
        started = time.monotonic()
        result, status, error, attempts = await self._attempts(entry, tool, arguments, budget, grant.tool.access)
        duration_ms = int((time.monotonic() - started) * 1000)
        outcome, record = self._finish(record, call_id, result, status, error, attempts, duration_ms)
        stored = await self._store.insert(record)
        if stored.id != record.id:  # a concurrent call with the same idempotency key won
            return self._replay(stored, server, tool)
        self._metrics.calls.labels(server, tool, status).inc()
        self._metrics.duration.labels(server, tool).observe(duration_ms / 1000)
        if status == UNAVAILABLE:
            raise Unavailable(
                f"MCP server {server!r} is unavailable: {error}",
                details={"call_id": str(call_id), "server": server, "circuit_state": entry.breaker.state.value},
            )
        return outcome

    async def _attempts(
        self, entry: _Server, tool: str, arguments: Mapping[str, Any], budget: float, access: str
    ) -> tuple[mcp_types.CallToolResult | None, str, str, int]:
        deadline = time.monotonic() + budget
        retries = entry.config.retries if access == "read" else 0
        attempts = 0
        status, error = UNAVAILABLE, ""
        while True:
            remaining = deadline - time.monotonic()
            if not entry.breaker.try_acquire():
                return None, UNAVAILABLE, f"circuit open; next probe in {entry.breaker.retry_after():.1f}s", attempts
            attempts += 1
            verdict: bool | None = None
            try:
                async with asyncio.timeout(max(remaining, 0.001)):
                    async with entry.slots:
                        per_attempt = min(entry.config.timeout_seconds, deadline - time.monotonic())
                        result = await entry.connection.call_tool(tool, arguments, max(per_attempt, 0.001))
                verdict = True
                return result, TOOL_ERROR if result.is_error else OK, "", attempts
            except TimeoutError:
                status, error, verdict = TIMEOUT, f"no answer within {budget:.1f}s", False
                entry.connection.suspect()
            except ServerDown as exc:
                status, error, verdict = UNAVAILABLE, str(exc), False
                entry.connection.suspect()
            except MCPError as exc:
                if exc.error.code == mcp_types.CONNECTION_CLOSED:
                    status, error, verdict = UNAVAILABLE, "connection closed", False
                    entry.connection.suspect()
                else:  # the server answered with a JSON-RPC error: it is up, the request was bad
                    verdict = True
                    return None, TOOL_ERROR, describe_error(exc), attempts
            finally:
                if verdict is True:
                    entry.breaker.record_success()
                elif verdict is False:
                    entry.breaker.record_failure()
                else:
                    entry.breaker.release()
            backoff = RETRY_BASE_SECONDS * 2 ** (attempts - 1)
            if attempts > retries or time.monotonic() + backoff >= deadline:
                return None, status, error, attempts
            log.info(
                "retrying %s/%s after %s",
                entry.connection.name,
                tool,
                status,
                extra={"server": entry.connection.name, "tool": tool, "attempt": attempts},
            )
            await asyncio.sleep(backoff)

    def _finish(
        self,
        record: CallRecord,
        call_id: uuid.UUID,
        result: mcp_types.CallToolResult | None,
        status: str,
        error: str,
        attempts: int,
        duration_ms: int,
    ) -> tuple[CallOutcome, CallRecord]:
        content: list[dict[str, Any]] = []
        structured: dict[str, Any] | None = None
        truncated = False
        full_text = ""
        if result is not None:
            content = [redact(item) for item in _content_items(result)]
            if result.structured_content is not None:
                structured = redact(dict(result.structured_content))
            budget = self._result_max
            for item in content:
                if item.get("text"):
                    full_text += item["text"]
                    item["text"], cut = cap(item["text"], max(budget, 0))
                    budget -= len(item["text"])
                    truncated = truncated or cut
            if structured is not None and len(json.dumps(structured)) > self._result_max:
                structured, truncated = None, True  # the capped text carries the same data
            if status == TOOL_ERROR and not error:
                error = full_text[:500] or "the tool reported an error"
        excerpt, excerpt_cut = cap(full_text, self._excerpt) if full_text else (None, False)
        record = replace(
            record,
            status=status,
            error_message=error or None,
            attempts=attempts,
            duration_ms=duration_ms,
            result_digest=hashlib.sha256(full_text.encode()).hexdigest() if result is not None else None,
            result_excerpt=excerpt,
            result_bytes=len(full_text.encode()),
            truncated=truncated or excerpt_cut,
        )
        outcome = CallOutcome(
            call_id=str(call_id),
            status=status,
            content=content,
            structured=structured,
            duration_ms=duration_ms,
            truncated=truncated,
            error_message=error,
            attempts=attempts,
        )
        return outcome, record

    def _replay(self, record: CallRecord, server: str, tool: str) -> CallOutcome:
        if (record.server_name, record.tool_name) != (server, tool):
            raise InvalidArgument(
                "idempotency_key was already used for a different tool call",
                details={"call_id": str(record.id), "server": record.server_name, "tool": record.tool_name},
            )
        content = [{"type": "text", "text": record.result_excerpt}] if record.result_excerpt else []
        return CallOutcome(
            call_id=str(record.id),
            status=record.status,
            content=content,
            duration_ms=record.duration_ms,
            truncated=record.truncated,
            error_message=record.error_message or "",
            attempts=record.attempts,
        )
