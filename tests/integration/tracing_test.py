"""One trace from the REST request to the delivery: every service as a real process exporting OTLP.

Registry, worker, orchestrator and ingest run as `python -m pm_<service>` behind real Envoy, each
exporting its spans over OTLP/HTTP to a receiver in this test; the worker's RECOMMEND goes to a
local server speaking the Anthropic Messages API. The client sends its own `traceparent` with the
REST request; the investigation (the project's own scenario) runs to its report and its callback.
After the processes stop (their exporters flush on shutdown), the spans of that trace must form
one tree under the ingest RPC: stream sends and receipts, engine phases and dispatches, agent
steps, LLM calls, tool calls at the worker and at the registry, the report and the delivery. The
orchestrator's and the worker's log lines carry the same trace id.

Work that no message carries (the reconciler's re-drives, deliveries) continues the trace kept on
the investigation row.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest

from integration.engine_test import SCENARIO, TRUTH
from integration.llm_engine_test import _read_the_diff, _submit_findings
from integration.sandbox import registry_config, until_connected
from pm_db import apply_migrations, open_pool
from pm_orchestrator.delivery import Deliverer
from pm_orchestrator.engine import Engine
from pm_secrets import InMemorySecretSource
from pm_storage import S3ObjectStore
from pm_streams.outbox import carried_trace_context
from pm_testing import (
    CollectedSpan,
    OtlpCollector,
    ServiceProcess,
    free_port,
    fresh_bucket,
    fresh_database,
    running_edge,
    running_fake_llm,
    running_otlp_collector,
    stack_env,
    wait_for,
)

API_KEY = "tracing-test-key-0001"
MODEL = "claude-sonnet-5-5"
ROOT = Path(__file__).resolve().parents[2]
AGENT_STEPS = {
    ("triage", "triage"),
    ("gather", "gather.logs"),
    ("gather", "gather.metrics"),
    ("gather", "gather.traces"),
    ("gather", "gather.changes"),
    ("gather", "gather.context"),
    ("hypothesize", "hypothesize"),
    ("verify", "verify"),
    ("recommend", "recommend"),
}
PHASES = {"triage", "gather", "hypothesize", "verify", "recommend", "report", "deliver"}


@dataclass
class Run:
    """What one investigation left behind once every process has stopped."""

    trace_id: str
    client_span_id: str
    investigation_id: str
    collector: OtlpCollector
    logs: dict[str, Path]
    db: asyncpg.Connection

    def spans(self) -> list[CollectedSpan]:
        return [s for s in self.collector.spans() if s.trace_id == self.trace_id]


def _named(spans: Iterable[CollectedSpan], name: str, service: str) -> list[CollectedSpan]:
    return [s for s in spans if s.name == name and s.service == service]


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue  # a line some library printed itself
    return lines


@pytest.fixture()
async def run(tmp_path: Path) -> AsyncIterator[Run]:
    env = stack_env()
    config = tmp_path / "servers.yaml"
    config.write_text(registry_config(SCENARIO))
    trace_id, client_span_id = secrets.token_hex(16), secrets.token_hex(8)
    with running_otlp_collector() as collector, fresh_bucket(env) as bucket:
        async with running_fake_llm() as llm, fresh_database(env) as dsn, AsyncExitStack() as stack:
            llm.anthropic(_read_the_diff, _submit_findings)
            await apply_migrations(dsn)
            db = await asyncpg.connect(dsn)
            stack.push_async_callback(db.close)
            registry_port, ingest_port, orchestrator_port, metrics_port = (free_port() for _ in range(4))
            base = {
                **env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}"),
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                "LOG_LEVEL": "info",
                "API_KEYS": API_KEY,
                "OUTBOX_POLL_SECONDS": "0.2",
                "METRICS_LISTEN": "127.0.0.1:0",
            }
            services = {
                "registry": {"GRPC_LISTEN": f"127.0.0.1:{registry_port}", "MCP_SERVERS_FILE": str(config)},
                "worker": {
                    "GRPC_LISTEN": f"127.0.0.1:{free_port()}",
                    "ANTHROPIC_API_KEY": "test-key-for-the-fake",
                    "ANTHROPIC_BASE_URL": llm.anthropic_base_url,
                    "LLM_MODEL_BALANCED": MODEL,
                    # The scripted model answers RECOMMEND only: the other roles stay the rules'.
                    "LLM_MODE_ROLES": '{"balanced": {"recommend": "balanced"}}',
                },
                "orchestrator": {"GRPC_LISTEN": f"127.0.0.1:{orchestrator_port}"},
                "ingest": {"GRPC_LISTEN": f"127.0.0.1:{ingest_port}", "METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
            }
            logs = {name: tmp_path / f"{name}.log" for name in services}
            processes: list[ServiceProcess] = []
            try:
                for name, extra in services.items():
                    process = ServiceProcess(name, {**base, **extra}, logs[name])
                    processes.append(process)
                    await process.start()
                    if name == "registry":
                        async with grpc.aio.insecure_channel(f"127.0.0.1:{registry_port}") as channel:
                            await until_connected(channel)
                async with (
                    running_edge(
                        env.envoy_bin,
                        ROOT,
                        tmp_path,
                        ingest=(ingest_port, metrics_port),
                        orchestrator=(orchestrator_port, 9),
                    ) as edge,
                    httpx.AsyncClient(base_url=edge.base_url, timeout=15) as client,
                ):
                    reply = await client.post(
                        "/api/v1/investigate",
                        json={"ticket_id": "INC-4812", "callback_url": f"{collector.endpoint}/callback"},
                        headers={"x-api-key": API_KEY, "traceparent": f"00-{trace_id}-{client_span_id}-01"},
                    )
                    assert reply.status_code == 202, reply.text
                    investigation_id = reply.json()["investigation_id"]

                    async def delivered() -> bool:
                        status = await db.fetchval(
                            "SELECT status FROM deliveries WHERE investigation_id = $1::uuid", investigation_id
                        )
                        if status == "failed":
                            raise AssertionError("the callback delivery failed")
                        return bool(status == "delivered")

                    await wait_for(delivered, timeout=180, interval=0.2, what="the investigation's delivery")
                # A clean stop flushes every process's spans to the receiver.
                for process in reversed(processes):
                    assert await process.stop() == 0, process.log_tail()
            finally:
                for process in processes:
                    await process.kill()
            row = await db.fetchrow("SELECT status, verdict FROM investigations WHERE id = $1::uuid", investigation_id)
            assert (row["status"], row["verdict"]) == ("completed", "ROOT_CAUSE")
            yield Run(trace_id, client_span_id, investigation_id, collector, logs, db)


async def test_one_trace_runs_from_the_rest_request_through_every_service_to_the_delivery(run: Run) -> None:
    _one_tree_under_the_rest_request(run)
    _agent_steps_llm_calls_and_tool_calls(run)
    _report_delivery_and_log_lines(run)


def _one_tree_under_the_rest_request(run: Run) -> None:
    spans = run.spans()
    # Whatever names the investigation belongs to the request's trace.
    strays = [
        (s.service, s.name, s.trace_id)
        for s in run.collector.spans()
        if s.attributes.get("pm.investigation_id") == run.investigation_id and s.trace_id != run.trace_id
    ]
    assert strays == []
    # One tree: the only span whose parent was not exported is the ingest RPC, child of the client's.
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert [(r.service, r.name, r.kind, r.parent_span_id) for r in roots] == [
        ("pm-ingest", "/pm.ingest.v1.IngestService/Investigate", "SPAN_KIND_SERVER", run.client_span_id)
    ]
    assert len(ids) == len(spans)
    # Every hop of every stream: sent, then processed by the next service. Outbox rows go out
    # through whichever relay claims them first (ingest's and the orchestrator's share the table).
    relays = ("pm-ingest", "pm-orchestrator")
    for stream, producers, consumer, count in (
        ("pm.investigations", relays, "pm-orchestrator", 1),
        ("pm.agent.tasks", relays, "pm-worker", len(AGENT_STEPS)),
        ("pm.agent.results", ("pm-worker",), "pm-orchestrator", len(AGENT_STEPS)),
    ):
        sent = [s for producer in producers for s in _named(spans, f"send {stream}", producer)]
        processed = _named(spans, f"process {stream}", consumer)
        assert (len(sent), len(processed)) == (count, count), stream
        assert {p.parent_span_id for p in processed} == {s.span_id for s in sent}, stream
        assert {s.kind for s in sent} | {p.kind for p in processed} == {"SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"}
    # The engine entered every phase and dispatched every step.
    phases = _named(spans, "engine.phase", "pm-orchestrator")
    assert {s.attributes["pm.phase"] for s in phases} == PHASES
    dispatches = _named(spans, "engine.dispatch", "pm-orchestrator")
    assert {(s.attributes["pm.phase"], s.attributes["pm.agent"]) for s in dispatches} == AGENT_STEPS
    # Each dispatched task was sent from its dispatch span.
    tasks = [s for s in spans if s.name == "send pm.agent.tasks"]
    assert {t.parent_span_id for t in tasks} == {d.span_id for d in dispatches}


def _agent_steps_llm_calls_and_tool_calls(run: Run) -> None:
    spans = run.spans()
    by_id = {s.span_id: s for s in spans}
    steps = _named(spans, "agent.step", "pm-worker")
    assert {(s.attributes["pm.phase"], s.attributes["pm.agent"]) for s in steps} == AGENT_STEPS
    assert {s.attributes["pm.investigation_id"] for s in steps} == {run.investigation_id}
    assert all(s.attributes["pm.attempt"] == 1 for s in steps)
    reasoners = {s.attributes["pm.agent"]: (s.attributes["pm.reasoner"], s.attributes["pm.model"]) for s in steps}
    assert reasoners.pop("recommend") == ("llm", MODEL)
    assert set(reasoners.values()) == {("rule", "none")}
    # The LLM's two turns, with their tokens; the primary provider answered both.
    calls = sorted(_named(spans, "llm.call", "pm-worker"), key=lambda s: s.attributes["pm.llm.turn"])
    assert [
        (
            c.attributes["gen_ai.request.model"],
            c.attributes["gen_ai.usage.input_tokens"],
            c.attributes["gen_ai.usage.output_tokens"],
            c.attributes["gen_ai.usage.cache_read.input_tokens"],
            c.attributes["pm.llm.fallback"],
        )
        for c in calls
    ] == [(MODEL, 3000, 60, 0, False), (MODEL, 500, 400, 2800, False)]
    recommend = next(s for s in steps if s.attributes["pm.agent"] == "recommend")
    assert all(_ancestors(by_id, c)[:1] == [recommend] for c in calls)
    # Tool calls: the worker's span, its gRPC client span, the registry's server span.
    tool_calls = _named(spans, "tool.call", "pm-worker")
    assert tool_calls
    assert {t.attributes["pm.tool.server"] for t in tool_calls} == {"sandbox"}
    assert {t.attributes["pm.tool.status"] for t in tool_calls} == {"ok"}
    served = _named(spans, "/pm.registry.v1.RegistryService/CallTool", "pm-registry")
    assert len(served) == len(tool_calls)
    for server_span in served:
        client_span = by_id[server_span.parent_span_id]
        tool_call = by_id[client_span.parent_span_id]
        assert (client_span.service, client_span.kind, tool_call.name) == ("pm-worker", "SPAN_KIND_CLIENT", "tool.call")
        assert server_span.kind == "SPAN_KIND_SERVER"
        for key in ("pm.tool.server", "pm.tool.name", "pm.tool.status"):
            assert server_span.attributes[key] == tool_call.attributes[key]
        assert _ancestors(by_id, tool_call), "a tool call outside any agent step"
    assert any(t.attributes["pm.tool.name"] == "get_commit" for t in tool_calls)
    # Tool arguments never reach a span (the LLM asked for the culprit's diff by its sha).
    assert not [s.name for s in spans if TRUTH["root_cause_commit"] in json.dumps(s.attributes, default=str)]


def _report_delivery_and_log_lines(run: Run) -> None:
    spans = run.spans()
    (report,) = _named(spans, "engine.report", "pm-orchestrator")
    assert report.attributes["pm.verdict"] == "ROOT_CAUSE"
    (delivery,) = _named(spans, "delivery.send", "pm-orchestrator")
    assert (delivery.attributes["pm.delivery.target"], delivery.attributes["pm.delivery.outcome"]) == (
        "callback",
        "delivered",
    )
    # The callback's receiver gets the trace too.
    (callback,) = run.collector.received("/callback")
    assert callback.headers["traceparent"].split("-")[1:3] == [run.trace_id, delivery.span_id]
    # Log lines written inside spans carry the trace and the investigation.
    for service, message in (("orchestrator", "phase triage started"), ("worker", "step triage STEP_STATUS_SUCCEEDED")):
        lines = [line for line in _log_lines(run.logs[service]) if line.get("message") == message]
        assert lines, f"no {message!r} line in the {service} log"
        assert {(line.get("trace_id"), line.get("investigation_id")) for line in lines} == {
            (run.trace_id, run.investigation_id)
        }, service
        span_ids = {s.span_id for s in spans if s.service == f"pm-{service}"}
        assert {line["span_id"] for line in lines} <= span_ids


def _ancestors(by_id: dict[str, CollectedSpan], span: CollectedSpan) -> list[CollectedSpan]:
    """The agent.step spans above `span`, nearest first."""
    found = []
    current = by_id.get(span.parent_span_id)
    while current is not None:
        if current.name == "agent.step":
            found.append(current)
        current = by_id.get(current.parent_span_id)
    return found


async def test_redriven_work_and_deliveries_continue_the_trace_kept_on_the_investigation() -> None:
    """After Redis lost the messages (or the orchestrator restarted), the reconciler's re-announced
    request and step, and a delivery, carry the trace the investigation row keeps."""
    env = stack_env()
    trace_id = secrets.token_hex(16)
    kept = json.dumps({"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    queued, running, ended, step = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with running_otlp_collector() as receiver, fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            async with open_pool(dsn, max_size=4) as pool:
                await pool.execute(
                    "INSERT INTO investigations (id, ticket_id, status, started_at, completed_at, created_at,"
                    " trace_context) VALUES"
                    " ($1, 'TR-1', 'queued', NULL, NULL, now() - interval '1 hour', $4::jsonb),"
                    " ($2, 'TR-2', 'running', now(), NULL, now() - interval '1 hour', $4::jsonb),"
                    " ($3, 'TR-3', 'completed', now(), now(), now() - interval '1 hour', $4::jsonb)",
                    queued,
                    running,
                    ended,
                    kept,
                )
                await pool.execute(
                    "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, status, task_id,"
                    " dispatched_at) VALUES ($1, $2, 'triage', 'triage', 'dispatched', 't-1',"
                    " now() - interval '1 hour')",
                    step,
                    running,
                )
                await pool.execute(
                    "INSERT INTO deliveries (id, investigation_id, target, target_ref) VALUES ($1, $2, 'callback', $3)",
                    uuid.uuid4(),
                    ended,
                    f"{receiver.endpoint}/callback",
                )
                store = S3ObjectStore(
                    bucket, endpoint_url=env.s3_endpoint, access_key_id="test", secret_access_key="test"
                )
                assert await Engine(pool, store).reconcile(stale_seconds=60) == 2
                rows = await pool.fetch("SELECT message_type, payload FROM outbox ORDER BY message_type")
                async with httpx.AsyncClient(timeout=10) as client:
                    assert await Deliverer(pool, InMemorySecretSource({})).send_due(client) == 1
        announced = {r["message_type"]: carried_trace_context(r["message_type"], bytes(r["payload"])) for r in rows}
        assert set(announced) == {"pm.events.v1.AgentTask", "pm.events.v1.InvestigationRequested"}
        for message_type, context in announced.items():
            assert context["traceparent"].split("-")[1] == trace_id, message_type
        (callback,) = receiver.received("/callback")
        assert callback.headers["traceparent"].split("-")[1] == trace_id
