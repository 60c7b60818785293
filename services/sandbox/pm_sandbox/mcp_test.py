"""The sandbox over real MCP sessions: stdio (a subprocess) and streamable HTTP (a server process)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from pm_sandbox.fixture import write_snapshot
from pm_testing import free_port, wait_for

# The server runs as a plain `python -m pm_sandbox`: it gets this process's import path.
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

TOOLS = {
    "get_alert", "search_logs", "query_metrics", "search_traces", "log_patterns", "list_deploys",
    "list_commits", "get_commit", "flag_changes", "get_ticket", "search_messages",
}  # fmt: skip


def _payload(result: object) -> dict[str, object]:
    structured = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
    if structured:
        return dict(structured)
    text = result.content[0].text  # type: ignore[attr-defined]
    return dict(json.loads(text))


async def _exercise(session: ClientSession) -> None:
    await session.initialize()
    listed = await session.list_tools()
    assert {t.name for t in listed.tools} == TOOLS
    alert = _payload(await session.call_tool("get_alert", {}))
    assert alert["service"] == "checkout"
    logs = _payload(await session.call_tool("search_logs", {"service": "cart", "min_severity": "ERROR"}))
    assert logs["total"] == 2
    bad = await session.call_tool("get_commit", {"sha": "aaaaaaa"})
    assert bad.is_error if hasattr(bad, "is_error") else bad.isError  # type: ignore[attr-defined]


async def test_stdio_session(tmp_path: Path) -> None:
    root = write_snapshot(tmp_path / "case")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "pm_sandbox", "--data", str(root)], env=CHILD_ENV
    )
    async with stdio_client(params) as streams, ClientSession(streams[0], streams[1]) as session:
        await _exercise(session)


async def test_streamable_http_session(tmp_path: Path) -> None:
    root = write_snapshot(tmp_path / "case")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pm_sandbox", "--data", str(root), "--transport", "streamable-http", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=CHILD_ENV,
    )  # fmt: skip
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_for(listening, timeout=20, what="sandbox HTTP port")
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await _exercise(session)
    finally:
        process.terminate()
        await process.wait()
