"""How the rule reasoner reaches tools: by capability, through the registry, citing call ids."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_errors import Unavailable
from pm_grpc import HTTP_BODY_KEY
from pm_grpc.tool_results import tool_result_data


class InvestigationEnded(Exception):
    """The registry refuses tools to this investigation: it was cancelled or has ended."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One tool call's result: the call id reports cite, and the tool's JSON (or the error)."""

    call_id: str
    capability: str
    tool: str
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # The registry cut the result to its size cap: `data` may be incomplete; ask for less.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.error


class ToolBox(Protocol):
    """Calls a tool that provides `capability`."""

    async def call(self, capability: str, arguments: Mapping[str, Any]) -> Answer: ...


@dataclass(frozen=True, slots=True)
class Route:
    server: str
    tool: str


class RegistryToolBox:
    """Calls through the registry's CallTool, choosing the tool by capability (ListTools)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        agent_role: str,
        investigation_id: str = "",
        step_id: str = "",
        agent_name: str = "rule-reasoner",
        phase: str = "",
        server: str = "",
        timeout_seconds: float = 30.0,
    ) -> None:
        self._stub: Any = registry_pb2_grpc.RegistryServiceStub(channel)
        self._role = agent_role
        self._investigation = investigation_id
        self._step = step_id
        self._agent = agent_name
        self._phase = phase
        self._server = server
        self._timeout = timeout_seconds
        self._routes: dict[str, Route | None] = {}
        self.calls = 0
        # The mcp_tool_calls ids of every call made through this toolbox (denials and outages included).
        self.call_ids: list[str] = []

    def speak_as(self, agent_name: str) -> None:
        """Name later calls' caller in the registry's audit (e.g. `llm:verify` once the step's LLM
        agent takes over from the rule reasoner); the calls made so far keep theirs."""
        self._agent = agent_name

    async def route(self, capability: str) -> Route | None:
        """The tool this role may call for `capability` (on the preferred server when set).

        None when the role may not use the capability; Unavailable when no connected server
        offers it at all (a server still connecting, or down), which a retry may fix.
        """
        if capability not in self._routes:
            tools = await self._list(capability, self._role)
            if not tools and not await self._list(capability, ""):
                raise Unavailable(f"no connected MCP server offers {capability} yet")
            self._routes[capability] = Route(tools[0].server, tools[0].name) if tools else None
        return self._routes[capability]

    async def _list(self, capability: str, role: str) -> list[Any]:
        try:
            reply = await self._stub.ListTools(
                registry_pb2.ListToolsRequest(server=self._server, capability=capability, agent_role=role),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and self._server:
                self._server = ""  # no server of that name: any server offering the capability
                return await self._list(capability, role)
            raise Unavailable(f"registry: {exc.code().name}: {exc.details()}") from None
        return sorted(reply.tools, key=lambda t: (t.server, t.name))

    async def tools(self) -> list[Any]:
        """Every tool this role may call (registry ToolInfo messages, by server and name)."""
        try:
            reply = await self._stub.ListTools(
                registry_pb2.ListToolsRequest(agent_role=self._role), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"registry: {exc.code().name}: {exc.details()}") from None
        return sorted(reply.tools, key=lambda t: (t.server, t.name))

    async def call(self, capability: str, arguments: Mapping[str, Any]) -> Answer:
        route = await self.route(capability)
        if route is None:
            return Answer("", capability, "", error=f"no tool for {capability} is available to role {self._role}")
        return await self.call_tool(route, arguments, capability)

    async def call_tool(self, route: Route, arguments: Mapping[str, Any], capability: str = "") -> Answer:
        """Call one tool by server and name (the LLM reasoner's tools are named, not routed), as a
        `tool.call` span whose gRPC client span carries the trace on to the registry. The
        arguments never go into the span: they may hold anything."""
        args = struct_pb2.Struct()
        args.update({k: v for k, v in arguments.items() if v is not None})
        self.calls += 1
        with _tracer().start_as_current_span(
            "tool.call",
            attributes={
                "pm.tool.server": route.server,
                "pm.tool.name": route.tool,
                "pm.tool.capability": capability,
                "pm.investigation_id": self._investigation,
                "pm.agent": self._role,
            },
        ) as span:
            try:
                reply = await self._stub.CallTool(
                    registry_pb2.CallToolRequest(
                        server=route.server,
                        tool=route.tool,
                        arguments=args,
                        investigation_id=self._investigation,
                        step_id=self._step,
                        agent_role=self._role,
                        agent_name=self._agent,
                        phase=self._phase,
                    ),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as exc:
                call_id = self._note_call_id(exc)
                status = _REFUSAL_STATUS.get(exc.code(), exc.code().name.lower())
                _outcome(span, status, call_id)
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    # The investigation ended (cancelled): the step stops here.
                    raise InvestigationEnded(exc.details() or "the investigation has ended") from None
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    # The server is down or its circuit is open: the step fails and is retried.
                    raise Unavailable(f"{capability} via {route.server}/{route.tool}: {exc.details()}") from None
                return Answer("", capability, route.tool, error=f"{exc.code().name}: {exc.details()}")
            _outcome(
                span, registry_pb2.CallOutcome.Name(reply.outcome).removeprefix("CALL_OUTCOME_").lower(), reply.call_id
            )
        if reply.call_id:
            self.call_ids.append(reply.call_id)
        if reply.outcome != registry_pb2.CALL_OUTCOME_OK:
            return Answer(reply.call_id, capability, route.tool, error=reply.error_message or "tool error")
        return Answer(reply.call_id, capability, route.tool, data=tool_result_data(reply), truncated=reply.truncated)

    def _note_call_id(self, exc: grpc.aio.AioRpcError) -> str:
        """Refusals recorded by the registry (denied, unavailable) carry their call id in the body;
        returns it ("" when there is none)."""
        body = dict(exc.trailing_metadata() or ()).get(HTTP_BODY_KEY)
        if isinstance(body, str):
            try:
                call_id = json.loads(body).get("call_id")
            except (ValueError, AttributeError):
                return ""
            if call_id:
                self.call_ids.append(str(call_id))
                return str(call_id)
        return ""


# The tool-call status of a registry refusal (span attribute pm.tool.status).
_REFUSAL_STATUS = {
    grpc.StatusCode.PERMISSION_DENIED: "denied",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.FAILED_PRECONDITION: "investigation_ended",
}


def _outcome(span: Span, status: str, call_id: str) -> None:
    """Record how a tool call went on its span."""
    span.set_attribute("pm.tool.status", status)
    if call_id:
        span.set_attribute("pm.tool.call_id", call_id)
    if status != "ok":
        span.set_status(StatusCode.ERROR, status)


@functools.cache
def _tracer() -> trace.Tracer:
    return trace.get_tracer(__name__)
