"""Crash safety with real processes: workers and orchestrators killed with SIGKILL mid-investigation.

Every service runs as `python -m pm_<service>`; the sandbox answers each tool call 300 ms late,
so steps take seconds and a process can be killed while it holds one. The investigation is the
project's own scenario; it must still end with its known verdict, with every step applied once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
from redis.asyncio import Redis

from integration.sandbox import registry_config, until_connected
from pm.events.v1 import events_pb2
from pm_db import apply_migrations
from pm_streams import GROUP_WORKERS, STREAM_AGENT_TASKS, STREAM_INVESTIGATIONS, StreamBus
from pm_testing import ServiceProcess, StackEnv, free_port, fresh_bucket, fresh_database, stack_env, wait_for

SCENARIO = Path(__file__).resolve().parents[2] / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
TRUTH = json.loads((SCENARIO / "ground_truth.json").read_text())
RECLAIM_MS = 2000


@dataclass
class Cluster:
    env: StackEnv
    tmp: Path
    db: asyncpg.Connection
    bus: StreamBus
    redis: Redis
    base: dict[str, str]
    processes: list[ServiceProcess] = field(default_factory=list)

    async def start(self, service: str, name: str, **extra: str) -> ServiceProcess:
        environ = {**self.base, "GRPC_LISTEN": f"127.0.0.1:{free_port()}", "METRICS_LISTEN": "127.0.0.1:0", **extra}
        process = ServiceProcess(service, environ, self.tmp / f"{name}.log")
        self.processes.append(process)
        await process.start()
        return process


@pytest.fixture()
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    env = stack_env()
    config = tmp_path / "servers.yaml"
    config.write_text(registry_config(SCENARIO, delay_ms=300))
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            registry_port = free_port()
            base = env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}")
            base |= {"STEP_RECLAIM_IDLE_MS": str(RECLAIM_MS), "MESSAGE_RECLAIM_IDLE_MS": str(RECLAIM_MS)}
            db = await asyncpg.connect(dsn)
            bus = StreamBus(env.redis_url, namespace=base["STREAM_NAMESPACE"])
            await bus.connect()
            redis = Redis.from_url(env.redis_url)
            cluster = Cluster(env, tmp_path, db, bus, redis, base)
            try:
                registry = await cluster.start(
                    "registry", "registry", GRPC_LISTEN=f"127.0.0.1:{registry_port}", MCP_SERVERS_FILE=str(config)
                )
                async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
                    await until_connected(channel)
                yield cluster
            finally:
                for process in reversed(cluster.processes):
                    await process.kill()
                await bus.close()
                await redis.aclose()
                await db.close()


async def _submit(cluster: Cluster) -> str:
    investigation_id = str(uuid.uuid4())
    await cluster.db.execute(
        "INSERT INTO investigations (id, ticket_id, requested_by) VALUES ($1::uuid, $2, 'key:test')",
        investigation_id,
        f"PAY-{investigation_id[:8]}",
    )
    message = events_pb2.InvestigationRequested(event_id=str(uuid.uuid4()), investigation_id=investigation_id)
    await cluster.bus.publish(STREAM_INVESTIGATIONS, message, message_id=message.event_id)
    return investigation_id


async def _until(cluster: Cluster, investigation_id: str, query: str, *, timeout: float, what: str) -> None:
    async def reached() -> bool:
        return bool(await cluster.db.fetchval(query, investigation_id))

    await wait_for(reached, timeout=timeout, interval=0.1, what=what)


async def _finished(cluster: Cluster, investigation_id: str, timeout: float = 180) -> asyncpg.Record:
    await _until(
        cluster,
        investigation_id,
        "SELECT status IN ('completed', 'failed', 'cancelled') FROM investigations WHERE id = $1::uuid",
        timeout=timeout,
        what="the investigation to finish",
    )
    row = await cluster.db.fetchrow("SELECT * FROM investigations WHERE id = $1::uuid", investigation_id)
    logs = "\n".join(p.log_tail(1500) for p in cluster.processes)
    assert row["status"] == "completed", f"{row['status']}: {row['error']}\n{logs}"
    assert row["verdict"] == "ROOT_CAUSE"
    report = await cluster.db.fetchrow(
        "SELECT culprit_change FROM reports WHERE investigation_id = $1::uuid", investigation_id
    )
    culprit = (
        json.loads(report["culprit_change"]) if isinstance(report["culprit_change"], str) else report["culprit_change"]
    )
    assert culprit["ref"] == TRUTH["root_cause_commit"]
    return row


async def _applied_once(cluster: Cluster, investigation_id: str) -> None:
    """Each step was applied once: one succeeded step per role, one agent run per step, one report."""
    rows = await cluster.db.fetch(
        "SELECT phase, agent_role, status FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
    )
    assert sorted((r["phase"], r["agent_role"]) for r in rows) == sorted(
        [("triage", "triage"), ("hypothesize", "hypothesize"), ("verify", "verify"), ("recommend", "recommend")]
        + [("gather", f"gather.{p}") for p in ("changes", "context", "logs", "metrics", "traces")]
    )
    assert {r["status"] for r in rows} == {"succeeded"}
    runs = await cluster.db.fetchval(
        "SELECT count(*) FROM agent_runs WHERE investigation_id = $1::uuid", investigation_id
    )
    assert runs == len(rows)
    assert (
        await cluster.db.fetchval("SELECT count(*) FROM reports WHERE investigation_id = $1::uuid", investigation_id)
        == 1
    )
    sequences = [
        r["sequence"]
        for r in await cluster.db.fetch(
            "SELECT sequence FROM investigation_events WHERE investigation_id = $1::uuid ORDER BY sequence",
            investigation_id,
        )
    ]
    assert sequences == list(range(1, len(sequences) + 1))


async def _pending_for(cluster: Cluster, consumer: str) -> int:
    stream = cluster.bus.name(STREAM_AGENT_TASKS)
    try:
        entries = await cluster.redis.xpending_range(
            stream, GROUP_WORKERS, min="-", max="+", count=100, consumername=consumer
        )
    except Exception:  # noqa: BLE001 - the group may not exist yet
        return 0
    return len(entries)


async def test_a_worker_killed_mid_step_is_replaced_by_another(cluster: Cluster) -> None:
    await cluster.start("orchestrator", "orchestrator")
    doomed = await cluster.start("worker", "worker-a", WORKER_ID="worker-a")
    await cluster.start("worker", "worker-b", WORKER_ID="worker-b")
    investigation_id = await _submit(cluster)

    async def holds_a_step() -> bool:
        return await _pending_for(cluster, "worker-a") > 0

    await wait_for(holds_a_step, timeout=60, interval=0.05, what="worker-a holding a step")
    await doomed.kill()
    await _finished(cluster, investigation_id)
    await _applied_once(cluster, investigation_id)
    # Every step after the kill was finished by the survivor, including the one worker-a held.
    workers = {r["worker_id"] for r in await cluster.db.fetch(
        "SELECT worker_id FROM agent_runs WHERE investigation_id = $1::uuid", investigation_id
    )}  # fmt: skip
    assert "worker-b" in workers
    assert await _pending_for(cluster, "worker-a") == 0


async def test_a_restarted_orchestrator_continues_from_the_last_committed_state(cluster: Cluster) -> None:
    orchestrator = await cluster.start("orchestrator", "orchestrator-1")
    await cluster.start("worker", "worker")
    investigation_id = await _submit(cluster)
    await _until(
        cluster,
        investigation_id,
        "SELECT count(*) > 0 FROM investigation_steps WHERE investigation_id = $1::uuid AND phase = 'gather'",
        timeout=60,
        what="the gather phase",
    )
    await orchestrator.kill()
    # Results keep arriving while no orchestrator runs; nothing is lost.
    await asyncio.sleep(3)
    await cluster.start("orchestrator", "orchestrator-2")
    await _finished(cluster, investigation_id)
    await _applied_once(cluster, investigation_id)


async def test_two_orchestrators_apply_every_result_once(cluster: Cluster) -> None:
    await cluster.start("orchestrator", "orchestrator-1")
    await cluster.start("orchestrator", "orchestrator-2")
    await cluster.start("worker", "worker-1")
    await cluster.start("worker", "worker-2")
    first, second = await _submit(cluster), await _submit(cluster)
    for investigation_id in (first, second):
        await _finished(cluster, investigation_id)
        await _applied_once(cluster, investigation_id)
