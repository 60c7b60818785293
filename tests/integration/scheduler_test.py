"""The scheduler and its jobs on the real stack: PostgreSQL (advisory-lock leadership, the
run records, the job's rows), Redis, the registry and a sandbox MCP server.

The sandbox serves a snapshot written relative to the test's clock: `cart`'s error ratio is 0.01
for a day and 0.4 for the last ten minutes, `checkout`'s 0.02 then 0.015; `ghost` has no data.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from e2e.edge import start_edge
from integration.sandbox import registry_config, until_connected
from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_db import apply_migrations, open_pool
from pm_orchestrator.app import SPEC as ORCHESTRATOR
from pm_orchestrator.cron import CronSchedule
from pm_orchestrator.health_check import HealthCheck, HealthCheckConfig, HealthCheckFailed
from pm_orchestrator.jobs import (
    KnowledgeLifecycle,
    PostDeployCheck,
    PostDeployConfig,
    StaleReviewConfig,
    StaleTicketReview,
)
from pm_orchestrator.jobs_tools import RegistryTools
from pm_orchestrator.scheduler import SCHEDULER_LOCK, ScheduledJob, Scheduler, SchedulerMetrics
from pm_registry.app import SPEC as REGISTRY
from pm_sandbox.fixture import write_snapshot
from pm_testing import (
    ServiceProcess,
    free_port,
    fresh_bucket,
    fresh_database,
    running_service,
    stack_env,
    wait_for,
)

API_KEY = "scheduler-test-key-0001"
AUTH = (("x-api-key", API_KEY),)
EVERY_MINUTE = CronSchedule.parse("* * * * *")


@pytest.fixture()
async def dsn() -> AsyncIterator[str]:
    async with fresh_database(stack_env()) as url:
        await apply_migrations(url)
        yield url


@pytest.fixture()
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(dsn, max_size=6) as opened:
        yield opened


def _scheduler(dsn: str, pool: asyncpg.Pool, *jobs: ScheduledJob, lock_key: int = SCHEDULER_LOCK) -> Scheduler:
    return Scheduler(
        dsn, pool, jobs, SchedulerMetrics(CollectorRegistry()), poll_seconds=0.1, grace_seconds=120, lock_key=lock_key
    )


@asynccontextmanager
async def _running(*schedulers: Scheduler) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(s.run()) for s in schedulers]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    await wait_for(condition, timeout=timeout, interval=0.05, what=what)


async def _runs(pool: asyncpg.Pool, job: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM scheduled_job_runs WHERE job = $1 ORDER BY scheduled_for", job
    )
    return rows


async def _lock_holder(pool: asyncpg.Pool) -> int | None:
    """The backend pid holding the scheduler's advisory lock in this database."""
    pid: int | None = await pool.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = $1 AND objid = $2",
        SCHEDULER_LOCK >> 32,
        SCHEDULER_LOCK & 0xFFFFFFFF,
    )
    return pid


# -- leadership -------------------------------------------------------------------------------


async def test_one_of_two_schedulers_leads_and_runs_each_occurrence_once(dsn: str, pool: asyncpg.Pool) -> None:
    calls: list[datetime] = []

    async def tick(scheduled_for: datetime) -> dict[str, Any]:
        calls.append(scheduled_for)
        return {"call": len(calls)}

    job = ScheduledJob("tick", EVERY_MINUTE, tick)
    first, second = _scheduler(dsn, pool, job), _scheduler(dsn, pool, job)
    async with _running(first, second):
        await _until(lambda: _any_run(pool, "tick", "succeeded"), "the first run")
        # The follower looks at the same occurrence only once it leads: it never runs one itself.
        assert [first.is_leader, second.is_leader].count(True) == 1
        assert await _lock_holder(pool) is not None
    runs = await _runs(pool, "tick")
    assert [r["scheduled_for"] for r in runs] == calls  # one call per occurrence, each recorded once
    assert {r["status"] for r in runs} == {"succeeded"}
    assert runs[0]["result"] == {"call": 1}
    assert not first.is_leader
    assert not second.is_leader
    # Stopping ends the sessions: the lock is free again.
    assert await _lock_holder(pool) is None


async def _any_run(pool: asyncpg.Pool, job: str, status: str) -> bool:
    return bool(
        await pool.fetchval("SELECT count(*) FROM scheduled_job_runs WHERE job = $1 AND status = $2", job, status)
    )


async def test_two_overlapping_leaders_still_run_an_occurrence_once(dsn: str, pool: asyncpg.Pool) -> None:
    # Different lock keys: both lead at once, as an old leader does until it notices its lost
    # connection. The run's unique row lets only one of them run the occurrence.
    calls: list[datetime] = []

    async def tick(scheduled_for: datetime) -> dict[str, Any]:
        calls.append(scheduled_for)
        return {}

    job = ScheduledJob("tick", EVERY_MINUTE, tick)
    first, second = _scheduler(dsn, pool, job, lock_key=1), _scheduler(dsn, pool, job, lock_key=2)
    async with _running(first, second):

        async def both_saw_it() -> bool:
            seen = first.claimed("tick")
            return seen is not None and seen == second.claimed("tick")

        await _until(both_saw_it, "both leaders claiming the same occurrence")
        assert first.is_leader
        assert second.is_leader
        await _until(lambda: _any_run(pool, "tick", "succeeded"), "the run")
    occurrences = [r["scheduled_for"] for r in await _runs(pool, "tick")]
    assert sorted(calls) == occurrences
    assert len(set(calls)) == len(calls)


async def test_leadership_moves_when_the_leaders_lock_connection_dies(dsn: str, pool: asyncpg.Pool) -> None:
    started: list[datetime] = []
    cancelled: list[datetime] = []
    never = asyncio.Event()

    async def long_job(scheduled_for: datetime) -> dict[str, Any]:
        started.append(scheduled_for)
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(scheduled_for)
            raise
        return {}

    job = ScheduledJob("long", EVERY_MINUTE, long_job)
    first, second = _scheduler(dsn, pool, job), _scheduler(dsn, pool, job)
    async with _running(first, second):
        await _until(lambda: _true(len(started) == 1), "the leader starting the job")
        leader, follower = (first, second) if first.is_leader else (second, first)
        holder = await _lock_holder(pool)
        assert holder is not None
        assert await pool.fetchval("SELECT application_name FROM pg_stat_activity WHERE pid = $1", holder) == (
            "pm-orchestrator-scheduler"
        )
        # The leader's session is killed (a network cut, a failover, an operator).
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", holder)
        await _until(lambda: _true(follower.is_leader and not leader.is_leader), "the follower taking over")
        # The old leader stopped its job; the run is recorded as failed, and not run again.
        await _until(lambda: _true(len(cancelled) == 1), "the old leader cancelling its job")
        runs = await _runs(pool, "long")
        assert runs[0]["status"] == "failed"
        assert runs[0]["error"].startswith("cancelled")
        assert started[0] == runs[0]["scheduled_for"]
        # The new leader holds the lock on a new session; the old one follows and does not lead again.
        new_holder = await _lock_holder(pool)
        assert new_holder is not None
        assert new_holder != holder
        assert not leader.is_leader
    assert len([s for s in started if s == started[0]]) == 1


async def _true(value: bool) -> bool:
    return value


# -- knowledge lifecycle ----------------------------------------------------------------------


async def test_the_knowledge_lifecycle_archives_and_downgrades_what_is_stale(dsn: str, pool: asyncpg.Pool) -> None:
    # (title, confidence, days since created/updated, days since last verified) -> expected confidence
    seeds = {
        "provisional, untouched 31 days": ("provisional", 31, 31, "archived"),
        "provisional, untouched 29 days": ("provisional", 29, 29, "provisional"),
        "provisional, old but verified 5 days ago": ("provisional", 40, 5, "provisional"),
        "active, verified 91 days ago": ("active", 100, 91, "provisional"),
        "active, verified 89 days ago": ("active", 100, 89, "active"),
        "archived long ago": ("archived", 400, 400, "archived"),
    }
    for title, (confidence, age, verified, _) in seeds.items():
        await pool.execute(
            "INSERT INTO knowledge_entries (id, service, category, title, confidence, source, created_at, updated_at,"
            " last_verified_at, archived_at) VALUES ($1, 'cart', 'known_issue', $2, $3, 'human',"
            " now() - make_interval(days => $4), now() - make_interval(days => $4), now() - make_interval(days => $5),"
            " CASE WHEN $3 = 'archived' THEN now() - make_interval(days => $4) END)",
            uuid.uuid4(),
            title,
            confidence,
            age,
            verified,
        )
    lifecycle = KnowledgeLifecycle(pool, provisional_ttl_days=30, active_verify_days=90)
    scheduler = _scheduler(dsn, pool, ScheduledJob("knowledge_lifecycle", EVERY_MINUTE, lifecycle.run))
    async with _running(scheduler):
        await _until(lambda: _any_run(pool, "knowledge_lifecycle", "succeeded"), "the lifecycle run")
    result = (await _runs(pool, "knowledge_lifecycle"))[0]["result"]
    assert (result["archived"], result["downgraded"]) == (1, 1)
    rows = {r["title"]: r for r in await pool.fetch("SELECT * FROM knowledge_entries")}
    assert {title: rows[title]["confidence"] for title in seeds} == {t: s[3] for t, s in seeds.items()}
    archived = rows["provisional, untouched 31 days"]
    assert archived["archived_at"] is not None
    assert archived["archived_at"] > datetime.now(UTC) - timedelta(minutes=5)
    # The downgraded entry starts a new provisional period: the next run leaves it alone.
    assert await lifecycle.run(datetime.now(UTC)) == {
        "archived": 0,
        "downgraded": 0,
        "provisional_ttl_days": 30,
        "active_verify_days": 90,
    }


# -- jobs through the registry and the sandbox ------------------------------------------------


def _write_snapshot(root: Path, now: datetime) -> Path:
    """The fixture snapshot with metrics relative to `now` and two tickets."""
    write_snapshot(root)
    rows = ["timestamp,service,metric,value"]
    minute = (now - timedelta(hours=26)).replace(second=0, microsecond=0)
    while minute < now + timedelta(minutes=10):
        recent = minute >= now - timedelta(minutes=10)
        stamp = minute.strftime("%Y-%m-%dT%H:%M:%SZ")
        rows.append(f"{stamp},cart,error_ratio,{0.4 if recent else 0.01}")
        rows.append(f"{stamp},checkout,error_ratio,{0.015 if recent else 0.02}")
        minute += timedelta(minutes=1)
    (root / "data" / "metrics.csv").write_text("\n".join(rows) + "\n")
    tickets = [
        {"key": "SHOP-9", "summary": "checkout failing", "status": "In Progress"},
        {"key": "SHOP-1", "summary": "old bug", "status": "Done"},
    ]
    (root / "data" / "context" / "tickets.json").write_text(json.dumps(tickets))
    return root


def _servers(data: Path, published: Path) -> str:
    """The sandbox with its write tools, the rule roles, `delivery`, and `scheduler` for the jobs' reads."""
    config = yaml.safe_load(registry_config(data, published=published))
    config["roles"]["scheduler"] = ["metrics.query", "tickets.get"]
    return str(yaml.safe_dump(config))


@dataclass
class Stack:
    dsn: str
    pool: asyncpg.Pool
    tools: RegistryTools
    registry_addr: str
    published: Path
    now: datetime

    def posts(self) -> list[dict[str, Any]]:
        if not self.published.exists():
            return []
        return [json.loads(line) for line in self.published.read_text().splitlines() if line.strip()]


@pytest.fixture()
async def stack(tmp_path: Path, dsn: str, pool: asyncpg.Pool) -> AsyncIterator[Stack]:
    now = datetime.now(UTC)
    data = _write_snapshot(tmp_path / "snapshot", now)
    published = tmp_path / "published.jsonl"
    config = tmp_path / "servers.yaml"
    config.write_text(_servers(data, published))
    port = free_port()
    environ = stack_env().service_environ(database_url=dsn) | {
        "GRPC_LISTEN": f"127.0.0.1:{port}",
        "MCP_SERVERS_FILE": str(config),
    }
    async with running_service(REGISTRY, environ) as channel:
        await until_connected(channel)
        yield Stack(dsn, pool, RegistryTools(channel, timeout_seconds=20), f"127.0.0.1:{port}", published, now)


async def _investigation(
    pool: asyncpg.Pool, ticket: str, status: str, hours_ago: float, trigger_source: str = "api"
) -> uuid.UUID:
    investigation_id = uuid.uuid4()
    ended = status in ("completed", "failed", "cancelled")
    await pool.execute(
        "INSERT INTO investigations (id, ticket_id, domain, status, trigger_source, created_at, completed_at)"
        " VALUES ($1, $2, 'shop', $3, $4, now() - make_interval(secs => $5),"
        " CASE WHEN $6 THEN now() - make_interval(secs => $5) + interval '10 minutes' END)",
        investigation_id,
        ticket,
        status,
        trigger_source,
        hours_ago * 3600,
        ended,
    )
    return investigation_id


async def test_the_stale_review_posts_one_summary_through_the_registrys_write_tool(stack: Stack) -> None:
    stuck = await _investigation(stack.pool, "SHOP-7", "running", 30)
    await _investigation(stack.pool, "SHOP-8", "queued", 2)  # young: not stale
    open_ticket = await _investigation(stack.pool, "SHOP-9", "completed", 24 * 10)
    await _investigation(stack.pool, "SHOP-1", "completed", 24 * 10)  # its ticket is Done
    await _investigation(stack.pool, "SHOP-404", "completed", 24 * 10)  # no such ticket: unknown
    await _investigation(stack.pool, "SHOP-3", "completed", 24 * 2)  # investigated too recently
    await _investigation(stack.pool, "PD-123", "completed", 24 * 10, "pagerduty")  # not a tracker's ticket
    config = StaleReviewConfig(
        investigation_hours=24,
        ticket_days=7,
        channel="C-ops",
        ticket_arguments={"issue_key": "{ticket_id}"},
        public_base_url="https://pm",
    )
    review = StaleTicketReview(stack.pool, stack.tools, config)
    occurrence = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

    result = await review.run(occurrence)
    assert result["posted"] is True
    assert [i["investigation_id"] for i in result["investigations"]] == [str(stuck)]
    assert [(t["ticket_id"], t["ticket_status"], t["investigation_id"]) for t in result["tickets"]] == [
        ("SHOP-9", "In Progress", str(open_ticket))
    ]
    assert result["ticket_lookups"] == {"candidates": 3, "checked": 2, "unknown": 1}
    posts = stack.posts()
    assert len(posts) == 1
    assert posts[0]["tool"] == "post_message"
    assert posts[0]["arguments"]["channel_id"] == "C-ops"
    text = posts[0]["arguments"]["text"]
    assert "SHOP-7" in text
    assert "running" in text
    assert f"https://pm/api/v1/investigations/{stuck}" in text
    assert "SHOP-9" in text
    assert "In Progress" in text
    assert "SHOP-8" not in text
    assert "SHOP-1 " not in text
    assert "SHOP-404" not in text
    assert "PD-123" not in text

    # The same occurrence again (a retried run) posts nothing new: the registry replays the call.
    await review.run(occurrence)
    assert len(stack.posts()) == 1
    calls = await stack.pool.fetchval(
        "SELECT count(*) FROM mcp_tool_calls WHERE tool_name = 'post_message' AND agent_role = 'delivery'"
    )
    assert calls == 1

    # Without a channel, the run records what it would have posted.
    unposted = await StaleTicketReview(stack.pool, stack.tools, StaleReviewConfig()).run(occurrence)
    assert unposted["posted"] is False
    assert unposted["not_posted"] == "STALE_TICKET_SLACK_CHANNEL is not set"
    assert "SHOP-7" in unposted["summary"]
    assert len(stack.posts()) == 1


async def test_a_clean_stale_review_posts_nothing(stack: Stack) -> None:
    await _investigation(stack.pool, "SHOP-8", "queued", 1)
    result = await StaleTicketReview(stack.pool, stack.tools, StaleReviewConfig(channel="C-ops")).run(stack.now)
    assert (result["stale_investigations"], result["open_tickets"], result["posted"]) == (0, 0, False)
    assert stack.posts() == []


async def _domain(pool: asyncpg.Pool, name: str, services: list[str], settings: dict[str, Any]) -> None:
    await pool.execute(
        "INSERT INTO domain_configs (id, name, services, settings) VALUES ($1, $2, $3, $4::jsonb)",
        uuid.uuid4(),
        name,
        services,
        settings,
    )


@asynccontextmanager
async def _orchestrator(stack: Stack, **settings: str) -> AsyncIterator[grpc.aio.Channel]:
    env = stack_env()
    with fresh_bucket(env) as bucket:
        environ = env.service_environ(database_url=stack.dsn, bucket=bucket, registry_addr=stack.registry_addr)
        environ |= {"API_KEYS": API_KEY, "OUTBOX_POLL_SECONDS": "0.2", **settings}
        async with running_service(ORCHESTRATOR, environ) as channel:
            yield channel


async def test_the_health_check_starts_one_investigation_per_breach(stack: Stack) -> None:
    await _domain(stack.pool, "shop", ["cart", "checkout"], {"primary_services": [{"name": "ghost"}]})
    # The same service under a domain whose threshold multiplier is 50: 0.27 is below 0.01 x 50.
    await _domain(stack.pool, "payments", ["cart"], {"health_check_threshold": 50})
    async with _orchestrator(stack, SCHEDULED_JOBS_ENABLED="false") as channel:
        stub: Any = ops_pb2_grpc.HealthCheckServiceStub(channel)
        reply = await stub.RunHealthCheck(ops_pb2.RunHealthCheckRequest(), metadata=AUTH, timeout=60)
        results = {(r.domain, r.service): r for r in reply.results}
        assert (reply.checked, reply.triggered) == (4, 1)
        cart = results[("shop", "cart")]
        assert cart.status == "triggered"
        assert cart.baseline_error_rate == pytest.approx(0.01)
        assert 0.2 < cart.current_error_rate < 0.4
        assert cart.threshold == pytest.approx(0.01)
        checkout = results[("shop", "checkout")]
        assert checkout.status == "healthy"
        assert checkout.threshold == pytest.approx(0.02)
        assert checkout.current_error_rate < 0.02
        assert results[("payments", "cart")].status == "healthy"
        assert results[("payments", "cart")].threshold == pytest.approx(0.5)
        ghost = results[("shop", "ghost")]
        assert (ghost.status, ghost.reason) == ("error", "no error_ratio data for ghost in the last 15 minutes")

        # The investigation was started the way intake starts one, and published by the relay.
        row = await stack.pool.fetchrow("SELECT * FROM investigations WHERE id = $1::uuid", cart.investigation_id)
        assert (row["trigger_source"], row["domain"], row["mode"], row["priority"]) == (
            "health_check",
            "shop",
            "fast",
            2,
        )
        assert row["ticket_id"].startswith("HC-shop-cart-")
        assert row["requested_by"] == "key:" + hashlib.sha256(API_KEY.encode()).hexdigest()[:12]
        assert row["trigger_context"]["health_check"]["service"] == "cart"
        assert (
            await stack.pool.fetchval(
                "SELECT investigation_id FROM intake_dedup WHERE dedup_key = 'health_check:shop:cart'"
            )
            == row["id"]
        )
        assert (
            await stack.pool.fetchval(
                "SELECT count(*) FROM audit_log WHERE source = 'health_check' AND resource_id = $1", str(row["id"])
            )
            == 1
        )

        async def published() -> bool:
            return bool(
                await stack.pool.fetchval(
                    "SELECT published_at IS NOT NULL FROM outbox WHERE aggregate_id = $1", row["id"]
                )
            )

        await _until(published, "the outbox relay publishing the request")

        # A second run inside the dedup window reports the first investigation.
        again = await stub.RunHealthCheck(ops_pb2.RunHealthCheckRequest(domains=["shop"]), metadata=AUTH, timeout=60)
        repeated = {r.service: r for r in again.results}
        assert again.triggered == 0
        assert (repeated["cart"].status, repeated["cart"].investigation_id) == ("deduplicated", cart.investigation_id)
        assert (
            await stack.pool.fetchval("SELECT count(*) FROM investigations WHERE trigger_source = 'health_check'") == 1
        )

        # Bad requests are refused with the reason.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.RunHealthCheck(ops_pb2.RunHealthCheckRequest(domains=["nope"]), metadata=AUTH, timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Unknown domain" in (unknown.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.RunHealthCheck(ops_pb2.RunHealthCheckRequest(), timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        body = ops_pb2.RunHealthCheckRequest()
        body.http_body.content_type = "application/json"
        body.http_body.data = b'{"domains": "shop"}'
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.RunHealthCheck(body, metadata=AUTH, timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_health_check_reports_an_unreadable_metric_as_an_error(stack: Stack) -> None:
    await _domain(stack.pool, "shop", ["cart"], {})
    config = HealthCheckConfig(metric="no_such_metric")
    check = HealthCheck(stack.pool, stack.tools, config, lambda: None)
    results = await check.run()
    assert [(r.service, r.status) for r in results] == [("cart", "error")]
    assert results[0].reason == "no no_such_metric data for cart in the last 15 minutes"
    # A scheduled run that could read nothing fails, so the run counter shows it.
    with pytest.raises(HealthCheckFailed, match="no error rate could be read for any of 1 services"):
        await check.scheduled(stack.now)
    assert await stack.pool.fetchval("SELECT count(*) FROM investigations") == 0


async def _deploy(pool: asyncpg.Pool, service: str, deployed_minutes_ago: float, due_in_minutes: float) -> uuid.UUID:
    deploy_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO deploy_events (id, service, version, deployed_at, domain, check_due_at)"
        " VALUES ($1, $2, 'v42', now() - make_interval(secs => $3), 'shop', now() + make_interval(secs => $4))",
        deploy_id,
        service,
        deployed_minutes_ago * 60,
        due_in_minutes * 60,
    )
    return deploy_id


async def test_the_post_deploy_check_opens_an_investigation_on_a_regression(stack: Stack) -> None:
    regressed = await _deploy(stack.pool, "cart", 10, -1)
    healthy = await _deploy(stack.pool, "checkout", 10, -1)
    no_data = await _deploy(stack.pool, "ghost", 10, -1)
    later = await _deploy(stack.pool, "cart", 1, 30)
    notified: list[bool] = []
    check = PostDeployCheck(stack.pool, stack.tools, PostDeployConfig(), lambda: notified.append(True))

    result = await check.run(stack.now)
    assert (result["due"], result["triggered"], result["healthy"], result["skipped"]) == (3, 1, 1, 1)
    rows = {r["id"]: r for r in await stack.pool.fetch("SELECT * FROM deploy_events")}
    assert {k: rows[k]["check_status"] for k in (regressed, healthy, no_data, later)} == {
        regressed: "triggered",
        healthy: "healthy",
        no_data: "skipped",
        later: "pending",
    }
    assert rows[healthy]["check_investigation_id"] is None
    assert rows[healthy]["checked_at"] is not None
    investigation = await stack.pool.fetchrow(
        "SELECT * FROM investigations WHERE id = $1", rows[regressed]["check_investigation_id"]
    )
    assert (investigation["trigger_source"], investigation["ticket_id"], investigation["domain"]) == (
        "post_deploy",
        "DEPLOY-cart-v42",
        "shop",
    )
    assert await stack.pool.fetchval("SELECT count(*) FROM outbox WHERE aggregate_id = $1", investigation["id"]) == 1
    assert notified == [True]
    by_deploy = {c["deploy_id"]: c for c in result["checks"]}
    assert by_deploy[str(regressed)]["before_error_rate"] == pytest.approx(0.01)
    assert by_deploy[str(regressed)]["after_error_rate"] == pytest.approx(0.4)
    assert by_deploy[str(no_data)]["reason"] == "no error_ratio data after the deploy"

    # Checked deploys are not checked again.
    assert (await check.run(stack.now))["due"] == 0
    assert await stack.pool.fetchval("SELECT count(*) FROM investigations") == 1


# -- two orchestrator processes ---------------------------------------------------------------

JOBS = ("health_check", "post_deploy_check", "stale_ticket_review", "knowledge_lifecycle")
_GAUGE = re.compile(r"^pm_scheduler_leader (\S+)$", re.MULTILINE)


async def _leader_gauge(client: httpx.AsyncClient, port: int) -> float | None:
    try:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text
    except httpx.HTTPError:
        return None
    found = _GAUGE.search(text)
    return float(found.group(1)) if found else None


async def test_two_orchestrators_run_every_job_once_and_the_survivor_takes_over(stack: Stack, tmp_path: Path) -> None:
    await _investigation(stack.pool, "SHOP-7", "running", 30)  # stale: each review posts it
    env = stack_env()
    with fresh_bucket(env) as bucket:
        base = env.service_environ(database_url=stack.dsn, bucket=bucket, registry_addr=stack.registry_addr)
        base |= {
            "API_KEYS": API_KEY,
            "SCHEDULER_POLL_SECONDS": "0.2",
            "RECONCILE_INTERVAL_SECONDS": "3600",
            "STALE_TICKET_SLACK_CHANNEL": "C-ops",
            "STALE_TICKET_LOOKUP_ARGUMENTS": '{"issue_key": "{ticket_id}"}',
            **{f"{job.upper()}_CRON": "* * * * *" for job in JOBS},
        }
        processes, metrics_ports = [], []
        for n in range(2):
            metrics_ports.append(free_port())
            environ = base | {
                "GRPC_LISTEN": f"127.0.0.1:{free_port()}",
                "METRICS_LISTEN": f"127.0.0.1:{metrics_ports[-1]}",
            }
            processes.append(ServiceProcess("orchestrator", environ, tmp_path / f"orchestrator-{n}.log"))
        try:
            for process in processes:
                await process.start()
            async with httpx.AsyncClient() as client:

                async def all_jobs_ran() -> bool:
                    done = await stack.pool.fetch(
                        "SELECT DISTINCT job FROM scheduled_job_runs WHERE status = 'succeeded'"
                    )
                    return {r["job"] for r in done} == set(JOBS)

                await _until(all_jobs_ran, "every job's first run", timeout=60)
                gauges = [await _leader_gauge(client, port) for port in metrics_ports]
                assert sorted(g if g is not None else -1.0 for g in gauges) == [0.0, 1.0], gauges
                leader = gauges.index(1.0)
                first = {job: max(r["scheduled_for"] for r in await _runs(stack.pool, job)) for job in JOBS}

                await processes[leader].kill()
                survivor = metrics_ports[1 - leader]

                async def took_over() -> bool:
                    return await _leader_gauge(client, survivor) == 1.0

                await _until(took_over, "the other orchestrator leading", timeout=30)

                async def next_occurrence_ran() -> bool:
                    for job in JOBS:
                        later = await stack.pool.fetchval(
                            "SELECT count(*) FROM scheduled_job_runs WHERE job = $1 AND scheduled_for > $2"
                            " AND status = 'succeeded'",
                            job,
                            first[job],
                        )
                        if not later:
                            return False
                    return True

                await _until(next_occurrence_ran, "every job's next run, on the survivor", timeout=90)
                text = (await client.get(f"http://127.0.0.1:{survivor}/metrics", timeout=2)).text
                assert re.search(
                    r'pm_scheduled_job_runs_total\{job="stale_ticket_review",status="succeeded"\} [1-9]', text
                )
        finally:
            for process in processes:
                await process.stop()
    # One post per occurrence, by whichever process ran it: every post went through the registry
    # under its occurrence's idempotency key, and no key (no occurrence) was posted twice.
    reviews = await _runs(stack.pool, "stale_ticket_review")
    keys = [
        r["idempotency_key"]
        for r in await stack.pool.fetch("SELECT idempotency_key FROM mcp_tool_calls WHERE tool_name = 'post_message'")
    ]
    assert len(stack.posts()) == len(keys) == len(set(keys))
    occurrences = {f"scheduled:stale_ticket_review:{r['scheduled_for'].isoformat()}": r["status"] for r in reviews}
    assert set(keys) <= set(occurrences)
    assert {k for k, status in occurrences.items() if status == "succeeded"} <= set(keys)
    assert len([s for s in occurrences.values() if s == "succeeded"]) >= 2
    assert all("SHOP-7" in post["arguments"]["text"] for post in stack.posts())


async def test_post_health_check_over_rest(stack: Stack, tmp_path: Path) -> None:
    await _domain(stack.pool, "shop", ["cart", "checkout"], {})
    await _domain(stack.pool, "quiet", ["checkout"], {})
    async with AsyncExitStack() as exits:
        edge = await start_edge(
            exits,
            tmp_path,
            stack.dsn,
            ingest_environ={"API_KEYS": API_KEY},
            orchestrator_environ={
                "API_KEYS": API_KEY,
                "REGISTRY_ADDR": stack.registry_addr,
                "SCHEDULED_JOBS_ENABLED": "false",
            },
        )
        headers = {"x-api-key": API_KEY}
        reply = await edge.client.post("/api/v1/health-check", json={"domains": ["shop"]}, headers=headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["checked"], body["triggered"], body["message"]) == (2, 1, "1 investigation(s) started")
        statuses = {r["service"]: r["status"] for r in body["results"]}
        assert statuses == {"cart": "triggered", "checkout": "healthy"}
        # No body: every domain.
        everything = await edge.client.post("/api/v1/health-check", headers=headers)
        assert everything.status_code == 200, everything.text
        assert sorted((r["domain"], r["service"], r["status"]) for r in everything.json()["results"]) == [
            ("quiet", "checkout", "healthy"),
            ("shop", "cart", "deduplicated"),
            ("shop", "checkout", "healthy"),
        ]

        wrong_type = await edge.client.post("/api/v1/health-check", json={"domains": "shop"}, headers=headers)
        assert wrong_type.status_code == 400
        assert wrong_type.json()["error"] == "Validation failed"
        assert wrong_type.json()["details"][0]["path"] == ["domains"]
        unknown_field = await edge.client.post("/api/v1/health-check", json={"domain": "shop"}, headers=headers)
        assert unknown_field.status_code == 400
        assert unknown_field.json()["details"][0]["message"] == "Unknown field"
        unknown = await edge.client.post("/api/v1/health-check", json={"domains": ["nope"]}, headers=headers)
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "Unknown domain(s)"
        assert unknown.json()["unknown_domains"] == ["nope"]
        anonymous = await edge.client.post("/api/v1/health-check", json={})
        assert anonymous.status_code == 401
    assert await stack.pool.fetchval("SELECT count(*) FROM investigations WHERE trigger_source = 'health_check'") == 1
