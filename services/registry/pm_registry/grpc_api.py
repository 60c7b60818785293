"""gRPC servicer of the registry: translate proto <-> domain, nothing else.

Refusals are RPC errors (pm_errors mapped by the server's interceptor): NOT_FOUND for an unknown
server or tool (the details list the known names), INVALID_ARGUMENT for arguments that fail the
tool's schema, PERMISSION_DENIED naming the role and the capability, UNAVAILABLE when the server
is down or its circuit is open. The details of the last two carry the call id of the audit row.
Everything the tool itself reports (ok, tool_error, timeout) is a CallToolResponse outcome.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_errors import ErrorCode, PmError
from pm_grpc.http import Context
from pm_registry.breaker import State
from pm_registry.registry import Caller, Registry, ServerView, ToolView
from pm_telemetry import bind_investigation

_TRANSPORT = {
    "streamable_http": registry_pb2.TRANSPORT_STREAMABLE_HTTP,
    "sse": registry_pb2.TRANSPORT_SSE,
    "stdio": registry_pb2.TRANSPORT_STDIO,
}
_HEALTH = {
    "healthy": registry_pb2.SERVER_HEALTH_HEALTHY,
    "degraded": registry_pb2.SERVER_HEALTH_DEGRADED,
    "unhealthy": registry_pb2.SERVER_HEALTH_UNHEALTHY,
}
_CIRCUIT = {
    State.CLOSED: registry_pb2.CIRCUIT_STATE_CLOSED,
    State.OPEN: registry_pb2.CIRCUIT_STATE_OPEN,
    State.HALF_OPEN: registry_pb2.CIRCUIT_STATE_HALF_OPEN,
}
_OUTCOME = {
    "ok": registry_pb2.CALL_OUTCOME_OK,
    "tool_error": registry_pb2.CALL_OUTCOME_TOOL_ERROR,
    "timeout": registry_pb2.CALL_OUTCOME_TIMEOUT,
    "denied": registry_pb2.CALL_OUTCOME_DENIED,
    "unavailable": registry_pb2.CALL_OUTCOME_UNAVAILABLE,
}
# pm.tool.status of a call the registry refused.
_REFUSED = {ErrorCode.PERMISSION_DENIED: "denied", ErrorCode.UNAVAILABLE: "unavailable"}
# Leave the caller's own deadline this much room to receive the answer.
DEADLINE_MARGIN_SECONDS = 0.2


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _bytes(data: str) -> bytes:
    """MCP carries binary content (images, audio) as base64 text."""
    try:
        return base64.b64decode(data, validate=True) if data else b""
    except (binascii.Error, ValueError):
        return b""


def _server(view: ServerView) -> registry_pb2.ServerInfo:
    info = registry_pb2.ServerInfo(
        name=view.name,
        transport=_TRANSPORT[view.transport],
        health=_HEALTH[view.health],
        circuit_state=_CIRCUIT[view.circuit],
        last_error=view.last_error,
        tool_count=view.tool_count,
        consecutive_failures=view.consecutive_failures,
    )
    if view.last_success_at is not None:
        info.last_success_at.FromDatetime(view.last_success_at)
    return info


def _tool(view: ToolView) -> registry_pb2.ToolInfo:
    return registry_pb2.ToolInfo(
        server=view.server,
        name=view.name,
        description=view.description,
        input_schema=_struct(view.input_schema),
        capabilities=list(view.capabilities),
        access=registry_pb2.TOOL_ACCESS_WRITE if view.access == "write" else registry_pb2.TOOL_ACCESS_READ,
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """pm.registry.v1.RegistryService."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def ListServers(
        self, request: registry_pb2.ListServersRequest, context: Context
    ) -> registry_pb2.ListServersResponse:
        return registry_pb2.ListServersResponse(servers=[_server(v) for v in self._registry.servers()])

    async def ListTools(
        self, request: registry_pb2.ListToolsRequest, context: Context
    ) -> registry_pb2.ListToolsResponse:
        tools = self._registry.tools(request.server, request.capability, request.agent_role)
        return registry_pb2.ListToolsResponse(tools=[_tool(t) for t in tools])

    async def CallTool(self, request: registry_pb2.CallToolRequest, context: Context) -> registry_pb2.CallToolResponse:
        caller = Caller(
            agent_role=request.agent_role,
            investigation_id=request.investigation_id,
            step_id=request.step_id,
            agent_name=request.agent_name,
            phase=request.phase,
            idempotency_key=request.idempotency_key,
        )
        timeout = request.timeout_ms / 1000 if request.timeout_ms > 0 else 0.0
        remaining = context.time_remaining()
        if remaining is not None:
            room = max(remaining - DEADLINE_MARGIN_SECONDS, 0.05)
            timeout = min(timeout, room) if timeout else room
        arguments = json_format.MessageToDict(request.arguments) if request.HasField("arguments") else {}
        # The RPC's server span (a child of the caller's tool.call span) says which tool and how it
        # went; the arguments stay out of it.
        span = trace.get_current_span()
        span.set_attributes(
            {
                "pm.tool.server": request.server,
                "pm.tool.name": request.tool,
                "pm.investigation_id": request.investigation_id,
                "pm.agent": request.agent_role,
            }
        )
        try:
            with bind_investigation(request.investigation_id):
                outcome = await self._registry.call(request.server, request.tool, arguments, caller, timeout)
        except PmError as exc:
            span.set_attribute("pm.tool.status", _REFUSED.get(exc.code, str(exc.code)))
            raise
        span.set_attributes(
            {"pm.tool.status": outcome.status, "pm.tool.call_id": outcome.call_id, "pm.tool.attempts": outcome.attempts}
        )
        response = registry_pb2.CallToolResponse(
            call_id=outcome.call_id,
            outcome=_OUTCOME[outcome.status],
            content=[
                registry_pb2.ContentItem(
                    type=item.get("type", "text"),
                    text=item.get("text", ""),
                    mime_type=item.get("mime_type", ""),
                    uri=item.get("uri", ""),
                    data=_bytes(item.get("data", "")),
                )
                for item in outcome.content
            ],
            duration_ms=outcome.duration_ms,
            truncated=outcome.truncated,
            error_message=outcome.error_message,
            attempts=outcome.attempts,
        )
        if outcome.structured is not None:
            response.structured_content.CopyFrom(_struct(outcome.structured))
        return response

    async def GetHealth(
        self, request: registry_pb2.GetHealthRequest, context: Context
    ) -> registry_pb2.GetHealthResponse:
        views = self._registry.servers()
        healthy = sum(1 for v in views if v.health == "healthy")
        return registry_pb2.GetHealthResponse(
            healthy=healthy == len(views),
            total_servers=len(views),
            healthy_servers=healthy,
            servers=[_server(v) for v in views],
        )
