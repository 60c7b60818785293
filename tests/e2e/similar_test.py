"""Similar incidents end to end: the real orchestrator's embedder loop embeds completed
investigations with the real local model, and GET /api/v1/investigations/{id}/similar answers
through real Envoy with the predecessor's bare array, its 400s and 404s, behind the API's
authentication and rate limit."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from e2e.edge import start_edge
from pm_db import apply_migrations
from pm_embeddings import locate_model_dir
from pm_secrets import VaultSecretSource
from pm_testing import fresh_database, stack_env, unique_name, wait_for

API_KEY = "pm-similar-key-7c21"
AUTH = {"x-api-key": API_KEY}
QUERY_LIMIT = 30

INCIDENTS: dict[str, dict[str, Any]] = {
    "pool-inventory": {
        "alert": {
            "service": "inventoryservice",
            "metric": "p99_latency_ms",
            "summary": "inventoryservice p99 latency above 2s: requests wait for database connections",
            "detail": "Logs: 'timeout acquiring connection from pool (max=20, in use=20, waiting=143)'.",
        },
        "summary": "perf: open a DB session per SKU lookup (3f9a2c1d), shipped with inventoryservice, explains the"
        " symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "3f9a2c1d",
            "service": "inventoryservice",
            "title": "perf: open a DB" " session per SKU lookup",
        },  # fmt: skip
    },
    "pool-billing": {
        "alert": {
            "service": "billing",
            "metric": "p99_latency_ms",
            "summary": "billing p99 latency above 3s: requests queue for a database connection",
            "detail": "Errors: 'connection pool exhausted: all 50 connections in use'.",
        },
        "summary": "perf: open a new DB connection per invoice line (77ab01ce), shipped with billing, explains the"
        " symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "77ab01ce",
            "service": "billing",
            "title": "perf: open a new DB" " connection per invoice line",
        },  # fmt: skip
    },
    "disk": {
        "alert": {
            "service": "logship",
            "metric": "disk_used_ratio",
            "summary": "logship node disk usage above 95%",
            "detail": "Writes fail with 'no space left on device'; log volume grew 40x.",
        },
        "summary": "chore: set the default log level to debug (a81c0f3e), shipped with logship, explains the symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "a81c0f3e",
            "service": "logship",
            "title": "chore: set the default log" " level to debug",
        },  # fmt: skip
    },
}


@dataclass
class Similar:
    client: httpx.AsyncClient
    conn: asyncpg.Connection
    ids: dict[str, uuid.UUID]


async def _seed(conn: asyncpg.Connection, name: str, incident: dict[str, Any], status: str = "completed") -> uuid.UUID:
    """A finished investigation as the engine leaves it: its row, its TRIAGE step and its report."""
    investigation_id = uuid.uuid4()
    terminal = status == "completed"
    await conn.execute(
        "INSERT INTO investigations (id, ticket_id, status, phase, verdict, completed_at)"
        " VALUES ($1, $2, $3, 'deliver', $4, CASE WHEN $5 THEN now() END)",
        investigation_id,
        f"INC-{name}",
        status,
        "ROOT_CAUSE" if terminal else None,
        terminal,
    )
    await conn.execute(
        "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, iteration, status, task_id, output,"
        " finished_at) VALUES ($1, $2, 'triage', 'triage', 1, 'succeeded', $3, $4::text::jsonb, now())",
        uuid.uuid4(),
        investigation_id,
        f"{investigation_id}:triage:triage:1:1",
        json.dumps({"alert": incident["alert"]}),
    )
    if terminal:
        await conn.execute(
            "INSERT INTO reports (id, investigation_id, verdict, confidence, summary, first_failing_service,"
            " culprit_change, markdown) VALUES ($1, $2, 'ROOT_CAUSE', 0.8, $3, $4, $5::text::jsonb, '# report')",
            uuid.uuid4(),
            investigation_id,
            incident["summary"],
            incident["alert"]["service"],
            json.dumps(incident["culprit"]),
        )
    return investigation_id


@pytest.fixture()
async def similar(tmp_path: Path) -> AsyncIterator[Similar]:
    env = stack_env()
    model = locate_model_dir("", [env.stack_dir.parent / "models" / "all-minilm-l6-v2"])
    if model is None:
        pytest.fail("the embedding model is missing (.stack/models/all-minilm-l6-v2); run ./pm once")
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(fresh_database(env))
        await apply_migrations(dsn)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        ids = {name: await _seed(conn, name, incident) for name, incident in INCIDENTS.items()}
        ids["running"] = await _seed(conn, "running", INCIDENTS["disk"], status="running")
        prefix = unique_name("pm-similar-")
        await VaultSecretSource(env.vault_addr, env.vault_token, prefix=prefix).put("api-keys", API_KEY)
        shared = {"VAULT_PATH_PREFIX": prefix, "RATE_LIMIT_QUERY_PER_MINUTE": str(QUERY_LIMIT)}
        edge = await start_edge(
            stack,
            tmp_path,
            dsn,
            ingest_environ=shared,
            orchestrator_environ={**shared, "EMBEDDING_MODEL_DIR": str(model), "EMBEDDING_INTERVAL_SECONDS": "0.2"},
        )

        async def embedded() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM incident_embeddings") == len(INCIDENTS))

        await wait_for(embedded, timeout=60, what="the orchestrator embedding the completed investigations")
        yield Similar(edge.client, conn, ids)


async def test_the_closest_past_incidents_come_as_a_bare_array(similar: Similar) -> None:
    response = await similar.client.get(f"/api/v1/investigations/{similar.ids['pool-inventory']}/similar", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    found = response.json()
    assert isinstance(found, list)
    assert [item["investigation_id"] for item in found] == [str(similar.ids["pool-billing"]), str(similar.ids["disk"])]
    assert set(found[0]) == {"investigation_id", "ticket_id", "similarity_score", "summary", "verdict"}
    assert found[0]["ticket_id"] == "INC-pool-billing"
    assert found[0]["summary"] == INCIDENTS["pool-billing"]["summary"]
    assert found[0]["verdict"] == "ROOT_CAUSE"
    assert 1 > found[0]["similarity_score"] > found[1]["similarity_score"] > -1

    one = await similar.client.get(
        f"/api/v1/investigations/{similar.ids['disk']}/similar", params={"limit": 1}, headers=AUTH
    )
    assert one.status_code == 200, one.text
    assert len(one.json()) == 1
    # The embedder stored exactly one row per completed investigation, none for the running one.
    rows = await similar.conn.fetch("SELECT investigation_id, model FROM incident_embeddings")
    assert sorted(r["investigation_id"] for r in rows) == sorted(similar.ids[n] for n in INCIDENTS)
    assert {r["model"] for r in rows} == {"all-MiniLM-L6-v2"}


async def test_limit_outside_1_to_20_is_a_400_naming_it(similar: Similar) -> None:
    url = f"/api/v1/investigations/{similar.ids['disk']}/similar"
    for limit in ("21", "-1"):
        response = await similar.client.get(url, params={"limit": limit}, headers=AUTH)
        assert response.status_code == 400, (limit, response.text)
        body = response.json()
        assert body["error"] == "Validation failed"
        assert body["details"] == [{"path": ["limit"], "message": "must be between 1 and 20", "code": "out_of_range"}]
    not_a_number = await similar.client.get(url, params={"limit": "many"}, headers=AUTH)
    assert not_a_number.status_code == 400
    assert "limit" in not_a_number.json()["error"]


async def test_unknown_and_unembedded_investigations_are_404s(similar: Similar) -> None:
    unknown = await similar.client.get(f"/api/v1/investigations/{uuid.uuid4()}/similar", headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "Investigation not found"

    running = await similar.client.get(f"/api/v1/investigations/{similar.ids['running']}/similar", headers=AUTH)
    assert running.status_code == 404
    assert running.json()["error"] == "No embedding found for this investigation"
    assert running.json()["investigation_status"] == "running"

    malformed = await similar.client.get("/api/v1/investigations/not-a-uuid/similar", headers=AUTH)
    assert malformed.status_code == 400
    assert malformed.json()["details"][0]["message"] == "Invalid investigation id"


async def test_similar_is_authenticated_and_rate_limited_like_the_other_reads(similar: Similar) -> None:
    url = f"/api/v1/investigations/{similar.ids['disk']}/similar"
    anonymous = await similar.client.get(url)
    assert anonymous.status_code == 401
    wrong = await similar.client.get(url, headers={"x-api-key": "not-the-key"})
    assert wrong.status_code == 401
    statuses = [(await similar.client.get(url, headers=AUTH)).status_code for _ in range(QUERY_LIMIT + 1)]
    assert statuses.count(200) <= QUERY_LIMIT
    assert statuses[-1] == 429
