"""An investigation from request to report: orchestrator, worker and registry on the real stack.

The investigation row and its InvestigationRequested are written the way intake writes them;
the orchestrator drives the phases, the worker runs every step through the registry and a stdio
sandbox serving the project's own scenario (a payments retry storm behind an api-gateway alert,
with decoy deploys and a decoy flag), and the report lands in PostgreSQL and S3 and is served by
the query API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import shutil
import uuid
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from redis.asyncio import Redis

from integration.sandbox import registry_config, until_connected
from pm.events.v1 import events_pb2
from pm.investigation.v1 import investigation_pb2, investigation_pb2_grpc
from pm_db import apply_migrations
from pm_orchestrator.app import SPEC as ORCHESTRATOR
from pm_registry.app import SPEC as REGISTRY
from pm_storage import S3ObjectStore
from pm_streams import STREAM_AGENT_RESULTS, STREAM_INVESTIGATIONS, StreamBus
from pm_testing import free_port, fresh_bucket, fresh_database, private_redis, running_service, stack_env
from pm_worker.app import SPEC as WORKER

API_KEY = "engine-test-key-0001"
SCENARIO = Path(__file__).resolve().parents[2] / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
TRUTH = json.loads((SCENARIO / "ground_truth.json").read_text())
PHASES = ["triage", "gather", "hypothesize", "verify", "recommend", "report", "deliver"]


@dataclass
class Stack:
    db: asyncpg.Connection
    bus: StreamBus
    store: S3ObjectStore
    queries: Any
    dsn: str = ""


@asynccontextmanager
async def _engine(
    tmp_path: Path,
    servers: str,
    *,
    connected: bool = True,
    redis_url: str = "",
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    env = stack_env()
    config = tmp_path / "servers.yaml"
    config.write_text(servers)
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            registry_port = free_port()
            base = env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}")
            base |= {"REDIS_URL": redis_url or env.redis_url, **(settings or {})}
            registry_env = {**base, "GRPC_LISTEN": f"127.0.0.1:{registry_port}", "MCP_SERVERS_FILE": str(config)}
            orchestrator_env = {**base, "API_KEYS": API_KEY, "OUTBOX_POLL_SECONDS": "0.2"}
            db = await asyncpg.connect(dsn)
            bus = StreamBus(base["REDIS_URL"], namespace=base["STREAM_NAMESPACE"])
            await bus.connect()
            store = S3ObjectStore(bucket, endpoint_url=env.s3_endpoint, access_key_id="test", secret_access_key="test")
            try:
                async with running_service(REGISTRY, registry_env) as registry:
                    if connected:
                        await until_connected(registry)
                    async with (
                        running_service(WORKER, base),
                        running_service(ORCHESTRATOR, orchestrator_env) as orchestrator,
                    ):
                        queries = investigation_pb2_grpc.InvestigationServiceStub(orchestrator)
                        yield Stack(db, bus, store, queries, dsn)
            finally:
                await bus.close()
                await db.close()


@pytest.fixture()
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with _engine(tmp_path, registry_config(SCENARIO)) as running:
        yield running


MAX_ITERATIONS = {"fast": 1, "balanced": 3, "deep": 5}


async def _submit(stack: Stack, ticket: str, mode: str = "balanced", budget: Mapping[str, float] | None = None) -> str:
    """What intake does: the queued row, then InvestigationRequested on the stream."""
    investigation_id = str(uuid.uuid4())
    await stack.db.execute(
        "INSERT INTO investigations (id, ticket_id, requested_by, mode, max_iterations, budget)"
        " VALUES ($1::uuid, $2, 'key:test', $3, $4, $5::jsonb)",
        investigation_id,
        ticket,
        mode,
        MAX_ITERATIONS[mode],
        json.dumps(budget or {}),
    )
    message = events_pb2.InvestigationRequested(
        event_id=str(uuid.uuid4()), investigation_id=investigation_id, ticket_id=ticket
    )
    await stack.bus.publish(STREAM_INVESTIGATIONS, message, message_id=message.event_id)
    return investigation_id


async def _until_done(stack: Stack, investigation_id: str, timeout: float = 90) -> asyncpg.Record:
    async with asyncio.timeout(timeout):
        while True:
            row = await stack.db.fetchrow("SELECT * FROM investigations WHERE id = $1::uuid", investigation_id)
            if row["status"] in ("completed", "failed", "cancelled"):
                return row
            await asyncio.sleep(0.2)


AUTH = (("x-api-key", API_KEY),)


async def _watch(stack: Stack, investigation_id: str, after: int = 0) -> list[Any]:
    request = investigation_pb2.WatchInvestigationRequest(id=investigation_id, after_sequence=after)
    return [event async for event in stack.queries.WatchInvestigation(request, metadata=AUTH, timeout=120)]


async def test_an_investigation_goes_from_request_to_report(stack: Stack) -> None:
    investigation_id = await _submit(stack, "SHOP-9")
    # A watcher from the start sees every event live and the stream ends with the investigation.
    watching = asyncio.create_task(_watch(stack, investigation_id))
    row = await _until_done(stack, investigation_id)
    async with asyncio.timeout(30):
        watched = await watching
    assert row["status"] == "completed", row["error"]
    assert row["phase"] == "deliver"
    # The scenario's answer (ground_truth.json, never served to the investigation).
    assert row["verdict"] == "ROOT_CAUSE"
    assert row["tool_calls"] > 0

    steps = await stack.db.fetch(
        "SELECT phase, agent_role, status FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
    )
    assert {s["status"] for s in steps} == {"succeeded"}
    assert {s["phase"] for s in steps} == {"triage", "gather", "hypothesize", "verify", "recommend"}
    assert len([s for s in steps if s["phase"] == "gather"]) == 5
    # The context part is told the ticket to look up (and the Slack channel, none here), nothing else.
    context_input = await stack.db.fetchval(
        "SELECT input FROM investigation_steps WHERE investigation_id = $1::uuid AND agent_role = 'gather.context'",
        investigation_id,
    )
    assert json.loads(context_input)["context"] == {"ticket_id": "SHOP-9", "channel": ""}
    runs = await stack.db.fetchval(
        "SELECT count(*) FROM agent_runs WHERE investigation_id = $1::uuid", investigation_id
    )
    assert runs == len(steps)
    events = await stack.db.fetch(
        "SELECT sequence, kind, phase FROM investigation_events WHERE investigation_id = $1::uuid ORDER BY sequence",
        investigation_id,
    )
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert [e["phase"] for e in events if e["kind"] == "phase"] == PHASES
    assert events[-1]["kind"] == "completed"
    assert [(e.sequence, e.kind, e.phase) for e in watched] == [(e["sequence"], e["kind"], e["phase"]) for e in events]
    bundle_call = stack.queries.GetBundle(
        investigation_pb2.GetBundleRequest(id=investigation_id), metadata=AUTH, timeout=10
    )
    bundle = await bundle_call
    assert bundle.content_type == "application/zip"
    disposition = dict(await bundle_call.initial_metadata() or ())["content-disposition"]
    assert disposition == f'attachment; filename="investigation-{investigation_id}.zip"'
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as archive:
        assert {"metadata.json", "report.md", "report.json", "phases.json", "agent_runs.json", "hypotheses.json",
                "tool_calls.json", "events.json"} <= set(archive.namelist())  # fmt: skip
        assert json.loads(archive.read("metadata.json"))["id"] == investigation_id
        assert len(json.loads(archive.read("phases.json"))) == 9
        assert len(json.loads(archive.read("tool_calls.json"))) == row["tool_calls"]
        assert archive.read("report.md").decode().startswith("# Investigation SHOP-9")
    resumed = await _watch(stack, investigation_id, after=len(events) - 2)
    assert [e.sequence for e in resumed] == [len(events) - 1, len(events)]

    # The report: in PostgreSQL, in the bucket (Markdown and HTML), through the query API.
    report = await stack.queries.GetReport(
        investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
    )
    assert report.verdict == row["verdict"]
    assert report.culprit_change.ref == TRUTH["root_cause_commit"]
    assert report.first_failing_service == TRUTH["first_failing_service"]
    assert set(report.blast_radius) == set(TRUTH["blast_radius"])
    assert report.recommendations[0].action == TRUTH["remediation"]
    # Decoys shipped before the onset were considered and rejected (a later one is no candidate).
    considered = {
        json.loads(r["candidate"])["ref"] if isinstance(r["candidate"], str) else r["candidate"]["ref"]
        for r in await stack.db.fetch(
            "SELECT candidate FROM hypotheses WHERE investigation_id = $1::uuid", investigation_id
        )
    }
    decoys = set(TRUTH["decoy_deploy_commits"]) & considered
    assert decoys
    assert decoys <= {h.id for h in report.rejected_hypotheses}
    assert report.markdown.startswith("# Investigation SHOP-9")
    assert "## Fix plan" in report.markdown
    # What the chat said, as found, apart from the evidence (the scenario has no SHOP-9 ticket: a gap).
    reported = report.markdown.split("## What people reported", 1)[1].split("\n## ", 1)[0]
    assert "leads, not evidence" in reported
    assert "jonas.berg in #incidents: gateway 5xx started right after the gateway deploy" in reported
    assert "tickets.get: " in report.markdown.split("## Gaps", 1)[1]
    cited = {c for item in report.evidence for c in item.tool_call_ids}
    assert cited
    known = {
        str(r["id"])
        for r in await stack.db.fetch(
            "SELECT id FROM mcp_tool_calls WHERE investigation_id = $1::uuid", investigation_id
        )
    }
    assert cited <= known
    html_key = report.html_uri.split(f"{stack.store.bucket}/", 1)[1].split("?")[0]
    page = (await stack.store.get(html_key)).data.decode()
    assert page.startswith("<!doctype html>")
    assert "<h2>Fix plan</h2>" in page

    got = await stack.queries.GetInvestigation(
        investigation_pb2.GetInvestigationRequest(id=investigation_id), metadata=AUTH, timeout=10
    )
    assert (got.status, got.phase, got.verdict) == ("completed", "deliver", row["verdict"])
    assert got.usage.tool_calls == row["tool_calls"]
    assert list(got.phases_done) == ["intake", *PHASES]
    assert (got.steps_running, got.hypothesis_iteration, got.max_iterations) == (0, 1, 3)
    elapsed = (row["completed_at"] - row["started_at"]).total_seconds()
    assert got.elapsed_seconds == pytest.approx(elapsed, abs=0.01)
    assert got.started_at.ToDatetime(tzinfo=row["started_at"].tzinfo) == row["started_at"]
    listed = await stack.queries.ListInvestigations(
        investigation_pb2.ListInvestigationsRequest(status="completed", limit=5), metadata=AUTH, timeout=10
    )
    assert [i.id for i in listed.data] == [investigation_id]
    assert listed.pagination.total == 1

    # A redelivered result changes nothing: the step is no longer open for it.
    recommend = await stack.db.fetchrow(
        "SELECT task_id, attempt FROM investigation_steps WHERE investigation_id = $1::uuid AND phase = 'recommend'",
        investigation_id,
    )
    duplicate = events_pb2.AgentResult(
        task_id=recommend["task_id"],
        investigation_id=investigation_id,
        attempt=recommend["attempt"],
        status=events_pb2.STEP_STATUS_SUCCEEDED,
    )
    await stack.bus.publish(STREAM_AGENT_RESULTS, duplicate, message_id="duplicate-1")
    await asyncio.sleep(2)
    assert (
        await stack.db.fetchval("SELECT count(*) FROM reports WHERE investigation_id = $1::uuid", investigation_id) == 1
    )
    assert await stack.db.fetchval(
        "SELECT count(*) FROM investigation_events WHERE investigation_id = $1::uuid", investigation_id
    ) == len(events)


async def test_the_query_api_refuses_bad_requests(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await stack.queries.GetInvestigation(
            investigation_pb2.GetInvestigationRequest(id=str(uuid.uuid4())), timeout=10
        )
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.queries.GetInvestigation(
            investigation_pb2.GetInvestigationRequest(id=str(uuid.uuid4())), metadata=AUTH, timeout=10
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stack.queries.GetReport(investigation_pb2.GetReportRequest(id="not-an-id"), metadata=AUTH, timeout=10)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # While it runs, the report is "not yet available" with the status.
    investigation_id = str(uuid.uuid4())
    await stack.db.execute("INSERT INTO investigations (id, ticket_id) VALUES ($1::uuid, 'SHOP-10')", investigation_id)
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await stack.queries.GetReport(
            investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
        )
    assert early.value.code() == grpc.StatusCode.NOT_FOUND
    body = json.loads(dict(early.value.trailing_metadata() or ())["x-pm-http-body"])
    assert body == {"error": "Report not yet available", "investigation_status": "queued"}


async def test_a_step_that_keeps_failing_is_retried_then_fails_the_investigation(tmp_path: Path) -> None:
    # A registry whose only server never starts: every triage attempt finds no tool to call,
    # which a retry could fix, so it is retried with backoff until the attempts run out.
    servers = "servers:\n  - name: gone\n    transport: stdio\n    command: /nonexistent/mcp-server\n"
    async with _engine(tmp_path, servers, connected=False) as stack:
        investigation_id = await _submit(stack, "SHOP-11")
        row = await _until_done(stack, investigation_id, timeout=60)
        assert row["status"] == "failed"
        assert "triage failed after 3 attempt(s)" in row["error"]
        assert "no connected MCP server offers alerts.get" in row["error"]
        attempts = await stack.db.fetch(
            "SELECT attempt, status, dispatched_at, finished_at FROM investigation_steps"
            " WHERE investigation_id = $1::uuid ORDER BY attempt",
            investigation_id,
        )
        assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "failed"), (3, "failed")]
        # Backoff: the second attempt ran at least 2 s after the first failed, the third 4 s.
        assert (attempts[1]["finished_at"] - attempts[0]["finished_at"]).total_seconds() >= 2
        assert (attempts[2]["finished_at"] - attempts[1]["finished_at"]).total_seconds() >= 4
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
        assert early.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_step_that_keeps_failing_after_evidence_ends_in_a_partial_inconclusive_report(tmp_path: Path) -> None:
    # No tool offers changes.diff: VERIFY fails on every attempt, after GATHER and HYPOTHESIZE
    # found the failing service and the candidate changes.
    servers = registry_config(SCENARIO, without={"changes.diff"})
    async with _engine(tmp_path, servers) as stack:
        investigation_id = await _submit(stack, "SHOP-12")
        row = await _until_done(stack, investigation_id, timeout=90)
        assert row["status"] == "completed", row["error"]
        assert row["verdict"] == "INCONCLUSIVE"
        assert "verify failed after 3 attempt(s)" in row["error"]
        assert row["summary"].startswith("Partial report: step verify failed after 3 attempt(s)")
        verify = await stack.db.fetch(
            "SELECT attempt, status FROM investigation_steps WHERE investigation_id = $1::uuid AND phase = 'verify'"
            " ORDER BY attempt",
            investigation_id,
        )
        assert [(v["attempt"], v["status"]) for v in verify] == [(1, "failed"), (2, "failed"), (3, "failed")]
        report = await stack.queries.GetReport(
            investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
        )
        assert report.verdict == "INCONCLUSIVE"
        assert "> **Partial report.**" in report.markdown
        # What the evidence showed before the failure is in the report.
        assert report.first_failing_service == TRUTH["first_failing_service"]
        assert set(report.blast_radius) == set(TRUTH["blast_radius"])
        untested = await stack.db.fetch(
            "SELECT candidate, status FROM hypotheses WHERE investigation_id = $1::uuid", investigation_id
        )
        assert untested
        assert {h["status"] for h in untested} == {"open"}
        kinds = [
            e["kind"]
            for e in await stack.db.fetch(
                "SELECT kind FROM investigation_events WHERE investigation_id = $1::uuid ORDER BY sequence",
                investigation_id,
            )
        ]
        assert kinds.index("partial") < kinds.index("report") < kinds.index("completed")


async def test_hypothesis_iterations_are_bounded_by_mode(tmp_path: Path) -> None:
    # The scenario without its culprit: nothing verified settles it, so VERIFY asks for another
    # iteration while candidates remain; one candidate is verified per iteration here.
    data = tmp_path / "no-culprit"
    shutil.copytree(SCENARIO, data)
    for name in ("commits.json", "deploys.json"):
        path = data / "data" / "context" / name
        items = json.loads(path.read_text())
        kept = [i for i in items if TRUTH["root_cause_commit"] not in (i.get("sha"), i.get("commit_sha"))]
        assert len(kept) == len(items) - 1
        path.write_text(json.dumps(kept))
    settings = {"RULE_CANDIDATES_PER_ITERATION": "1"}
    async with _engine(tmp_path, registry_config(data), settings=settings) as stack:
        fast, deep = await _submit(stack, "SHOP-21", "fast"), await _submit(stack, "SHOP-22", "deep")
        rows = {"fast": await _until_done(stack, fast), "deep": await _until_done(stack, deep)}
        iterations: dict[str, list[tuple[str, int]]] = {}
        for mode, investigation_id in (("fast", fast), ("deep", deep)):
            assert rows[mode]["status"] == "completed", rows[mode]["error"]
            steps = await stack.db.fetch(
                "SELECT phase, iteration FROM investigation_steps WHERE investigation_id = $1::uuid"
                " AND phase IN ('hypothesize', 'verify') AND status = 'succeeded' ORDER BY dispatched_at",
                investigation_id,
            )
            iterations[mode] = [(s["phase"], s["iteration"]) for s in steps]
        # fast: one iteration, and a candidate left untested, reported as such.
        assert rows["fast"]["hypothesis_iteration"] == 1
        assert iterations["fast"] == [("hypothesize", 1), ("verify", 1)]
        fast_hypotheses = await stack.db.fetch(
            "SELECT iteration, status FROM hypotheses WHERE investigation_id = $1::uuid", fast
        )
        assert "open" in {h["status"] for h in fast_hypotheses}
        assert rows["fast"]["verdict"] == "INCONCLUSIVE"
        assert "were not verified within 1 hypothesis iteration" in rows["fast"]["summary"]
        # deep: HYPOTHESIZE ⇄ VERIFY again until every candidate was verified (within 5).
        n = rows["deep"]["hypothesis_iteration"]
        assert 1 < n <= 5
        assert iterations["deep"] == [(phase, i) for i in range(1, n + 1) for phase in ("hypothesize", "verify")]
        deep_hypotheses = await stack.db.fetch(
            "SELECT iteration, status FROM hypotheses WHERE investigation_id = $1::uuid", deep
        )
        assert "open" not in {h["status"] for h in deep_hypotheses}
        assert {h["iteration"] for h in deep_hypotheses} == set(range(1, n + 1))
        messages = await stack.db.fetch(
            "SELECT message FROM investigation_events WHERE investigation_id = $1::uuid AND phase = 'hypothesize'"
            " AND kind = 'phase' ORDER BY sequence",
            deep,
        )
        assert [m["message"] for m in messages][1].startswith("phase hypothesize started: hypothesis iteration 2 of 5")


async def test_cancel_stops_a_running_investigation(tmp_path: Path) -> None:
    # A slow backend (every tool call 200 ms late) keeps the investigation running long enough.
    async with _engine(tmp_path, registry_config(SCENARIO, delay_ms=200)) as stack:
        investigation_id = await _submit(stack, "SHOP-12")
        async with asyncio.timeout(30):
            while not await stack.db.fetchval(
                "SELECT count(*) FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
            ):
                await asyncio.sleep(0.05)
        running = await stack.queries.GetInvestigation(
            investigation_pb2.GetInvestigationRequest(id=investigation_id), metadata=AUTH, timeout=10
        )
        assert (running.status, running.phase, list(running.phases_done)) == ("running", "triage", ["intake"])
        assert running.steps_running == 1
        assert running.elapsed_seconds > 0
        request = investigation_pb2.CancelInvestigationRequest(id=investigation_id, reason="wrong ticket")
        reply = await stack.queries.CancelInvestigation(request, metadata=AUTH, timeout=10)
        assert (reply.status, reply.message) == ("cancelled", "Investigation cancelled (it was running)")
        row = await stack.db.fetchrow("SELECT * FROM investigations WHERE id = $1::uuid", investigation_id)
        assert row["status"] == "cancelled"
        assert row["error"].startswith("cancelled by key:")
        assert row["error"].endswith(": wrong ticket")

        # The step that was running stops (the registry refuses its next tool call), its result
        # is not applied, and nothing further is dispatched.
        await asyncio.sleep(3)
        steps = await stack.db.fetch(
            "SELECT phase, status FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
        )
        assert {s["status"] for s in steps} == {"cancelled"}
        assert {s["phase"] for s in steps} == {"triage"}
        assert (
            await stack.db.fetchval("SELECT status FROM investigations WHERE id = $1::uuid", investigation_id)
        ) == "cancelled"

        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stack.queries.CancelInvestigation(request, metadata=AUTH, timeout=10)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert json.loads(dict(again.value.trailing_metadata() or ())["x-pm-http-body"]) == {
            "error": "Investigation already cancelled",
            "investigation_id": investigation_id,
            "status": "cancelled",
        }
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stack.queries.CancelInvestigation(request, timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_after_redis_loses_everything_the_reconciler_redrives_every_open_investigation(tmp_path: Path) -> None:
    async with (
        private_redis(stack_env()) as redis_server,
        _engine(
            tmp_path,
            registry_config(SCENARIO, delay_ms=150),
            redis_url=redis_server.url,
            settings={
                "RECONCILE_INTERVAL_SECONDS": "1",
                "RECONCILE_STALE_SECONDS": "4",
                "STEP_RECLAIM_IDLE_MS": "2000",
            },
        ) as stack,
    ):
        running = await _submit(stack, "SHOP-13")
        # A request whose message never made it onto a stream: only the row exists.
        lost = str(uuid.uuid4())
        await stack.db.execute("INSERT INTO investigations (id, ticket_id) VALUES ($1::uuid, 'SHOP-14')", lost)
        async with asyncio.timeout(60):
            while not await stack.db.fetchval(
                "SELECT count(*) FROM investigation_steps WHERE investigation_id = $1::uuid AND phase = 'gather'",
                running,
            ):
                await asyncio.sleep(0.05)
        client = Redis.from_url(redis_server.url)
        try:
            await client.flushall()  # every stream, group and pending entry is gone
        finally:
            await client.aclose()
        for investigation_id in (running, lost):
            try:
                row = await _until_done(stack, investigation_id, timeout=40)
            except TimeoutError:
                events = await stack.db.fetch(
                    "SELECT investigation_id::text, sequence, kind, message FROM investigation_events ORDER BY 1, 2"
                )
                steps = await stack.db.fetch(
                    "SELECT investigation_id::text, phase, agent_role, status, attempt FROM investigation_steps"
                )
                pytest.fail(
                    f"{investigation_id} did not finish: {[dict(r) for r in events]} {[dict(r) for r in steps]}"
                )
            assert row["status"] == "completed", row["error"]
            assert row["verdict"] == "ROOT_CAUSE"
        redriven = await stack.db.fetch(
            "SELECT investigation_id::text, message FROM investigation_events WHERE kind = 'redriven'"
        )
        assert {r["investigation_id"] for r in redriven} == {running, lost}
        # The triage of the running one had finished before the flush: it was not run again.
        triage = await stack.db.fetchval(
            "SELECT count(*) FROM agent_runs WHERE investigation_id = $1::uuid AND phase = 'triage'", running
        )
        assert triage == 1


@pytest.mark.parametrize(
    ("settings", "budget", "reason"),
    [
        ({"INVESTIGATION_MAX_TOOL_CALLS": "5"}, {}, "tool-call budget of 5 exhausted"),
        (
            {"INVESTIGATION_DEADLINE_SECONDS": "2", "RECONCILE_INTERVAL_SECONDS": "0.5"},
            {},
            "deadline of 2s passed",
        ),
        # The request's own budget (as intake stores it): lower than the settings, so it applies.
        ({"INVESTIGATION_MAX_TOOL_CALLS": "500"}, {"max_tool_calls": 7}, "tool-call budget of 7 exhausted"),
    ],
)
async def test_a_breached_budget_goes_straight_to_an_inconclusive_report(
    tmp_path: Path, settings: dict[str, str], budget: dict[str, float], reason: str
) -> None:
    async with _engine(tmp_path, registry_config(SCENARIO, delay_ms=100), settings=settings) as stack:
        investigation_id = await _submit(stack, "SHOP-15", budget=budget)
        row = await _until_done(stack, investigation_id, timeout=60)
        assert row["status"] == "completed", row["error"]
        assert row["verdict"] == "INCONCLUSIVE"
        assert reason in row["summary"]
        assert row["phase"] == "deliver"
        report = await stack.queries.GetReport(
            investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
        )
        assert report.verdict == "INCONCLUSIVE"
        assert reason in report.markdown
        # Nothing keeps running after the stop: open steps were superseded, none dispatched later.
        await asyncio.sleep(2)
        statuses = {
            r["status"]
            for r in await stack.db.fetch(
                "SELECT status FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
            )
        }
        assert statuses <= {"succeeded", "superseded", "failed"}
        assert not {"recommend"} & {
            r["phase"]
            for r in await stack.db.fetch(
                "SELECT phase FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
            )
        }


class _Receiver:
    """A callback endpoint on loopback: answers 500 to the first request, 200 after."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))
        status = "500 Internal Server Error" if len(self.requests) == 1 else "200 OK"
        writer.write(f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/pm"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_the_callback_gets_one_signed_post_retried_until_accepted(tmp_path: Path) -> None:
    receiver = _Receiver()
    secret = "callback-secret-for-tests"
    async with (
        receiver as url,
        _engine(tmp_path, registry_config(SCENARIO), settings={"CALLBACK_SIGNING_SECRET": secret}) as stack,
    ):
        investigation_id = str(uuid.uuid4())
        await stack.db.execute(
            "INSERT INTO investigations (id, ticket_id, callback_url) VALUES ($1::uuid, 'SHOP-16', $2)",
            investigation_id,
            url,
        )
        message = events_pb2.InvestigationRequested(event_id=str(uuid.uuid4()), investigation_id=investigation_id)
        await stack.bus.publish(STREAM_INVESTIGATIONS, message, message_id=message.event_id)
        await _until_done(stack, investigation_id)
        async with asyncio.timeout(30):
            while (
                await stack.db.fetchval(
                    "SELECT status FROM deliveries WHERE investigation_id = $1::uuid", investigation_id
                )
                != "delivered"
            ):
                await asyncio.sleep(0.1)
        delivery = await stack.db.fetchrow(
            "SELECT * FROM deliveries WHERE investigation_id = $1::uuid", investigation_id
        )
        assert (delivery["attempts"], delivery["response_status"]) == (2, 200)
        assert len(receiver.requests) == 2
        # Both attempts carry the same idempotency key; the body is the predecessor's, signed.
        keys = {headers["idempotency-key"] for headers, _ in receiver.requests}
        assert keys == {str(delivery["id"])}
        headers, body = receiver.requests[-1]
        expected = hmac.new(secret.encode(), headers["x-pm-timestamp"].encode() + b"." + body, hashlib.sha256)
        assert headers["x-pm-signature"] == f"sha256={expected.hexdigest()}"
        sent = json.loads(body)
        assert sent["investigation_id"] == investigation_id
        assert (sent["status"], sent["verdict"]) == ("completed", "ROOT_CAUSE")
        assert sent["report_url"] == f"/api/v1/investigations/{investigation_id}/report"
        # Delivered once: nothing more is sent.
        await asyncio.sleep(2)
        assert len(receiver.requests) == 2


async def _until_delivered(stack: Stack, investigation_id: str, count: int) -> list[asyncpg.Record]:
    async with asyncio.timeout(30):
        while True:
            rows: list[asyncpg.Record] = await stack.db.fetch(
                "SELECT * FROM deliveries WHERE investigation_id = $1::uuid ORDER BY target", investigation_id
            )
            if len(rows) == count and all(r["status"] == "delivered" for r in rows):
                return rows
            await asyncio.sleep(0.1)


async def test_a_slack_command_gets_the_result_on_its_response_url(tmp_path: Path) -> None:
    receiver = _Receiver()  # refuses the first attempt with a 500
    async with receiver as url, _engine(tmp_path, registry_config(SCENARIO)) as stack:
        investigation_id = str(uuid.uuid4())
        context = {"slack": {"response_url": url, "channel_id": "C0SHOP", "user_name": "kim"}}
        await stack.db.execute(
            "INSERT INTO investigations (id, ticket_id, trigger_source, requested_by, trigger_context)"
            " VALUES ($1::uuid, 'SHOP-17', 'slack_command', 'kim', $2::jsonb)",
            investigation_id,
            json.dumps(context),
        )
        message = events_pb2.InvestigationRequested(event_id=str(uuid.uuid4()), investigation_id=investigation_id)
        await stack.bus.publish(STREAM_INVESTIGATIONS, message, message_id=message.event_id)
        row = await _until_done(stack, investigation_id)
        (delivery,) = await _until_delivered(stack, investigation_id, 1)
        assert (delivery["target"], delivery["attempts"], delivery["response_status"]) == ("slack", 2, 200)
        assert len(receiver.requests) == 2
        headers, body = receiver.requests[-1]
        assert headers["content-type"] == "application/json"
        posted = json.loads(body)
        assert posted["response_type"] == "in_channel"
        assert "*SHOP-17*" in posted["text"]
        assert f"*{row['verdict']}*" in posted["text"]
        assert f"/api/v1/investigations/{investigation_id}/report" in posted["text"]
        await asyncio.sleep(2)
        assert len(receiver.requests) == 2


async def test_results_are_published_once_per_target_through_the_registry_write_tools(tmp_path: Path) -> None:
    published = tmp_path / "published.jsonl"
    settings = {
        "PUBLISH_TICKET_COMMENTS": "true",
        "PUBLISH_CHAT_CHANNEL": "C0INCIDENTS",
        "PUBLIC_BASE_URL": "https://pm.example.test",
    }
    async with _engine(tmp_path, registry_config(SCENARIO, published=published), settings=settings) as stack:
        ticket = await _submit(stack, "SHOP-31")
        # An alert's investigation has no ticket to comment on: it is only posted to the channel.
        alert = str(uuid.uuid4())
        await stack.db.execute(
            "INSERT INTO investigations (id, ticket_id, trigger_source, priority)"
            " VALUES ($1::uuid, 'PD-77', 'pagerduty', 1)",
            alert,
        )
        message = events_pb2.InvestigationRequested(event_id=str(uuid.uuid4()), investigation_id=alert)
        await stack.bus.publish(STREAM_INVESTIGATIONS, message, message_id=message.event_id)
        for investigation_id in (ticket, alert):
            assert (await _until_done(stack, investigation_id))["status"] == "completed"
        ticket_deliveries = await _until_delivered(stack, ticket, 2)
        assert [(d["target"], d["target_ref"]) for d in ticket_deliveries] == [
            ("chat", "C0INCIDENTS"),
            ("jira", "SHOP-31"),
        ]
        assert [d["target"] for d in await _until_delivered(stack, alert, 1)] == ["chat"]

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in published.read_text().splitlines()]

        calls = lines()
        comments = [c["arguments"] for c in calls if c["tool"] == "add_comment"]
        posts = [c["arguments"] for c in calls if c["tool"] == "post_message"]
        assert [c["issue_key"] for c in comments] == ["SHOP-31"]
        assert "*ROOT_CAUSE*" in comments[0]["comment"]
        assert f"https://pm.example.test/api/v1/investigations/{ticket}/report" in comments[0]["comment"]
        assert sorted(p["channel_id"] for p in posts) == ["C0INCIDENTS", "C0INCIDENTS"]
        assert sorted(t for p in posts for t in ("SHOP-31", "PD-77") if f"*{t}*" in p["text"]) == ["PD-77", "SHOP-31"]
        audited = await stack.db.fetch(
            "SELECT tool_name, status, phase FROM mcp_tool_calls WHERE agent_role = 'delivery' ORDER BY tool_name"
        )
        assert [(a["tool_name"], a["status"], a["phase"]) for a in audited] == [
            ("add_comment", "ok", "deliver"),
            ("post_message", "ok", "deliver"),
            ("post_message", "ok", "deliver"),
        ]

        # A sender that died after the call and before its commit: the row is pending again with
        # the attempt uncounted. The repeat carries the same idempotency key, so the registry
        # replays the first call and nothing is posted twice.
        await stack.db.execute(
            "UPDATE deliveries SET status = 'pending', attempts = attempts - 1, delivered_at = NULL,"
            " next_attempt_at = now() WHERE investigation_id = $1::uuid",
            ticket,
        )
        await _until_delivered(stack, ticket, 2)
        assert lines() == calls
        assert await stack.db.fetchval("SELECT count(*) FROM mcp_tool_calls WHERE agent_role = 'delivery'") == 3


async def test_hypothesize_and_recommend_get_the_active_knowledge_of_the_investigations_services(
    stack: Stack,
) -> None:
    await stack.db.execute(
        "INSERT INTO domain_configs (id, name, services, settings) VALUES ($1, 'shop', $2, $3::jsonb)",
        uuid.uuid4(),
        ["api-gateway"],
        json.dumps({"primary_services": [{"name": "payments"}]}),
    )
    seeded = {}
    for service, confidence, title in [
        ("shop", "active", "Retry storms exhaust the payments pool"),
        ("payments", "active", "Payments pool size is 20"),
        ("api-gateway", "provisional", "Gateway timeouts are noise"),
        ("payments", "archived", "Old payments note"),
        ("search", "active", "Search has its own incidents"),
    ]:
        entry_id = uuid.uuid4()
        await stack.db.execute(
            "INSERT INTO knowledge_entries (id, service, category, title, content, confidence, source, archived_at)"
            " VALUES ($1, $2, 'known_issue', $3, $4::jsonb, $5, 'human', CASE WHEN $5 = 'archived' THEN now() END)",
            entry_id,
            service,
            title,
            json.dumps({"corrected_root_cause": f"{title}."}),
            confidence,
        )
        seeded[title] = str(entry_id)
    investigation_id = await _submit(stack, "SHOP-31")
    await stack.db.execute("UPDATE investigations SET domain = 'shop' WHERE id = $1::uuid", investigation_id)
    row = await _until_done(stack, investigation_id)
    assert row["status"] == "completed", row["error"]
    steps = await stack.db.fetch(
        "SELECT phase, input, output FROM investigation_steps WHERE investigation_id = $1::uuid"
        " AND status = 'succeeded' ORDER BY created_at",
        investigation_id,
    )
    expected = {seeded["Retry storms exhaust the payments pool"], seeded["Payments pool size is 20"]}
    for step in steps:
        given, recorded = _json(step["input"]).get("knowledge"), _json(step["output"]).get("knowledge")
        if step["phase"] not in ("hypothesize", "recommend"):
            assert given is None, step["phase"]
            continue
        assert given is not None
        assert recorded is not None
        assert given["services"] == ["shop", "api-gateway", "payments"]
        assert {e["id"] for e in given["entries"]} == expected, step["phase"]
        assert {e["id"] for e in recorded["entries"]} == expected
        says = {e["says"] for e in recorded["entries"]}
        assert "Payments pool size is 20." in says


def _json(value: Any) -> dict[str, Any]:
    return dict(json.loads(value) if isinstance(value, str) else value or {})
