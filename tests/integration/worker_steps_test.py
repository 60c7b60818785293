"""The worker runs rule-reasoner steps from pm.agent.tasks: real Redis streams, S3, registry, sandbox.

Every phase of an investigation is published as an AgentTask the way the orchestrator will;
the worker's results carry state and output in the object store, and its tool calls are
audited under the investigation and step. Run step by step, the reasoner reaches the same
findings as in one piece.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2

from integration.sandbox import registry_config, until_connected
from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_db import apply_migrations
from pm_registry.app import SPEC as REGISTRY
from pm_sandbox.fixture import write_snapshot
from pm_storage import S3ObjectStore
from pm_streams import STREAM_AGENT_RESULTS, STREAM_AGENT_TASKS, Delivery, StreamBus
from pm_testing import free_port, fresh_bucket, fresh_database, running_service, stack_env
from pm_worker.app import SPEC as WORKER
from pm_worker.rules.reasoner import RuleReasoner
from pm_worker.rules.toolbox import RegistryToolBox


@dataclass
class Engine:
    bus: StreamBus
    results: dict[str, events_pb2.AgentResult]
    db: asyncpg.Connection
    store: S3ObjectStore
    registry_addr: str
    investigation_id: str
    metrics_url: str


@pytest.fixture()
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    env = stack_env()
    data = write_snapshot(tmp_path / "case")
    config = tmp_path / "servers.yaml"
    config.write_text(registry_config(data))
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            registry_port = free_port()
            registry_env = {
                **env.service_environ(database_url=dsn),
                "GRPC_LISTEN": f"127.0.0.1:{registry_port}",
                "MCP_SERVERS_FILE": str(config),
            }
            worker_env = env.service_environ(bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}")
            worker_env["STEP_RECLAIM_IDLE_MS"] = "5000"
            metrics_port = free_port()
            worker_env["METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
            worker_env["STEPS_PER_WORKER"] = "2"
            namespace = worker_env["STREAM_NAMESPACE"]
            db = await asyncpg.connect(dsn)
            investigation_id = str(uuid.uuid4())
            await db.execute(
                "INSERT INTO investigations (id, ticket_id, status) VALUES ($1::uuid, 'SHOP-9', 'running')",
                investigation_id,
            )
            results: dict[str, events_pb2.AgentResult] = {}

            async def collect(result: events_pb2.AgentResult, delivery: Delivery) -> None:
                results[result.task_id] = result

            bus = StreamBus(env.redis_url, namespace=namespace, polling_ms=100)
            bus.subscribe(
                STREAM_AGENT_RESULTS,
                group="test",
                consumer="test",
                message_type=events_pb2.AgentResult,
                handler=collect,
            )
            await bus.start()
            store = S3ObjectStore(bucket, endpoint_url=env.s3_endpoint, region="us-east-1",
                                  access_key_id="test", secret_access_key="test")  # fmt: skip
            try:
                async with running_service(REGISTRY, registry_env) as registry, running_service(WORKER, worker_env):
                    await until_connected(registry)
                    yield Engine(
                        bus,
                        results,
                        db,
                        store,
                        f"127.0.0.1:{registry_port}",
                        investigation_id,
                        f"http://127.0.0.1:{metrics_port}/metrics",
                    )
            finally:
                await bus.close()
                await db.close()


async def _run_step(
    engine: Engine, phase: types_pb2.Phase.ValueType, role: str, state_uris: list[str]
) -> events_pb2.AgentResult:
    step_id = str(uuid.uuid4())
    task = events_pb2.AgentTask(
        task_id=f"{engine.investigation_id}:{role}:1",
        investigation_id=engine.investigation_id,
        step_id=step_id,
        phase=phase,
        agent_role=role,
        attempt=1,
        reasoner="rule",
        input=json_format.ParseDict({"state_uris": state_uris}, struct_pb2.Struct()),
    )
    await engine.bus.publish(STREAM_AGENT_TASKS, task, message_id=task.task_id)
    return await _result(engine, task.task_id)


async def _result(engine: Engine, task_id: str, timeout: float = 60) -> events_pb2.AgentResult:
    async with asyncio.timeout(timeout):
        while task_id not in engine.results:
            await asyncio.sleep(0.1)
    return engine.results[task_id]


async def test_phases_run_as_steps_reach_the_same_findings_as_one_run(engine: Engine) -> None:
    triage = await _run_step(engine, types_pb2.PHASE_TRIAGE, "triage", [])
    assert triage.status == events_pb2.STEP_STATUS_SUCCEEDED, triage.error
    state = json_format.MessageToDict(triage.output)["state_uri"]
    gathered = await asyncio.gather(
        *(
            _run_step(engine, types_pb2.PHASE_GATHER, f"gather.{p}", [state])
            for p in ("logs", "metrics", "traces", "changes")
        )
    )
    assert all(r.status == events_pb2.STEP_STATUS_SUCCEEDED for r in gathered), [r.error for r in gathered]
    # Utilization: the worker's slots, and no step left counted as running once all answered.
    async with httpx.AsyncClient() as client:
        scraped = (await client.get(engine.metrics_url, timeout=10)).text
    assert "pm_worker_step_slots 2.0" in scraped
    assert "pm_worker_steps_running 0.0" in scraped
    states = [json_format.MessageToDict(r.output)["state_uri"] for r in gathered]
    hypothesize = await _run_step(engine, types_pb2.PHASE_HYPOTHESIZE, "hypothesize", states)
    verify = await _run_step(
        engine, types_pb2.PHASE_VERIFY, "verify", [json_format.MessageToDict(hypothesize.output)["state_uri"]]
    )
    recommend = await _run_step(
        engine, types_pb2.PHASE_RECOMMEND, "recommend", [json_format.MessageToDict(verify.output)["state_uri"]]
    )
    assert recommend.status == events_pb2.STEP_STATUS_SUCCEEDED, recommend.error
    stepwise = json_format.MessageToDict(recommend.output)

    # The same reasoner in one piece, through the same registry.
    async with grpc.aio.insecure_channel(engine.registry_addr) as channel:
        whole = await RuleReasoner(RegistryToolBox(channel, agent_role="investigator")).investigate()
    for key in ("verdict", "root_cause_commit", "first_failing_service", "blast_radius", "operational_signal"):
        assert stepwise[key] == whole[key], key
    assert [h["ref"] for h in stepwise["hypotheses"]] == [h["ref"] for h in whole["hypotheses"]]

    # Outputs and traces are in the versioned bucket; tool calls are audited under the step.
    key = recommend.output_uri.split(f"{engine.store.bucket}/", 1)[1].split("?")[0]
    stored = json.loads((await engine.store.get(key)).data)
    assert stored["verdict"] == stepwise["verdict"]
    assert triage.tool_call_ids
    rows = await engine.db.fetch(
        "SELECT DISTINCT agent_role, step_id::text FROM mcp_tool_calls WHERE investigation_id = $1::uuid",
        engine.investigation_id,
    )
    roles = {r["agent_role"] for r in rows}
    assert {"triage", "gather.logs", "gather.metrics", "gather.traces", "gather.changes", "verify"} <= roles


async def test_a_step_with_a_missing_state_fails_permanently(engine: Engine) -> None:
    result = await _run_step(engine, types_pb2.PHASE_VERIFY, "verify", ["s3://nowhere/missing.json"])
    assert result.status == events_pb2.STEP_STATUS_FAILED_PERMANENT
    assert "does not exist" in result.error
    unknown = await _run_step(engine, types_pb2.PHASE_VERIFY, "summarize", [])
    assert unknown.status == events_pb2.STEP_STATUS_FAILED_PERMANENT
    assert "unknown rule-reasoner role" in unknown.error
