"""The registry against real MCP sessions with the sandbox server: streamable HTTP, SSE and stdio.

The registry runs in-process on a real gRPC socket with the real PostgreSQL (mcp_tool_calls) and
the real Vault-compatible server (the MCP access key); the sandbox runs as separate processes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2

from integration.sandbox import CHILD_PYTHONPATH, SandboxProcess, running_sandbox
from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_db import apply_migrations
from pm_grpc import HTTP_BODY_KEY
from pm_registry.app import SPEC
from pm_sandbox.fixture import COMMITS, write_snapshot
from pm_sandbox.server import TOOL_CAPABILITIES
from pm_secrets import VaultSecretSource
from pm_testing import free_port, fresh_database, running_service, stack_env, wait_for

ACCESS_HEADER = "X-MCP-Access-Key"
ACCESS_KEY = "mcp-test-key-0123456789"
LEAKED_TOKEN = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"

TOOLS = {tool: [capability] for tool, capability in TOOL_CAPABILITIES.items()}
ALL_READ = sorted({c for caps in TOOLS.values() for c in caps})


def _tools_yaml() -> str:
    return "".join(f"      {name}: {{capabilities: {json.dumps(caps)}}}\n" for name, caps in TOOLS.items())


def _config(http: SandboxProcess, sse: SandboxProcess, data: Path) -> str:
    tools = _tools_yaml()
    return f"""
servers:
  - name: sandbox
    transport: streamable_http
    url: {http.url}
    access_key_header: {ACCESS_HEADER}
    timeout_seconds: 5
    retries: 1
    breaker: {{failures: 2, reset_seconds: 1}}
    tools:
{tools}  - name: sandbox-sse
    transport: sse
    url: {sse.url}
    timeout_seconds: 5
    tools:
{tools}  - name: sandbox-stdio
    transport: stdio
    command: {sys.executable}
    args: [-m, pm_sandbox, --data, "{data}"]
    env: {{PYTHONPATH: "{CHILD_PYTHONPATH}"}}
    timeout_seconds: 10
    tools:
{tools}  - name: no-key
    transport: streamable_http
    url: {http.url}
    tools:
{tools}  - name: missing-binary
    transport: stdio
    command: /nonexistent/pm-mcp-server
roles:
  investigator: {json.dumps(ALL_READ)}
  gather.logs: [logs.search, logs.patterns]
"""


@dataclass
class Stack:
    stub: Any
    db: asyncpg.Connection
    http: SandboxProcess
    data: Path
    # What the registry logged while starting.
    startup_log: str
    metrics_url: str


def _snapshot(root: Path) -> Path:
    """The fixture snapshot plus one log line that leaks a token, for the redaction checks."""
    write_snapshot(root)
    leak = {
        "timestamp": "2026-06-18T14:05:30Z",
        "service": "cart",
        "severity_text": "ERROR",
        "msg": f"retrying with Authorization: Bearer {LEAKED_TOKEN}",
        "trace_id": "t9",
    }
    # A chatty service on the day before, for the size cap.
    noise = [
        {"timestamp": f"2026-06-17T10:{i // 60:02d}:{i % 60:02d}Z", "service": "noise", "severity_text": "INFO",
         "msg": f"background job {i} finished in {i * 7 % 300} ms", "trace_id": f"n{i}"}
        for i in range(100)
    ]  # fmt: skip
    with (root / "data" / "logs.ndjson").open("a") as logs:
        logs.writelines(json.dumps(record) + "\n" for record in [leak, *noise])
    return root


@pytest.fixture()
async def stack(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> AsyncIterator[Stack]:
    env = stack_env()
    data = _snapshot(tmp_path / "case")
    async with (
        fresh_database(env) as dsn,
        running_sandbox(
            data, "streamable-http", access_key_header=ACCESS_HEADER, environ={"SANDBOX_ACCESS_KEY": ACCESS_KEY}
        ) as http,
        running_sandbox(data, "sse") as sse,
    ):
        await apply_migrations(dsn)
        environ = env.service_environ(database_url=dsn)
        # The access key lives in Vault only (not in the environment the registry gets).
        vault = VaultSecretSource(env.vault_addr, env.vault_token, prefix=environ["VAULT_PATH_PREFIX"])
        await vault.put("mcp-access-key", ACCESS_KEY)
        config = tmp_path / "mcp-servers.yaml"
        config.write_text(_config(http, sse, data))
        metrics_port = free_port()
        environ |= {
            "MCP_SERVERS_FILE": str(config),
            "MCP_RESULT_MAX_CHARS": "2000",
            "LOG_LEVEL": "info",
            "METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        }
        db = await asyncpg.connect(dsn)
        try:
            async with running_service(SPEC, environ) as channel:
                stub = registry_pb2_grpc.RegistryServiceStub(channel)
                await _until_connected(stub, {"sandbox", "sandbox-sse", "sandbox-stdio"})
                yield Stack(stub, db, http, data, capfd.readouterr().err, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            await db.close()


async def _servers(stub: Any) -> dict[str, Any]:
    reply = await stub.ListServers(registry_pb2.ListServersRequest(), timeout=5)
    return {s.name: s for s in reply.servers}


async def _until_connected(stub: Any, names: set[str], timeout: float = 30) -> None:
    async def connected() -> bool:
        servers = await _servers(stub)
        return all(servers[n].tool_count > 0 for n in names)

    await wait_for(connected, timeout=timeout, what=f"MCP sessions to {', '.join(sorted(names))}")


async def _call(
    stub: Any, server: str, tool: str, role: str = "investigator", timeout_ms: int = 0, **arguments: Any
) -> Any:
    args = struct_pb2.Struct()
    args.update(arguments)
    request = registry_pb2.CallToolRequest(
        server=server, tool=tool, arguments=args, agent_role=role, agent_name="test", timeout_ms=timeout_ms
    )
    return await stub.CallTool(request, timeout=20)


def _json(reply: Any) -> dict[str, Any]:
    if reply.HasField("structured_content"):
        return dict(json_format.MessageToDict(reply.structured_content))
    return dict(json.loads(reply.content[0].text))


def _error_body(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    trailers = dict(err.trailing_metadata() or ())
    return dict(json.loads(trailers[HTTP_BODY_KEY]))


async def test_catalog_capabilities_and_server_health(stack: Stack) -> None:
    servers = await _servers(stack.stub)
    for name in ("sandbox", "sandbox-sse", "sandbox-stdio"):
        assert servers[name].health == registry_pb2.SERVER_HEALTH_HEALTHY, name
        assert servers[name].circuit_state == registry_pb2.CIRCUIT_STATE_CLOSED
        assert servers[name].tool_count == len(TOOLS)
    assert servers["sandbox-stdio"].transport == registry_pb2.TRANSPORT_STDIO
    assert servers["sandbox-sse"].transport == registry_pb2.TRANSPORT_SSE
    # A server that cannot start is skipped and reported, and the registry serves the rest.
    assert servers["missing-binary"].health == registry_pb2.SERVER_HEALTH_UNHEALTHY
    assert servers["missing-binary"].last_error
    assert stack.startup_log.count("mcp server missing-binary skipped:") == 1

    listed = await stack.stub.ListTools(registry_pb2.ListToolsRequest(server="sandbox"), timeout=5)
    by_name = {t.name: t for t in listed.tools}
    assert set(by_name) == set(TOOLS)
    logs = by_name["search_logs"]
    assert list(logs.capabilities) == ["logs.search"]
    assert logs.access == registry_pb2.TOOL_ACCESS_READ
    schema = json_format.MessageToDict(logs.input_schema)
    assert {"service", "min_severity", "start", "end", "limit", "offset"} <= set(schema["properties"])

    allowed = await stack.stub.ListTools(
        registry_pb2.ListToolsRequest(server="sandbox", agent_role="gather.logs"), timeout=5
    )
    assert {t.name for t in allowed.tools} == {"search_logs", "log_patterns"}
    by_capability = await stack.stub.ListTools(registry_pb2.ListToolsRequest(capability="changes.diff"), timeout=5)
    assert {(t.server, t.name) for t in by_capability.tools} == {
        ("sandbox", "get_commit"),
        ("sandbox-sse", "get_commit"),
        ("sandbox-stdio", "get_commit"),
    }

    health = await stack.stub.GetHealth(registry_pb2.GetHealthRequest(), timeout=5)
    assert not health.healthy
    assert (health.total_servers, health.healthy_servers) == (5, 3)


@pytest.mark.parametrize("server", ["sandbox", "sandbox-sse", "sandbox-stdio"])
async def test_every_tool_answers_with_windows_and_filters(stack: Stack, server: str) -> None:
    stub = stack.stub
    assert _json(await _call(stub, server, "get_alert"))["service"] == "checkout"

    errors = _json(await _call(stub, server, "search_logs", service="cart", min_severity="ERROR"))
    assert errors["total"] == 3
    windowed = _json(
        await _call(stub, server, "search_logs", service="cart", min_severity="ERROR", start="2026-06-18T14:06:00Z")
    )
    assert [r["severity_text"] for r in windowed["items"]] == ["FATAL"]
    page = _json(await _call(stub, server, "search_logs", service="cart", limit=2, offset=2))
    assert (page["total"], page["offset"], page["returned"]) == (4, 2, 2)
    assert _json(await _call(stub, server, "search_logs", text="POOL EXHAUSTED"))["total"] == 1

    metrics = _json(
        await _call(
            stub, server, "query_metrics", metric="error_ratio", service="cart", step_seconds=60, aggregation="max"
        )
    )
    assert [p["value"] for p in metrics["series"][0]["points"]] == [0.03, 0.6]

    traces = _json(await _call(stub, server, "search_traces", status="ERROR", min_duration_ms=860))
    assert [s["service"] for s in traces["items"]] == ["checkout"]
    patterns = _json(await _call(stub, server, "log_patterns", service="cart", limit=1))
    assert patterns["items"][0]["count"] == 5000

    deploys = _json(await _call(stub, server, "list_deploys", end="2026-06-18T14:00:00Z"))
    assert [d["service"] for d in deploys["items"]] == ["cart"]
    commits = _json(await _call(stub, server, "list_commits", path="checkout/"))
    assert [c["sha"] for c in commits["items"]] == [COMMITS[1]["sha"]]
    commit = _json(await _call(stub, server, "get_commit", sha=COMMITS[0]["sha"][:12]))
    assert "+size: 4" in commit["diff"]
    assert _json(await _call(stub, server, "flag_changes"))["total"] == 0
    assert _json(await _call(stub, server, "get_ticket", issue_key="shop-9"))["status"] == "open"
    messages = _json(await _call(stub, server, "search_messages", query="pool", channel="incidents"))
    assert messages["items"][0]["user"] == "kim"

    missing = await _call(stub, server, "get_ticket", issue_key="NOPE-1")
    assert missing.outcome == registry_pb2.CALL_OUTCOME_TOOL_ERROR
    assert "NOPE-1" in missing.error_message


async def test_every_call_is_recorded_under_the_call_id(stack: Stack) -> None:
    reply = await _call(stack.stub, "sandbox", "get_commit", sha=COMMITS[0]["sha"])
    assert reply.outcome == registry_pb2.CALL_OUTCOME_OK
    assert reply.attempts == 1
    row = await stack.db.fetchrow("SELECT * FROM mcp_tool_calls WHERE id = $1::uuid", reply.call_id)
    assert row is not None
    assert (row["server_name"], row["tool_name"], row["capability"], row["status"]) == (
        "sandbox",
        "get_commit",
        "changes.diff",
        "ok",
    )
    assert (row["agent_role"], row["agent_name"]) == ("investigator", "test")
    arguments = await stack.db.fetchval("SELECT arguments::text FROM mcp_tool_calls WHERE id = $1::uuid", reply.call_id)
    assert json.loads(arguments) == {"sha": COMMITS[0]["sha"]}
    assert len(row["result_digest"]) == 64
    assert "shrink redis pool" in row["result_excerpt"]
    assert row["result_bytes"] > 0

    # A retried request with the same idempotency key answers with the first call's record.
    args = struct_pb2.Struct()
    args.update({"issue_key": "SHOP-9"})
    request = registry_pb2.CallToolRequest(
        server="sandbox", tool="get_ticket", arguments=args, agent_role="investigator", idempotency_key="step-7-call-1"
    )
    first = await stack.stub.CallTool(request, timeout=10)
    again = await stack.stub.CallTool(request, timeout=10)
    assert again.call_id == first.call_id
    assert "SHOP-9" in again.content[0].text
    count = await stack.db.fetchval("SELECT count(*) FROM mcp_tool_calls WHERE idempotency_key = 'step-7-call-1'")
    assert count == 1


async def test_secrets_are_redacted_in_results_and_records(stack: Stack) -> None:
    reply = await _call(stack.stub, "sandbox", "search_logs", trace_id="t9")
    text = reply.content[0].text
    assert "retrying with Authorization" in text
    assert LEAKED_TOKEN not in text
    assert "[REDACTED]" in text
    assert LEAKED_TOKEN not in json.dumps(json_format.MessageToDict(reply.structured_content))

    secret_args = await _call(stack.stub, "sandbox", "search_logs", text="api_key=sk-live-0123456789abcdef")
    row = await stack.db.fetchrow(
        "SELECT arguments, result_excerpt FROM mcp_tool_calls WHERE id = $1::uuid", reply.call_id
    )
    assert LEAKED_TOKEN not in row["result_excerpt"]
    stored = await stack.db.fetchval(
        "SELECT arguments::text FROM mcp_tool_calls WHERE id = $1::uuid", secret_args.call_id
    )
    assert "sk-live-0123456789abcdef" not in stored
    assert "[REDACTED]" in stored


async def test_large_results_are_capped_with_a_marker(stack: Stack) -> None:
    reply = await _call(stack.stub, "sandbox", "search_logs", service="noise", limit=1000)
    assert reply.truncated
    assert "[TRUNCATED:" in reply.content[0].text
    assert len(reply.content[0].text) < 2200
    row = await stack.db.fetchrow(
        "SELECT truncated, result_bytes FROM mcp_tool_calls WHERE id = $1::uuid", reply.call_id
    )
    assert row["truncated"]
    assert row["result_bytes"] > 2000


async def test_bad_requests_are_refused_before_reaching_the_server(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as schema:
        await _call(stack.stub, "sandbox", "search_logs", limit="ten")
    assert schema.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in (schema.value.details() or "")
    assert "schema_error" in _error_body(schema.value)

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _call(stack.stub, "sandbox", "get_commit")
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha" in (missing.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as server:
        await _call(stack.stub, "grafana", "search_logs")
    assert server.value.code() == grpc.StatusCode.NOT_FOUND
    assert "sandbox" in _error_body(server.value)["known_servers"]

    with pytest.raises(grpc.aio.AioRpcError) as tool:
        await _call(stack.stub, "sandbox", "drop_tables")
    assert tool.value.code() == grpc.StatusCode.NOT_FOUND
    assert "search_logs" in _error_body(tool.value)["known_tools"]

    bad_id_request = registry_pb2.CallToolRequest(
        server="sandbox", tool="get_alert", agent_role="investigator", investigation_id="not-a-uuid"
    )
    with pytest.raises(grpc.aio.AioRpcError) as bad_id:
        await stack.stub.CallTool(bad_id_request, timeout=5)
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await stack.db.fetchval("SELECT count(*) FROM mcp_tool_calls") == 0


async def test_a_role_without_the_capability_is_denied_and_audited(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _call(stack.stub, "sandbox", "list_deploys", role="gather.logs")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "gather.logs" in (denied.value.details() or "")
    assert "changes.deploys" in (denied.value.details() or "")
    body = _error_body(denied.value)
    row = await stack.db.fetchrow("SELECT status, agent_role FROM mcp_tool_calls WHERE id = $1::uuid", body["call_id"])
    assert (row["status"], row["agent_role"]) == ("denied", "gather.logs")


async def test_the_access_key_from_vault_is_sent_in_the_configured_header(stack: Stack) -> None:
    # `sandbox` sends the key from Vault and is connected (the fixture waited for it); `no-key`
    # points at the same server without the header and is refused by it.
    servers = await _servers(stack.stub)
    assert servers["sandbox"].health == registry_pb2.SERVER_HEALTH_HEALTHY
    assert servers["no-key"].health == registry_pb2.SERVER_HEALTH_UNHEALTHY
    assert "401" in servers["no-key"].last_error
    assert ACCESS_KEY not in servers["no-key"].last_error


async def test_the_breaker_opens_when_the_server_dies_and_closes_when_it_returns(stack: Stack) -> None:
    assert (await _call(stack.stub, "sandbox", "get_alert")).outcome == registry_pb2.CALL_OUTCOME_OK
    await stack.http.kill()

    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await _call(stack.stub, "sandbox", "get_alert", timeout_ms=3000)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        if (await _servers(stack.stub))["sandbox"].circuit_state == registry_pb2.CIRCUIT_STATE_OPEN:
            break
    assert (await _servers(stack.stub))["sandbox"].circuit_state == registry_pb2.CIRCUIT_STATE_OPEN
    # While open, calls are refused at once without reaching the server.
    with pytest.raises(grpc.aio.AioRpcError) as fast:
        await _call(stack.stub, "sandbox", "get_alert")
    assert "circuit open" in (fast.value.details() or "")
    assert _error_body(fast.value)["circuit_state"] == "open"
    # The other transports are not affected.
    assert (await _call(stack.stub, "sandbox-stdio", "get_alert")).outcome == registry_pb2.CALL_OUTCOME_OK

    await stack.http.start()

    async def recovered() -> bool:
        try:
            reply = await _call(stack.stub, "sandbox", "get_alert", timeout_ms=3000)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.outcome == registry_pb2.CALL_OUTCOME_OK)

    await wait_for(recovered, timeout=40, what="the sandbox to be called again")
    server = (await _servers(stack.stub))["sandbox"]
    assert server.circuit_state == registry_pb2.CIRCUIT_STATE_CLOSED
    assert server.health == registry_pb2.SERVER_HEALTH_HEALTHY
    statuses = await stack.db.fetch(
        "SELECT status, count(*) FROM mcp_tool_calls WHERE server_name = 'sandbox' GROUP BY status"
    )
    assert {r["status"] for r in statuses} == {"ok", "unavailable"}


async def test_calls_and_server_state_are_exported_as_metrics(stack: Stack) -> None:
    await _call(stack.stub, "sandbox", "get_alert")
    await _call(stack.stub, "sandbox", "get_ticket", issue_key="NOPE-1")
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(stack.metrics_url)).text
    assert 'pm_mcp_tool_call_total{server="sandbox",status="ok",tool="get_alert"} 1.0' in text
    assert 'pm_mcp_tool_call_total{server="sandbox",status="tool_error",tool="get_ticket"} 1.0' in text
    assert 'pm_mcp_tool_call_duration_seconds_count{server="sandbox",tool="get_alert"} 1.0' in text
    assert 'pm_mcp_server_health{server="sandbox"} 1.0' in text
    assert 'pm_mcp_server_health{server="missing-binary"} 0.0' in text
    assert 'pm_mcp_circuit_state{server="sandbox"} 0.0' in text
