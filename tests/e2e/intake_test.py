"""Intake end to end: REST submissions and webhooks through real Envoy into the real ingest
service, with real PostgreSQL, Redis and OpenBao. Signatures are computed here, independently of
the service's code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import grpc
import jwt
import pytest
from redis.asyncio import Redis

from e2e.edge import Edge, start_edge
from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pm_db import apply_migrations
from pm_ingest.app import SPEC as INGEST
from pm_secrets import VaultSecretSource
from pm_testing import fresh_database, private_redis, running_service, stack_env, unique_name, wait_for

API_KEY = "pm-test-key-7f3a9c"
OTHER_KEY = "pm-test-key-second"
JWT_SECRET = "jwt-secret-for-tests-only-" + "0123456789abcdef" * 4
JIRA_SECRET = "jira-secret-1"
SLACK_SECRET = "slack-signing-secret-1"
PD_SECRET = "pagerduty-secret-1"
GRAFANA_SECRET = "grafana-secret-1"
DEPLOY_SECRET = "deploy-secret-1"
AUTH = {"x-api-key": API_KEY}


def _sig(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def _start(
    stack: AsyncExitStack,
    tmp_path: Path,
    *,
    settings: Mapping[str, str] | None = None,
    redis_url: str | None = None,
    webhook_secrets: bool = True,
) -> tuple[Edge, str]:
    """An edge whose API keys and Jira/PagerDuty secrets live in OpenBao and the rest in the environment."""
    env = stack_env()
    dsn = await stack.enter_async_context(fresh_database(env))
    await apply_migrations(dsn)
    prefix = unique_name("pm-intake-")
    vault = VaultSecretSource(env.vault_addr, env.vault_token, prefix=prefix)
    await vault.put("api-keys", f"{API_KEY},{OTHER_KEY}")
    environ = {
        "VAULT_PATH_PREFIX": prefix,
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_INVESTIGATION_PER_MINUTE": "1000",
        "OUTBOX_POLL_SECONDS": "0.2",
        **(settings or {}),
    }
    if webhook_secrets:
        await vault.put("jira-webhook-secret", JIRA_SECRET)
        await vault.put("pagerduty-webhook-secret", PD_SECRET)
        environ |= {
            "SLACK_SIGNING_SECRET": SLACK_SECRET,
            "GRAFANA_WEBHOOK_SECRET": GRAFANA_SECRET,
            "DEPLOY_WEBHOOK_SECRET": DEPLOY_SECRET,
        }
    if redis_url is not None:
        environ["REDIS_URL"] = redis_url
    edge = await start_edge(stack, tmp_path, dsn, ingest_environ=environ)
    return edge, dsn


@pytest.fixture()
async def intake(tmp_path: Path) -> AsyncIterator[tuple[Edge, asyncpg.Connection, Redis]]:
    async with AsyncExitStack() as stack:
        edge, dsn = await _start(stack, tmp_path)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        redis = Redis.from_url(edge.ingest_environ["REDIS_URL"])
        stack.push_async_callback(redis.aclose)
        yield edge, conn, redis


def _stream(edge: Edge, name: str = "pm.investigations") -> str:
    return edge.ingest_environ["STREAM_NAMESPACE"] + name


async def _published(conn: asyncpg.Connection, expected: int) -> None:
    async def done() -> bool:
        n = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        return bool(n >= expected)

    await wait_for(done, timeout=15, what=f"{expected} outbox rows published")


async def _stream_ids(redis: Redis, stream: str) -> list[bytes]:
    """Each entry of the stream as one byte string (fields and values), to search in."""
    entries: Any = await redis.xrange(stream)
    return [b"".join(bytes(k) + bytes(v) for k, v in fields.items()) for _, fields in entries]


async def _each_published_once(conn: asyncpg.Connection, redis: Redis, streams: list[str]) -> int:
    """Every outbox row is in its stream exactly once; returns the number of entries."""
    entries: list[bytes] = []
    for stream in streams:
        entries += await _stream_ids(redis, stream)
    rows = await conn.fetch("SELECT id FROM outbox")
    for row in rows:
        assert sum(1 for e in entries if str(row["id"]).encode() in e) == 1, row["id"]
    assert len(entries) == len(rows)
    return len(entries)


# -- API submissions -------------------------------------------------------------------------


async def test_submission_is_queued_recorded_audited_and_published_once(intake: Any) -> None:
    edge, conn, redis = intake
    response = await edge.client.post(
        "/api/v1/investigate", json={"ticket_id": "PAY-101", "mode": "deep"}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    body = response.json()
    investigation_id = body["investigation_id"]
    assert body == {
        "investigation_id": investigation_id,
        "status": "queued",
        "message": "Investigation has been queued for processing.",
        "status_url": f"/api/v1/investigations/{investigation_id}",
    }
    row = await conn.fetchrow("SELECT * FROM investigations WHERE id = $1", uuid.UUID(investigation_id))
    assert row["ticket_id"] == "PAY-101"
    assert row["mode"] == "deep"
    assert row["max_iterations"] == 5
    assert json.loads(row["budget"]) == {}
    assert row["status"] == "queued"
    assert row["trigger_source"] == "api"
    assert row["priority"] == 3
    assert row["requested_by"].startswith("key:")
    assert API_KEY not in row["requested_by"]
    audit = await conn.fetchrow("SELECT * FROM audit_log WHERE resource_id = $1", investigation_id)
    assert audit["outcome"] == "accepted"
    assert audit["identity"] == row["requested_by"]
    assert audit["auth_method"] == "api_key"
    assert audit["action"] == "investigate"
    await _published(conn, 1)
    assert await _each_published_once(conn, redis, [_stream(edge)]) == 1
    _, fields = (await redis.xrange(_stream(edge)))[0]
    raw = b"".join(fields.values())
    assert investigation_id.encode() in raw
    outbox = await conn.fetchrow("SELECT * FROM outbox")
    event = events_pb2.InvestigationRequested.FromString(outbox["payload"])
    assert (event.investigation_id, event.ticket_id, event.event_id) == (investigation_id, "PAY-101", str(outbox["id"]))
    assert event.mode == types_pb2.MODE_DEEP
    assert event.priority == types_pb2.PRIORITY_TICKET
    assert event.trace_context, "the request's trace context travels with the event"

    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    by_jwt = await edge.client.post(
        "/api/v1/investigate", json={"ticket_id": "PAY-102"}, headers={"authorization": f"Bearer {token}"}
    )
    assert by_jwt.status_code == 202, by_jwt.text
    requested_by = await conn.fetchval("SELECT requested_by FROM investigations WHERE ticket_id = 'PAY-102'")
    assert requested_by == "jwt:alice"

    # A request's own budget is kept under the orchestrator's names.
    budgeted = await edge.client.post(
        "/api/v1/investigate",
        json={"ticket_id": "PAY-103", "budget": {"deadline_seconds": 300, "max_tool_calls": 40}},
        headers=AUTH,
    )
    assert budgeted.status_code == 202, budgeted.text
    budget = await conn.fetchval("SELECT budget FROM investigations WHERE ticket_id = 'PAY-103'")
    assert json.loads(budget) == {"wall_seconds": 300, "max_tool_calls": 40}


async def test_authentication_failures_are_401_audited_and_write_nothing(intake: Any) -> None:
    edge, conn, _ = intake
    now = int(time.time())
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "Authentication required. Provide x-api-key header or Bearer token."),
        ({"x-api-key": "wrong"}, "Invalid API key"),
        ({"x-api-key": API_KEY[:-1]}, "Invalid API key"),
        (
            {"authorization": "Bearer " + jwt.encode({"sub": "m", "exp": now - 120}, JWT_SECRET)},
            "Invalid or expired JWT",
        ),
        ({"authorization": "Bearer " + jwt.encode({"sub": "m"}, JWT_SECRET)}, "Invalid or expired JWT"),
        (
            {"authorization": "Bearer " + jwt.encode({"sub": "m", "exp": now + 60}, JWT_SECRET, algorithm="HS512")},
            "Invalid or expired JWT",
        ),
        (
            {
                "authorization": "Bearer "
                + jwt.encode({"sub": "m", "exp": now + 60}, "another-secret-of-sufficient-length-0123456789")
            },
            "Invalid or expired JWT",
        ),
        (
            {"authorization": "Bearer " + jwt.encode({"sub": "m", "exp": now + 60}, "", algorithm="none")},
            "Invalid or expired JWT",
        ),
        (
            {"authorization": "Bearer " + jwt.encode({"sub": "m", "exp": now + 60, "nbf": now + 600}, JWT_SECRET)},
            "Invalid or expired JWT",
        ),
    ]
    for headers, message in cases:
        response = await edge.client.post("/api/v1/investigate", json={"ticket_id": "SEC-1"}, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json() == {"error": message}
    assert await conn.fetchval("SELECT count(*) FROM investigations") == 0

    async def audited() -> bool:
        n = await conn.fetchval("SELECT count(*) FROM audit_log WHERE outcome = 'rejected' AND action = 'investigate'")
        return bool(n == len(cases))

    await wait_for(audited, timeout=10, what="rejections audited")
    reasons = {r["reason"] for r in await conn.fetch("SELECT reason FROM audit_log")}
    assert "Invalid API key" in reasons
    assert all(API_KEY not in str(r) for r in await conn.fetch("SELECT * FROM audit_log"))


async def test_bad_input_gets_a_4xx_that_names_the_problem_and_writes_nothing(intake: Any) -> None:
    edge, conn, _ = intake
    post = edge.client.post
    cases: list[tuple[str, Any, int, str, Any]] = [
        ("/api/v1/investigate", b'{"ticket_id": "A-1"', 400, "Malformed JSON body", None),
        ("/api/v1/investigate", b"[1, 2]", 400, "Validation failed", []),
        ("/api/v1/investigate", b"", 400, "Validation failed", []),
        ("/api/v1/investigate", {"ticket_id": 5}, 400, "Validation failed", ["ticket_id"]),
        ("/api/v1/investigate", {}, 400, "Validation failed", ["ticket_id"]),
        ("/api/v1/investigate", {"ticket_id": ""}, 400, "Validation failed", ["ticket_id"]),
        ("/api/v1/investigate", {"ticket_id": "A 1"}, 400, "Validation failed", ["ticket_id"]),
        ("/api/v1/investigate", {"ticket_id": "A-1", "colour": "red"}, 400, "Validation failed", ["colour"]),
        ("/api/v1/investigate", {"ticket_id": "A-1", "mode": "turbo"}, 400, "Validation failed", ["mode"]),
        (
            "/api/v1/investigate",
            {"ticket_id": "A-1", "callback_url": "ftp://x.example/cb"},
            400,
            "Validation failed",
            ["callback_url"],
        ),
        (
            "/api/v1/investigate",
            {"ticket_id": "A-1", "callback_url": "https://u:p@x.example/"},
            400,
            "Validation failed",
            ["callback_url"],
        ),
        (
            "/api/v1/investigate",
            {"ticket_id": "A-1", "callback_url": "not a url"},
            400,
            "Validation failed",
            ["callback_url"],
        ),
        (
            "/api/v1/investigate",
            {"ticket_id": "A-1", "budget": {"max_tool_calls": 0}},
            400,
            "Validation failed",
            ["budget", "max_tool_calls"],
        ),
        (
            "/api/v1/investigate",
            {"ticket_id": "A-1", "budget": {"tokens": 5}},
            400,
            "Validation failed",
            ["budget", "tokens"],
        ),
        ("/api/v1/investigate", {"ticket_id": "A-1", "budget": 30}, 400, "Validation failed", ["budget"]),
        ("/api/v1/investigate/batch", {"ticket_ids": []}, 400, "Validation failed", ["ticket_ids"]),
        (
            "/api/v1/investigate/batch",
            {"ticket_ids": [f"B-{i}" for i in range(21)]},
            400,
            "Validation failed",
            ["ticket_ids"],
        ),
        ("/api/v1/investigate/batch", {"ticket_ids": ["B-1", "B-1"]}, 400, "Validation failed", ["ticket_ids"]),
        ("/api/v1/investigate/batch", {"ticket_ids": "B-1"}, 400, "Validation failed", ["ticket_ids"]),
    ]
    for path, payload, status, error, field in cases:
        if isinstance(payload, bytes):
            response = await post(path, content=payload, headers={**AUTH, "content-type": "application/json"})
        else:
            response = await post(path, json=payload, headers=AUTH)
        assert response.status_code == status, (payload, response.text)
        body = response.json()
        assert body["error"] == error, (payload, body)
        if field is not None:
            assert next(d["path"] for d in body["details"]) == field, (payload, body)
            assert all(d["message"] and d["code"] for d in body["details"])
    batch_messages = await post("/api/v1/investigate/batch", json={"ticket_ids": []}, headers=AUTH)
    assert batch_messages.json()["details"][0]["message"] == "At least one ticket_id is required"
    too_many = await post("/api/v1/investigate/batch", json={"ticket_ids": [f"B-{i}" for i in range(21)]}, headers=AUTH)
    assert too_many.json()["details"][0]["message"] == "Maximum 20 tickets per batch"
    form = await post("/api/v1/investigate", content=b"ticket_id=A-1", headers={**AUTH, "content-type": "text/plain"})
    assert form.status_code == 415
    assert form.json()["error"] == "Unsupported content type"
    huge = await post("/api/v1/investigate", content=b"{" + b" " * (1024 * 1024 + 10) + b"}", headers=AUTH)
    assert huge.status_code == 413
    assert huge.json()["status"] == 413
    bad_id = await edge.client.get("/api/v1/webhooks/nope")
    assert bad_id.status_code == 404
    assert bad_id.json()["error"] == "Unknown webhook source"
    assert await conn.fetchval("SELECT count(*) FROM investigations") == 0
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_twenty_concurrent_submissions_of_one_ticket_make_one_investigation(intake: Any) -> None:
    edge, conn, redis = intake
    responses = await asyncio.gather(
        *[edge.client.post("/api/v1/investigate", json={"ticket_id": "RACE-1"}, headers=AUTH) for _ in range(20)]
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] + [409] * 19, codes
    winner = next(r for r in responses if r.status_code == 202).json()["investigation_id"]
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json() == {
            "error": "Active investigation already exists for this ticket",
            "investigation_id": winner,
            "status": "queued",
        }
    assert await conn.fetchval("SELECT count(*) FROM investigations WHERE ticket_id = 'RACE-1'") == 1
    await _published(conn, 1)
    assert await _each_published_once(conn, redis, [_stream(edge)]) == 1


async def test_batch_is_all_or_nothing(intake: Any) -> None:
    edge, conn, _ = intake
    first = await edge.client.post(
        "/api/v1/investigate/batch", json={"ticket_ids": ["BAT-1", "BAT-2", "BAT-3"], "mode": "fast"}, headers=AUTH
    )
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "queued"
    assert len(body["investigation_ids"]) == 3
    rows = await conn.fetch("SELECT * FROM investigations ORDER BY ticket_id")
    assert [r["ticket_id"] for r in rows] == ["BAT-1", "BAT-2", "BAT-3"]
    assert {str(r["batch_id"]) for r in rows} == {body["batch_id"]}
    assert {(r["trigger_source"], r["priority"], r["mode"]) for r in rows} == {("batch", 4, "fast")}
    budgeted = await edge.client.post(
        "/api/v1/investigate/batch", json={"ticket_ids": ["BAT-9"], "budget": {"max_cost_usd": 0.5}}, headers=AUTH
    )
    assert budgeted.status_code == 202, budgeted.text
    budget = await conn.fetchval("SELECT budget FROM investigations WHERE ticket_id = 'BAT-9'")
    assert json.loads(budget) == {"max_cost_usd": 0.5}
    await conn.execute(
        "DELETE FROM outbox WHERE aggregate_id IN (SELECT id FROM investigations WHERE ticket_id = 'BAT-9')"
    )
    await conn.execute("DELETE FROM investigations WHERE ticket_id = 'BAT-9'")
    second = await edge.client.post("/api/v1/investigate/batch", json={"ticket_ids": ["BAT-4", "BAT-2"]}, headers=AUTH)
    assert second.status_code == 409, second.text
    assert [a["ticket_id"] for a in second.json()["active"]] == ["BAT-2"]
    assert await conn.fetchval("SELECT count(*) FROM investigations") == 3
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 3


async def test_a_retried_request_with_the_same_idempotency_key_gets_the_same_answer(intake: Any) -> None:
    edge, conn, _ = intake
    headers = {**AUTH, "idempotency-key": "retry-1"}
    first = await edge.client.post("/api/v1/investigate", json={"ticket_id": "IDEM-1"}, headers=headers)
    again = await edge.client.post("/api/v1/investigate", json={"ticket_id": "IDEM-1"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    other = await edge.client.post("/api/v1/investigate", json={"ticket_id": "IDEM-2"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"] == "Idempotency key was already used for a different request"
    # Another caller's identical key is another key.
    theirs = await edge.client.post(
        "/api/v1/investigate",
        json={"ticket_id": "IDEM-3"},
        headers={"x-api-key": OTHER_KEY, "idempotency-key": "retry-1"},
    )
    assert theirs.status_code == 202
    assert await conn.fetchval("SELECT count(*) FROM investigations") == 2


async def test_rate_limit_is_shared_by_replicas(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        edge, _ = await _start(stack, tmp_path, settings={"RATE_LIMIT_INVESTIGATION_PER_MINUTE": "3"})
        # A second ingest replica on the same database and Redis, called over native gRPC.
        replica = await stack.enter_async_context(
            running_service(INGEST, {**edge.ingest_environ, "GRPC_LISTEN": "", "METRICS_LISTEN": "127.0.0.1:0"})
        )
        stub = ingest_pb2_grpc.IngestServiceStub(replica)
        for i in range(2):
            ok = await edge.client.post("/api/v1/investigate", json={"ticket_id": f"RL-{i}"}, headers=AUTH)
            assert ok.status_code == 202
        await stub.Investigate(
            ingest_pb2.InvestigateRequest(ticket_id="RL-2"), metadata=(("x-api-key", API_KEY),), timeout=10
        )
        limited = await edge.client.post("/api/v1/investigate", json={"ticket_id": "RL-3"}, headers=AUTH)
        assert limited.status_code == 429, limited.text
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        body = limited.json()
        assert body["error"] == "Rate limit exceeded"
        assert (body["limit"], body["window_seconds"], body["category"]) == (3, 60, "investigation")
        assert body["retry_after_seconds"] == int(limited.headers["retry-after"])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Investigate(
                ingest_pb2.InvestigateRequest(ticket_id="RL-4"), metadata=(("x-api-key", API_KEY),), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Another identity has its own budget.
        other = await edge.client.post(
            "/api/v1/investigate", json={"ticket_id": "RL-5"}, headers={"x-api-key": OTHER_KEY}
        )
        assert other.status_code == 202


async def test_redis_outage_loses_nothing_and_publishes_each_once_alerts_first(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        redis_server = await stack.enter_async_context(private_redis(stack_env()))
        edge, dsn = await _start(stack, tmp_path, redis_url=redis_server.url)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        before = await edge.client.post("/api/v1/investigate", json={"ticket_id": "OUT-0"}, headers=AUTH)
        assert before.status_code == 202
        await _published(conn, 1)
        await redis_server.stop()
        during = await asyncio.gather(
            *[
                edge.client.post("/api/v1/investigate", json={"ticket_id": f"OUT-{i}"}, headers=AUTH)
                for i in range(1, 6)
            ]
        )
        assert [r.status_code for r in during] == [202] * 5
        batch = await edge.client.post(
            "/api/v1/investigate/batch", json={"ticket_ids": ["OUT-B1", "OUT-B2"]}, headers=AUTH
        )
        assert batch.status_code == 202
        alert = _pd_event("PDOUT1", 77)
        pd = await edge.client.post("/api/v1/webhooks/pagerduty", content=alert, headers=_pd_headers(alert))
        assert pd.status_code == 202, pd.text
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 8
        await redis_server.start()
        await _published(conn, 9)
        redis = Redis.from_url(redis_server.url)
        stack.push_async_callback(redis.aclose)
        streams = [_stream(edge), _stream(edge, "pm.investigations.urgent")]
        # The first entry was lost with the killed server's memory; the 8 queued during the outage
        # are each there exactly once.
        assert sum([await redis.xlen(s) for s in streams]) == 8
        urgent = await _stream_ids(redis, streams[1])
        assert len(urgent) == 1
        assert b"PD-77" in urgent[0]
        rows = await conn.fetch("SELECT priority, stream_entry_id FROM outbox ORDER BY created_at OFFSET 1")

        def entry(row: asyncpg.Record) -> tuple[int, ...]:
            return tuple(int(p) for p in row["stream_entry_id"].split("-"))

        alert = next(r for r in rows if r["priority"] == 1)
        # Entry ids are (milliseconds, sequence) per stream: the alert, queued last, was not
        # published after any ticket (outbox_test.py checks the relay's order exactly).
        assert all(entry(alert)[0] <= entry(r)[0] for r in rows if r["priority"] != 1)


# -- webhooks --------------------------------------------------------------------------------


def _pd_event(incident_id: str, number: int, *, urgency: str = "high", event_type: str = "incident.triggered") -> bytes:
    return json.dumps(
        {
            "event": {
                "id": uuid.uuid4().hex,
                "event_type": event_type,
                "occurred_at": "2026-11-28T10:00:00Z",
                "data": {
                    "id": incident_id,
                    "number": number,
                    "urgency": urgency,
                    "title": "Checkout 5xx",
                    "html_url": "https://pd.example/incidents/" + incident_id,
                    "service": {"id": "PSVC", "summary": "Checkout API"},
                },
            }
        }
    ).encode()


def _pd_headers(body: bytes, *, extra_signatures: tuple[str, ...] = ()) -> dict[str, str]:
    signatures = [*extra_signatures, "v1=" + _sig(PD_SECRET, body)]
    return {"content-type": "application/json", "x-pagerduty-signature": ",".join(signatures)}


def _jira(event: str, key: str, **extra: Any) -> bytes:
    return json.dumps({"webhookEvent": event, "issue": {"key": key}, "user": {"displayName": "Dana"}, **extra}).encode()


async def test_jira_webhook_signature_filters_domains_and_dedup(intake: Any) -> None:
    edge, conn, _ = intake
    await conn.execute(
        "INSERT INTO domain_configs (id, name, settings) VALUES ($1, 'payments', '{\"jira_project\": \"pay\"}')",
        uuid.uuid4(),
    )
    url = "/api/v1/webhooks/jira"
    body = _jira("jira:issue_created", "pay-7")
    ok = await edge.client.post(url, content=body, headers={"x-hub-signature": "sha256=" + _sig(JIRA_SECRET, body)})
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "accepted"
    assert ok.json()["ticket_id"] == "PAY-7"
    row = await conn.fetchrow("SELECT * FROM investigations WHERE ticket_id = 'PAY-7'")
    assert (row["domain"], row["trigger_source"], row["requested_by"]) == ("payments", "jira_webhook", "jira:Dana")
    again = await edge.client.post(url, content=body, headers={"x-hub-signature": _sig(JIRA_SECRET, body).upper()})
    assert again.json() == {"status": "deduplicated", "existing_investigation_id": str(row["id"])}

    tampered = body.replace(b"pay-7", b"pay-8")
    forged = await edge.client.post(url, content=tampered, headers={"x-hub-signature": _sig(JIRA_SECRET, body)})
    assert forged.status_code == 401
    assert forged.json() == {"error": "Invalid webhook signature"}
    for headers in (
        {},
        {"x-hub-signature": "zz"},
        {"x-hub-signature": "sha256=" + "0" * 63},
        {"x-hub-signature": "é".encode()},
    ):
        rejected = await edge.client.post(url, content=body, headers=headers)
        assert rejected.status_code == 401, (headers, rejected.text)

    def signed(payload: bytes) -> dict[str, str]:
        return {"x-hub-signature": _sig(JIRA_SECRET, payload)}

    unlabelled = _jira("jira:issue_updated", "OPS-1", changelog={"items": [{"field": "status", "toString": "Done"}]})
    reply = await edge.client.post(url, content=unlabelled, headers=signed(unlabelled))
    assert reply.json()["status"] == "ignored"
    labelled = _jira(
        "jira:issue_updated",
        "OPS-2",
        changelog={"items": [{"field": "labels", "fromString": "backend", "toString": "backend auto-investigate"}]},
    )
    reply = await edge.client.post(url, content=labelled, headers=signed(labelled))
    assert reply.json()["status"] == "accepted", reply.text
    assert await conn.fetchval("SELECT domain FROM investigations WHERE ticket_id = 'OPS-2'") == "ops"
    for payload, reason in [
        (json.dumps({"issue": {"key": "X-1"}}).encode(), "no webhookEvent field"),
        (_jira("jira:issue_deleted", "X-1"), "event type jira:issue_deleted not handled"),
        (json.dumps({"webhookEvent": "jira:issue_created", "issue": {}}).encode(), "missing issue.key"),
    ]:
        reply = await edge.client.post(url, content=payload, headers=signed(payload))
        assert reply.json() == {"status": "ignored", "reason": reason}
    bad_key = _jira("jira:issue_created", "not a key")
    assert (await edge.client.post(url, content=bad_key, headers=signed(bad_key))).status_code == 400
    malformed = b'{"webhookEvent": '
    assert (await edge.client.post(url, content=malformed, headers=signed(malformed))).status_code == 400

    metrics = (await edge.client.get("/metrics")).text
    assert 'pm_webhook_rejections_total{reason="mismatch",source="jira"}' in metrics
    assert 'pm_webhook_rejections_total{reason="missing_header",source="jira"}' in metrics

    async def audited() -> bool:
        n = await conn.fetchval("SELECT count(*) FROM audit_log WHERE source = 'jira' AND outcome = 'rejected'")
        return bool(n >= 7)

    await wait_for(audited, timeout=10, what="jira rejections audited")
    assert JIRA_SECRET not in json.dumps(
        [dict(r) for r in await conn.fetch("SELECT reason, details FROM audit_log")], default=str
    )


async def test_jira_project_filter(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        edge, _ = await _start(stack, tmp_path, settings={"JIRA_PROJECT_FILTER": "pay, ops"})
        body = _jira("jira:issue_created", "HR-3")
        reply = await edge.client.post(
            "/api/v1/webhooks/jira", content=body, headers={"x-hub-signature": _sig(JIRA_SECRET, body)}
        )
        assert reply.json() == {"status": "ignored", "reason": "project HR not in filter"}


def _slack(text: str, *, ts: int | None = None, secret: str = SLACK_SECRET) -> tuple[bytes, dict[str, str]]:
    body = urlencode(
        {
            "command": "/investigate",
            "text": text,
            "user_id": "U1",
            "user_name": "sam",
            "channel_id": "C1",
            "channel_name": "incidents",
            "response_url": "https://hooks.slack.example/commands/1",
        }
    ).encode()
    stamp = str(ts if ts is not None else int(time.time()))
    signature = "v0=" + _sig(secret, b"v0:" + stamp.encode() + b":" + body)
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": signature,
    }
    return body, headers


async def test_slack_command_signature_replay_window_and_replies(intake: Any) -> None:
    edge, conn, _ = intake
    url = "/api/v1/webhooks/slack"
    body, headers = _slack("web-42 please")
    started = await edge.client.post(url, content=body, headers=headers)
    assert started.status_code == 200, started.text
    assert started.json()["response_type"] == "ephemeral"
    assert started.json()["text"].startswith(":rocket: Investigation started for *WEB-42*")
    row = await conn.fetchrow("SELECT * FROM investigations WHERE ticket_id = 'WEB-42'")
    assert row["trigger_source"] == "slack_command"
    assert row["requested_by"] == "slack:sam"
    assert json.loads(row["trigger_context"])["slack"]["response_url"] == "https://hooks.slack.example/commands/1"
    body2, headers2 = _slack("WEB-42")
    already = await edge.client.post(url, content=body2, headers=headers2)
    assert already.json()["text"] == f":mag: Investigation for *WEB-42* is already queued (ID: `{row['id']}`)."
    usage_body, usage_headers = _slack("")
    usage = await edge.client.post(url, content=usage_body, headers=usage_headers)
    assert usage.json()["text"].startswith("Usage: /investigate TICKET-123")

    old_body, old_headers = _slack("WEB-43", ts=int(time.time()) - 6 * 60)
    replay = await edge.client.post(url, content=old_body, headers=old_headers)
    assert replay.status_code == 401, replay.text
    future_body, future_headers = _slack("WEB-43", ts=int(time.time()) + 6 * 60)
    assert (await edge.client.post(url, content=future_body, headers=future_headers)).status_code == 401
    changed = body.replace(b"sam", b"sal")
    assert (await edge.client.post(url, content=changed, headers=headers)).status_code == 401
    missing = await edge.client.post(url, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert missing.status_code == 400
    assert missing.json() == {"error": "Missing Slack signature headers"}
    assert await conn.fetchval("SELECT count(*) FROM investigations WHERE ticket_id = 'WEB-43'") == 0


async def test_pagerduty_several_signatures_urgency_and_incident_dedup(intake: Any) -> None:
    edge, conn, redis = intake
    url = "/api/v1/webhooks/pagerduty"
    body = _pd_event("PABC", 12)
    headers = _pd_headers(body, extra_signatures=("v1=" + _sig("old-secret", body), "v2=whatever"))
    headers["x-webhook-id"] = "delivery-1"
    first = await edge.client.post(url, content=body, headers=headers)
    assert first.status_code == 202, first.text
    reply = first.json()
    assert (reply["status"], reply["ticket_id"], reply["domain"]) == ("queued", "PD-12", "checkout-api")
    row = await conn.fetchrow("SELECT * FROM investigations WHERE ticket_id = 'PD-12'")
    assert (row["mode"], row["priority"], row["trigger_source"]) == ("fast", 1, "pagerduty")
    retried = await edge.client.post(url, content=body, headers=headers)
    assert (retried.status_code, retried.json()) == (202, reply)
    # The same incident again under another delivery id: one investigation per incident.
    headers["x-webhook-id"] = "delivery-2"
    duplicate = await edge.client.post(url, content=body, headers=headers)
    assert duplicate.status_code == 200
    assert duplicate.json()["status"] == "duplicate"
    assert duplicate.json()["investigation_id"] == reply["investigation_id"]
    assert await conn.fetchval("SELECT count(*) FROM investigations") == 1
    await _published(conn, 1)
    assert await redis.xlen(_stream(edge, "pm.investigations.urgent")) == 1

    low = _pd_event("PLOW", 13, urgency="low")
    assert (await edge.client.post(url, content=low, headers=_pd_headers(low))).json() == {
        "status": "ignored",
        "reason": "urgency low is not high",
    }
    ack = _pd_event("PACK", 14, event_type="incident.acknowledged")
    assert (await edge.client.post(url, content=ack, headers=_pd_headers(ack))).json()["status"] == "ignored"
    only_wrong = await edge.client.post(url, content=body, headers={"x-pagerduty-signature": "v1=" + _sig("x", body)})
    assert only_wrong.status_code == 401
    only_v0 = await edge.client.post(
        url, content=body, headers={"x-pagerduty-signature": "v0=" + _sig(PD_SECRET, body)}
    )
    assert only_v0.status_code == 401
    no_event = b'{"messages": []}'
    refused_headers = {**_pd_headers(no_event), "x-webhook-id": "delivery-3"}
    missing_event = await edge.client.post(url, content=no_event, headers=refused_headers)
    # A refused delivery is not remembered: its retry is judged afresh, not answered "in progress".
    assert (await edge.client.post(url, content=no_event, headers=refused_headers)).status_code == 400
    assert missing_event.status_code == 400
    assert missing_event.json() == {"error": "Missing event in payload"}
    assert (await edge.client.get(url)).json() == {"status": "ok", "handler": "pagerduty-webhook"}


async def test_grafana_alerts_one_by_one_with_hmac_and_timestamp(intake: Any) -> None:
    edge, conn, _ = intake
    url = "/api/v1/webhooks/grafana-alert"
    payload = {
        "alerts": [
            {"status": "firing", "fingerprint": "abc123", "labels": {"alertname": "HighErrors", "service": "cart"}},
            {"status": "resolved", "fingerprint": "def456", "labels": {"alertname": "Old", "service": "cart"}},
            {"status": "firing", "fingerprint": "ghi789", "labels": {"alertname": "NoService"}},
        ]
    }
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "x-grafana-alerting-signature": _sig(GRAFANA_SECRET, stamp.encode() + b":" + body),
        "x-grafana-alerting-signature-timestamp": stamp,
    }
    reply = await edge.client.post(url, content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert (result["status"], result["total"], result["triggered"], result["skipped"], result["errors"]) == (
        "processed",
        3,
        1,
        2,
        0,
    )
    assert [r["status"] for r in result["results"]] == ["triggered", "skipped", "skipped"]
    row = await conn.fetchrow("SELECT * FROM investigations WHERE ticket_id = 'GRAFANA-abc123'")
    assert (row["domain"], row["priority"], row["mode"]) == ("cart", 1, "fast")
    again = await edge.client.post(url, content=body, headers=headers)
    assert again.json()["results"][0]["status"] == "deduplicated"
    assert again.json()["results"][0]["investigation_id"] == str(row["id"])
    without_ts = {"x-grafana-alerting-signature": _sig(GRAFANA_SECRET, body)}
    assert (await edge.client.post(url, content=body, headers=without_ts)).status_code == 200
    stale = str(int(time.time()) - 3600)
    stale_headers = {
        "x-grafana-alerting-signature": _sig(GRAFANA_SECRET, stale.encode() + b":" + body),
        "x-grafana-alerting-signature-timestamp": stale,
    }
    assert (await edge.client.post(url, content=body, headers=stale_headers)).status_code == 401
    assert (await edge.client.post(url, content=body + b" ", headers=without_ts)).status_code == 401
    assert await conn.fetchval("SELECT count(*) FROM investigations") == 1


async def test_deploy_events_are_recorded_filtered_and_deduplicated(intake: Any) -> None:
    edge, conn, redis = intake
    url = "/api/v1/webhooks/deploy"

    def signed(payload: dict[str, Any], delivery: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, {"x-hub-signature-256": "sha256=" + _sig(DEPLOY_SECRET, body), "x-github-delivery": delivery}

    body, headers = signed({"service": "cart", "version": "1.4.2", "deployer": "ci", "commit_sha": "abc"}, "d-1")
    reply = await edge.client.post(url, content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "status": "accepted",
        "service": "cart",
        "version": "1.4.2",
        "domain": "cart",
        "health_check_delay_ms": 30000,
        "message": "Deploy recorded. Health check scheduled in 30s.",
    }
    row = await conn.fetchrow("SELECT *, extract(epoch FROM check_due_at - created_at) AS delay FROM deploy_events")
    assert (row["service"], row["environment"], row["delivery_id"], row["check_status"]) == (
        "cart",
        "production",
        "d-1",
        "pending",
    )
    assert 29 <= row["delay"] <= 31
    again = await edge.client.post(url, content=body, headers=headers)
    assert again.json()["status"] == "duplicate"
    assert await conn.fetchval("SELECT count(*) FROM deploy_events") == 1
    await _published(conn, 1)
    assert await redis.xlen(_stream(edge, "pm.deploys")) == 1
    staging, staging_headers = signed({"service": "cart", "version": "1.4.3", "environment": "staging"}, "d-2")
    assert (await edge.client.post(url, content=staging, headers=staging_headers)).json()["status"] == "ignored"
    missing, missing_headers = signed({"service": "cart"}, "d-3")
    bad = await edge.client.post(url, content=missing, headers=missing_headers)
    assert bad.status_code == 400
    assert bad.json()["details"][0]["path"] == ["version"]
    bare = {"x-hub-signature-256": _sig(DEPLOY_SECRET, body)}
    assert (await edge.client.post(url, content=body, headers=bare)).status_code == 401


async def test_unconfigured_sources_are_refused_unless_marked_insecure(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        edge, dsn = await _start(
            stack, tmp_path, webhook_secrets=False, settings={"WEBHOOK_INSECURE_SOURCES": "deploy"}
        )
        body = _jira("jira:issue_created", "PAY-1")
        refused = await edge.client.post("/api/v1/webhooks/jira", content=body)
        assert refused.status_code == 503
        assert "JIRA_WEBHOOK_SECRET" in refused.json()["error"]
        slack = await edge.client.post("/api/v1/webhooks/slack", content=b"text=PAY-1")
        assert slack.status_code == 503
        assert slack.json() == {"error": "Slack integration not configured"}
        deploy = await edge.client.post("/api/v1/webhooks/deploy", json={"service": "cart", "version": "2"})
        assert deploy.status_code == 200
        assert deploy.json()["status"] == "accepted"
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT auth_method FROM audit_log WHERE outcome = 'accepted'") == "insecure"
            assert await conn.fetchval("SELECT count(*) FROM investigations") == 0
        finally:
            await conn.close()
