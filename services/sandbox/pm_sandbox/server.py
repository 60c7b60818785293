"""The MCP server: one tool per query of an incident snapshot, over stdio or streamable HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from pm_sandbox.data import Incident, QueryError


def _answer(query: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return query()
    except QueryError as exc:
        raise ToolError(str(exc)) from None


def build_server(incident: Incident) -> MCPServer[Any]:
    """An MCP server whose tools answer from `incident`."""
    server: MCPServer[Any] = MCPServer(
        name="pm-sandbox",
        instructions=f"Observability, change and ticket data of incident snapshot {incident.name!r}.",
        version="0.1.0",
    )

    @server.tool()
    def get_alert() -> dict[str, Any]:
        """The alert that fired: service, metric, threshold, observed value, time, severity, summary."""
        return dict(incident.alert)

    @server.tool()
    def search_logs(
        service: str | None = None,
        text: str | None = None,
        min_severity: str | None = None,
        start: str | None = None,
        end: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Log records oldest first; filters: service, text (case-insensitive), min_severity
        (TRACE..FATAL), time window [start, end) in ISO 8601, trace_id; paged by limit/offset."""
        return _answer(
            lambda: incident.search_logs(
                service=service, text=text, min_severity=min_severity, start=start, end=end,
                trace_id=trace_id, limit=limit, offset=offset,
            )
        )  # fmt: skip

    @server.tool()
    def query_metrics(
        metric: str,
        service: str | None = None,
        start: str | None = None,
        end: str | None = None,
        step_seconds: int = 60,
        aggregation: str = "avg",
    ) -> dict[str, Any]:
        """A metric per service, aggregated (avg, max, min, sum, count) into step_seconds buckets."""
        return _answer(
            lambda: incident.query_metrics(
                metric=metric, service=service, start=start, end=end, step_seconds=step_seconds,
                aggregation=aggregation,
            )
        )  # fmt: skip

    @server.tool()
    def search_traces(
        service: str | None = None,
        status: str | None = None,
        min_duration_ms: float | None = None,
        start: str | None = None,
        end: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Spans oldest first; filters: service, status (OK/ERROR), min_duration_ms, time window, trace_id."""
        return _answer(
            lambda: incident.search_traces(
                service=service, status=status, min_duration_ms=min_duration_ms, start=start, end=end,
                trace_id=trace_id, limit=limit, offset=offset,
            )
        )  # fmt: skip

    @server.tool()
    def log_patterns(service: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Clustered log signatures with count and change against the baseline, largest first."""
        return _answer(lambda: incident.log_patterns(service=service, limit=limit))

    @server.tool()
    def list_deploys(service: str | None = None, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        """Deploys (service, version, commit sha), oldest first."""
        return _answer(lambda: incident.list_deploys(service=service, start=start, end=end))

    @server.tool()
    def list_commits(
        text: str | None = None, path: str | None = None, start: str | None = None, end: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:  # fmt: skip
        """Commits (sha, author, time, message, files) oldest first; get_commit returns the diff."""
        return _answer(lambda: incident.list_commits(text=text, path=path, start=start, end=end, limit=limit))

    @server.tool()
    def get_commit(sha: str) -> dict[str, Any]:
        """One commit with its diff, by full sha or a unique prefix of 7+ characters."""
        return _answer(lambda: incident.get_commit(sha))

    @server.tool()
    def flag_changes(service: str | None = None, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        """Feature-flag changes, oldest first."""
        return _answer(lambda: incident.flag_changes(service=service, start=start, end=end))

    @server.tool()
    def get_ticket(key: str) -> dict[str, Any]:
        """A ticket by key."""
        return _answer(lambda: incident.get_ticket(key))

    @server.tool()
    def search_messages(text: str, channel: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Chat messages containing text, oldest first."""
        return _answer(lambda: incident.search_messages(text=text, channel=channel, limit=limit))

    return server
