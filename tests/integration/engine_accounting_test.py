"""What a step spent (tokens, cost, model) is recorded on its agent run and counted toward the
investigation's totals and its cost budget; how investigations end and how deep the queues are
reach the metrics: the engine alone, on the real PostgreSQL, S3 and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_db import apply_migrations, open_pool
from pm_errors import Conflict
from pm_orchestrator.engine import Engine
from pm_orchestrator.metrics import EngineMetrics, QueueMetrics
from pm_storage import S3ObjectStore
from pm_streams import STREAM_AGENT_RESULTS, STREAM_AGENT_TASKS, StreamBus
from pm_testing import fresh_bucket, fresh_database, stack_env, unique_name


@pytest.fixture()
async def engine() -> AsyncIterator[tuple[Engine, asyncpg.Pool, CollectorRegistry]]:
    env = stack_env()
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            store = S3ObjectStore(bucket, endpoint_url=env.s3_endpoint, access_key_id="test", secret_access_key="test")
            async with open_pool(dsn, max_size=2, application_name="accounting-test") as pool:
                registry = CollectorRegistry()
                yield Engine(pool, store, metrics=EngineMetrics(registry)), pool, registry


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return float(registry.get_sample_value(name, labels) or 0.0)


async def _running_step(pool: asyncpg.Pool, budget: str) -> tuple[uuid.UUID, str]:
    """A running investigation in TRIAGE with one dispatched step; returns (id, task id)."""
    investigation_id = uuid.uuid4()
    task_id = f"{investigation_id}:triage:triage:1:1"
    await pool.execute(
        "INSERT INTO investigations (id, ticket_id, status, phase, started_at, budget, deadline_at)"
        " VALUES ($1, 'ACC-1', 'running', 'triage', now(), $2::jsonb, now() + interval '1 hour')",
        investigation_id,
        budget,
    )
    await pool.execute(
        "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, iteration, attempt, status, task_id,"
        " reasoner, dispatched_at) VALUES ($1, $2, 'triage', 'triage', 1, 1, 'dispatched', $3, 'llm', now())",
        uuid.uuid4(),
        investigation_id,
        task_id,
    )
    return investigation_id, task_id


def _result(investigation_id: uuid.UUID, task_id: str, cost: float) -> events_pb2.AgentResult:
    return events_pb2.AgentResult(
        task_id=task_id,
        investigation_id=str(investigation_id),
        attempt=1,
        status=events_pb2.STEP_STATUS_SUCCEEDED,
        output=struct_pb2.Struct(),
        model="claude-test-model",
        usage=types_pb2.Usage(
            input_tokens=1200,
            output_tokens=300,
            cache_creation_input_tokens=900,
            cache_read_input_tokens=4000,
            cost_usd=cost,
            llm_calls=3,
        ),
    )


async def test_a_steps_usage_is_recorded_and_added_to_the_investigation(
    engine: tuple[Engine, asyncpg.Pool, CollectorRegistry],
) -> None:
    runner, pool, registry = engine
    investigation_id, task_id = await _running_step(pool, '{"max_cost_usd": 5}')
    await runner.on_result(_result(investigation_id, task_id, 0.0425), delivery=None)  # type: ignore[arg-type]
    run = await pool.fetchrow("SELECT * FROM agent_runs WHERE task_id = $1", task_id)
    assert (run["reasoner"], run["model"], run["agent_name"]) == ("llm", "claude-test-model", "llm:triage")
    assert (run["input_tokens"], run["output_tokens"], run["cache_creation_tokens"], run["cache_read_tokens"]) == (
        1200,
        300,
        900,
        4000,
    )
    assert (float(run["cost_usd"]), run["llm_calls"]) == (0.0425, 3)
    row = await pool.fetchrow("SELECT * FROM investigations WHERE id = $1", investigation_id)
    assert (row["input_tokens"], row["output_tokens"], row["cache_creation_tokens"], row["cache_read_tokens"]) == (
        1200,
        300,
        900,
        4000,
    )
    assert float(row["cost_usd"]) == 0.0425
    assert row["status"] == "running"
    # The same result again (a redelivery) is not counted twice.
    await runner.on_result(_result(investigation_id, task_id, 0.0425), delivery=None)  # type: ignore[arg-type]
    assert float(await pool.fetchval("SELECT cost_usd FROM investigations WHERE id = $1", investigation_id)) == 0.0425


async def test_spending_past_the_cost_budget_ends_in_an_inconclusive_report(
    engine: tuple[Engine, asyncpg.Pool, CollectorRegistry],
) -> None:
    runner, pool, registry = engine
    investigation_id, task_id = await _running_step(pool, '{"max_cost_usd": 0.5}')
    await runner.on_result(_result(investigation_id, task_id, 0.75), delivery=None)  # type: ignore[arg-type]
    row = await pool.fetchrow("SELECT * FROM investigations WHERE id = $1", investigation_id)
    assert (row["status"], row["verdict"]) == ("completed", "INCONCLUSIVE")
    assert "cost budget of $0.50 exhausted ($0.75)" in row["summary"]
    # Counted once the transaction committed: the step, the outcome, the verdict, the duration.
    assert _sample(registry, "pm_agent_steps_total", agent="triage", status="succeeded") == 1
    ended = {"status": "completed", "trigger_source": "api", "domain": "none"}
    assert _sample(registry, "pm_investigations_total", **ended) == 1
    assert _sample(registry, "pm_verdicts_total", verdict="INCONCLUSIVE") == 1
    assert _sample(registry, "pm_investigation_duration_seconds_count", status="completed") == 1
    assert _sample(registry, "pm_hypothesis_iterations_count") == 1


async def test_cancelling_counts_a_cancelled_investigation(
    engine: tuple[Engine, asyncpg.Pool, CollectorRegistry],
) -> None:
    runner, pool, registry = engine
    investigation_id, _ = await _running_step(pool, "{}")
    await runner.cancel(investigation_id, "wrong ticket", "key:test")
    assert _sample(registry, "pm_verdicts_total", verdict="CANCELLED") == 1
    assert _sample(registry, "pm_investigations_total", status="cancelled", trigger_source="api", domain="none") == 1
    with pytest.raises(Conflict):
        await runner.cancel(investigation_id, "again", "key:test")
    assert _sample(registry, "pm_verdicts_total", verdict="CANCELLED") == 1  # a refused cancel counts nothing


async def test_queue_depth_is_read_from_redis_per_stream_and_group() -> None:
    env = stack_env()
    namespace = unique_name("q") + ":"
    bus = StreamBus(env.redis_url, namespace=namespace)
    await bus.connect()
    redis = Redis.from_url(env.redis_url)
    try:
        stream = bus.name(STREAM_AGENT_TASKS)
        await redis.xgroup_create(stream, "workers", id="0", mkstream=True)
        for n in range(5):
            await redis.xadd(stream, {"n": str(n)})
        await redis.xreadgroup("workers", "w1", {stream: ">"}, count=2)  # two taken, not acknowledged
        registry = CollectorRegistry()
        queues = QueueMetrics(bus, [STREAM_AGENT_TASKS, STREAM_AGENT_RESULTS], registry)
        await queues.refresh()
        labels = {"stream": STREAM_AGENT_TASKS, "group": "workers"}
        assert registry.get_sample_value("pm_stream_lag", labels) == 3
        assert registry.get_sample_value("pm_stream_pending", labels) == 2
        # A stream that does not exist yet reports nothing rather than failing.
        assert registry.get_sample_value("pm_stream_lag", {"stream": STREAM_AGENT_RESULTS, "group": "workers"}) is None
    finally:
        await redis.delete(bus.name(STREAM_AGENT_TASKS))
        await redis.aclose()
        await bus.close()
