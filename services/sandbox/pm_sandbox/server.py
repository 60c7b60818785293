"""The MCP server: one tool per query of an incident snapshot, over stdio or streamable HTTP.

Each tool is an `Incident` query method registered as it is: its keyword arguments, their types
and defaults, and its docstring are the tool's input schema and description. The write tools
(`Publications`) and the code tools (`Repository`) are registered the same way when asked for.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from pm_sandbox.data import Incident, QueryError
from pm_sandbox.repository import Repository

# Each tool and the capability it provides (docs/registry.md): what a registry servers file maps.
TOOL_CAPABILITIES = {
    "get_alert": "alerts.get",
    "search_logs": "logs.search",
    "query_metrics": "metrics.query",
    "search_traces": "traces.search",
    "log_patterns": "logs.patterns",
    "list_deploys": "changes.deploys",
    "list_commits": "changes.commits",
    "get_commit": "changes.diff",
    "flag_changes": "flags.changes",
    "get_ticket": "tickets.get",
    "search_messages": "comms.search",
}
TOOL_NAMES = tuple(TOOL_CAPABILITIES)
# Write tools, offered only when the server is given a file to publish into (`--published`):
# what the delivery phase calls to comment on a ticket and post to a chat channel. Their
# arguments are named as the Atlassian and Slack MCP servers name them.
WRITE_TOOL_CAPABILITIES = {
    "add_comment": "publish.ticket_comment",
    "post_message": "publish.chat_message",
}
# Read-only code tools, offered only when the server is given a repository (`--repository`):
# what onboarding walks to detect a repository's languages, build systems and services.
CODE_TOOL_CAPABILITIES = {
    "list_files": "code.tree",
    "get_file_contents": "code.read",
}


class Publications:
    """Appends every write-tool call to a JSON-lines file (what a test or a person inspects)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, tool: str, arguments: dict[str, str]) -> dict[str, Any]:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"tool": tool, "arguments": arguments}, sort_keys=True) + "\n")
        return {"ok": True, "published": tool}

    def add_comment(self, *, issue_key: str, comment: str) -> dict[str, Any]:
        """Add a comment to a ticket."""
        if not issue_key or not comment:
            raise QueryError("issue_key and comment are required")
        return self._append("add_comment", {"issue_key": issue_key, "comment": comment})

    def post_message(self, *, channel_id: str, text: str) -> dict[str, Any]:
        """Post a message to a chat channel."""
        if not channel_id or not text:
            raise QueryError("channel_id and text are required")
        return self._append("post_message", {"channel_id": channel_id, "text": text})


def _as_tool(query: Callable[..., dict[str, Any]], delay_seconds: float) -> Callable[..., Any]:
    """`query` as an async tool: answers after `delay_seconds` (a slow backend, for fault tests),
    with QueryError reported to the client as a tool error naming the problem."""

    @functools.wraps(query)
    async def tool(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if delay_seconds > 0:
            await asyncio.sleep(delay_seconds)
        try:
            return query(*args, **kwargs)
        except QueryError as exc:
            raise ToolError(str(exc)) from None

    return tool


def build_server(
    incident: Incident,
    *,
    delay_seconds: float = 0.0,
    published: Path | None = None,
    repository: Repository | None = None,
) -> MCPServer[Any]:
    """An MCP server whose tools answer from `incident` (each after `delay_seconds`); with
    `published`, also the write tools, which append to that file; with `repository`, also the
    read-only code tools over that tree."""
    server: MCPServer[Any] = MCPServer(
        name="pm-sandbox",
        instructions=f"Observability, change and ticket data of incident snapshot {incident.name!r}.",
        version="0.1.0",
    )
    for name in TOOL_NAMES:
        server.tool(name=name)(_as_tool(getattr(incident, name), delay_seconds))
    if published is not None:
        publications = Publications(published)
        for name in WRITE_TOOL_CAPABILITIES:
            server.tool(name=name)(_as_tool(getattr(publications, name), delay_seconds))
    if repository is not None:
        for name in CODE_TOOL_CAPABILITIES:
            server.tool(name=name)(_as_tool(getattr(repository, name), delay_seconds))
    return server


def http_app(server: MCPServer[Any], transport: str, access_key: tuple[str, str] | None = None) -> Any:
    """The server as an ASGI app for `streamable-http` (path /mcp) or `sse` (path /sse).

    With `access_key` = (header, value), every request must carry that header with that value
    (compared in constant time) or gets 401, as a real MCP server behind an access key would.
    """
    app = server.sse_app() if transport == "sse" else server.streamable_http_app()
    if access_key is None:
        return app
    header = access_key[0].lower().encode()
    expected = access_key[1].encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(header, b"")
            if not hmac.compare_digest(given, expected):
                body = json.dumps({"error": f"missing or wrong {access_key[0]} header"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded
