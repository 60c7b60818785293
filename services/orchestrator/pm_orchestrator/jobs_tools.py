"""How the scheduled jobs and the health check reach MCP tools: by capability and role, through
the registry, like the agents and the delivery loop.

Reads (`metrics.query`, `tickets.get`) are made as the `scheduler` role, which the registry's
roles section must allow; posts (`publish.chat_message`) as `delivery`, the only role the
registry lets call write tools. A tool that cannot be used raises ToolFailure saying why, and
whether trying again later may help.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_grpc.tool_results import tool_result_data

SCHEDULER_ROLE = "scheduler"
DELIVERY_ROLE = "delivery"
METRICS = "metrics.query"
TICKETS = "tickets.get"
CHAT = "publish.chat_message"
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class ToolFailure(Exception):
    """A tool call that gave no answer: `retryable` when a later attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Tool:
    server: str
    name: str


class RegistryTools:
    """Calls the registry's tools by capability (ListTools picks the tool, CallTool runs it)."""

    def __init__(self, channel: grpc.aio.Channel, *, server: str = "", timeout_seconds: float = 30.0) -> None:
        self._stub: Any = registry_pb2_grpc.RegistryServiceStub(channel)
        self._server = server
        self._timeout = timeout_seconds

    async def tool(self, capability: str, role: str) -> Tool | None:
        """The tool `role` may call for `capability` (the preferred server's first); None when none."""
        try:
            listed = await self._stub.ListTools(
                registry_pb2.ListToolsRequest(capability=capability, agent_role=role), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise ToolFailure(
                f"registry: {exc.code().name}: {exc.details()}", retryable=exc.code() in _RETRYABLE
            ) from None
        tools = sorted(listed.tools, key=lambda t: (t.server != self._server, t.server, t.name))
        return Tool(tools[0].server, tools[0].name) if tools else None

    async def call(
        self,
        capability: str,
        role: str,
        arguments: Mapping[str, Any],
        *,
        agent_name: str,
        idempotency_key: str = "",
    ) -> dict[str, Any]:
        """The tool's JSON answer; ToolFailure when there is no tool, the call fails or the tool errs."""
        tool = await self.tool(capability, role)
        if tool is None:
            raise ToolFailure(f"no registry tool offers {capability} to the {role} role", retryable=False)
        try:
            reply = await self._stub.CallTool(
                registry_pb2.CallToolRequest(
                    server=tool.server,
                    tool=tool.name,
                    arguments=json_format.ParseDict(
                        {k: v for k, v in arguments.items() if v is not None}, struct_pb2.Struct()
                    ),
                    agent_role=role,
                    agent_name=agent_name,
                    phase="scheduled",
                    idempotency_key=idempotency_key,
                ),
                timeout=self._timeout + 5,
            )
        except grpc.aio.AioRpcError as exc:
            raise ToolFailure(
                f"{tool.server}/{tool.name}: {exc.code().name}: {exc.details()}"[:500],
                retryable=exc.code() in _RETRYABLE,
            ) from None
        if reply.outcome != registry_pb2.CALL_OUTCOME_OK:
            outcome = registry_pb2.CallOutcome.Name(reply.outcome).removeprefix("CALL_OUTCOME_").lower()
            raise ToolFailure(
                f"{tool.server}/{tool.name} ({outcome}, call {reply.call_id}): {reply.error_message}"[:500],
                retryable=reply.outcome == registry_pb2.CALL_OUTCOME_TIMEOUT,
            )
        if reply.truncated:
            raise ToolFailure(
                f"{tool.server}/{tool.name}: the answer was cut to the registry's size cap", retryable=False
            )
        return tool_result_data(reply)


async def mean_metric(
    tools: RegistryTools, metric: str, service: str, start: datetime, end: datetime, *, step_seconds: int
) -> float | None:
    """The mean of `metric` for `service` over [start, end) through `metrics.query`; None without data.

    The arguments and the answer are the ones the agents use: `{metric, service, start, end,
    step_seconds, aggregation}` in, `{series: [{service, points: [{timestamp, value}]}]}` out.
    """
    data = await tools.call(
        METRICS,
        SCHEDULER_ROLE,
        {
            "metric": metric,
            "service": service,
            "start": utc(start),
            "end": utc(end),
            "step_seconds": step_seconds,
            "aggregation": "avg",
        },
        agent_name="health-check",
    )
    values: list[float] = []
    for series in data.get("series") or []:
        if not isinstance(series, Mapping) or series.get("service", service) != service:
            continue
        for point in series.get("points") or []:
            value = point.get("value") if isinstance(point, Mapping) else None
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                values.append(float(value))
    return sum(values) / len(values) if values else None


def utc(value: datetime) -> str:
    """A time as the tools take it: 2026-03-17T09:15:00Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
