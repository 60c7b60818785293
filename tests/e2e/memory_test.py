"""Memory over REST, end to end: feedback and the knowledge it corroborates, knowledge entries,
accuracy and calibration, spending, and domain configs — through real Envoy into the real
orchestrator on real PostgreSQL. Expected figures are worked out by hand from the seeded rows."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from e2e.edge import start_edge
from pm_db import apply_migrations
from pm_secrets import VaultSecretSource
from pm_testing import fresh_database, stack_env, unique_name

API_KEY = "pm-memory-key-31b7"
OTHER_KEY = "pm-memory-key-second"
AUTH = {"x-api-key": API_KEY}
OTHER = {"x-api-key": OTHER_KEY}


class Memory:
    def __init__(self, client: httpx.AsyncClient, conn: asyncpg.Connection) -> None:
        self.client = client
        self.conn = conn

    async def investigation(
        self,
        *,
        domain: str | None = "payments",
        status: str = "completed",
        confidence: float | None = 0.9,
        verdict: str | None = "ROOT_CAUSE",
        cost: float = 0.0,
        created_at: dt.datetime | None = None,
    ) -> uuid.UUID:
        investigation_id = uuid.uuid4()
        terminal = status in ("completed", "failed", "cancelled")
        await self.conn.execute(
            "INSERT INTO investigations (id, ticket_id, domain, status, phase, verdict, confidence, cost_usd,"
            " input_tokens, output_tokens, tool_calls, created_at, completed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, now()),"
            " CASE WHEN $13 THEN now() END)",
            investigation_id,
            f"PAY-{str(investigation_id)[:8]}",
            domain,
            status,
            "deliver" if terminal else "gather",
            verdict if terminal else None,
            confidence if terminal else None,
            cost,
            int(cost * 100_000),
            int(cost * 10_000),
            3,
            created_at,
            terminal,
        )
        return investigation_id

    async def feedback(self, investigation_id: uuid.UUID, rating: str, at: str, by: str = "alice") -> None:
        await self.conn.execute(
            "INSERT INTO feedback (id, investigation_id, rating, submitted_by, submitted_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            uuid.uuid4(),
            investigation_id,
            rating,
            by,
            dt.datetime.fromisoformat(at),
        )


@pytest.fixture()
async def memory(tmp_path: Path) -> AsyncIterator[Memory]:
    async with AsyncExitStack() as stack:
        env = stack_env()
        dsn = await stack.enter_async_context(fresh_database(env))
        await apply_migrations(dsn)
        prefix = unique_name("pm-memory-")
        await VaultSecretSource(env.vault_addr, env.vault_token, prefix=prefix).put(
            "api-keys", f"{API_KEY},{OTHER_KEY}"
        )
        shared = {"VAULT_PATH_PREFIX": prefix, "RATE_LIMIT_QUERY_PER_MINUTE": "10000"}
        edge = await start_edge(stack, tmp_path, dsn, ingest_environ=shared, orchestrator_environ=shared)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        yield Memory(edge.client, conn)


# -- feedback and corroboration ----------------------------------------------------------------


async def test_feedback_is_recorded_listed_audited_and_checked(memory: Memory) -> None:
    done = await memory.investigation()
    url = f"/api/v1/investigations/{done}/feedback"
    created = await memory.client.post(url, json={"rating": "accurate", "submitted_by": "alice"}, headers=AUTH)
    assert created.status_code == 201, created.text
    feedback_id = created.json()["feedback_id"]
    second = await memory.client.post(url, json={"rating": "inaccurate"}, headers=OTHER)
    assert second.status_code == 201, second.text

    listed = await memory.client.get(url, headers=AUTH)
    assert listed.status_code == 200
    data = listed.json()["data"]
    assert [d["rating"] for d in data] == ["inaccurate", "accurate"]  # newest first
    assert data[1]["id"] == feedback_id
    assert data[1]["submitted_by"] == "alice"
    identity = await memory.conn.fetchval("SELECT identity FROM feedback WHERE id = $1", uuid.UUID(feedback_id))
    assert identity.startswith("key:")
    assert API_KEY not in identity
    audited = await memory.conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'feedback.submit' AND resource_id = $1", str(done)
    )
    assert audited == 2

    bad = {
        "not json": (b"{", "Malformed JSON body"),
        "unknown rating": (b'{"rating": "great"}', "Validation failed"),
        "unknown field": (b'{"rating": "accurate", "score": 5}', "Validation failed"),
        "missing rating": (b"{}", "Validation failed"),
        "long name": (b'{"rating": "accurate", "submitted_by": "' + b"x" * 101 + b'"}', "Validation failed"),
    }
    for case, (body, error) in bad.items():
        response = await memory.client.post(url, content=body, headers={**AUTH, "content-type": "application/json"})
        assert response.status_code == 400, case
        assert response.json()["error"] == error, case
    paths = {
        tuple(d["path"])
        for d in (await memory.client.post(url, json={"rating": "good", "extra": 1}, headers=AUTH)).json()["details"]
    }
    assert paths == {("rating",), ("extra",)}

    missing = await memory.client.post(
        f"/api/v1/investigations/{uuid.uuid4()}/feedback", json={"rating": "accurate"}, headers=AUTH
    )
    assert missing.status_code == 404
    assert missing.json()["error"] == "Investigation not found"
    assert (await memory.client.get(f"/api/v1/investigations/{uuid.uuid4()}/feedback", headers=AUTH)).status_code == 404
    assert (await memory.client.post("/api/v1/investigations/nope/feedback", json={"rating": "accurate"},
                                     headers=AUTH)).status_code == 400  # fmt: skip
    running = await memory.investigation(status="running")
    refused = await memory.client.post(
        f"/api/v1/investigations/{running}/feedback", json={"rating": "accurate"}, headers=AUTH
    )
    assert refused.status_code == 409
    assert refused.json() == {"error": "Feedback needs a completed investigation", "status": "running"}
    assert (await memory.client.post(url, json={"rating": "accurate"})).status_code == 401
    # Nothing but the two accepted ratings was written.
    assert await memory.conn.fetchval("SELECT count(*) FROM feedback") == 2


async def test_a_correction_becomes_active_knowledge_once_a_second_submitter_corroborates_it(memory: Memory) -> None:
    first, second, third = [await memory.investigation() for _ in range(3)]
    other_domain = await memory.investigation(domain="search")

    async def correct(investigation_id: uuid.UUID, text: str, by: str) -> None:
        response = await memory.client.post(
            f"/api/v1/investigations/{investigation_id}/feedback",
            json={"rating": "inaccurate", "corrected_root_cause": text, "submitted_by": by},
            headers=AUTH,
        )
        assert response.status_code == 201, response.text

    await correct(first, "Connection pool exhausted by the retry storm", "alice")
    entries = (await memory.client.get("/api/v1/knowledge", params={"service": "payments"}, headers=AUTH)).json()
    assert entries["pagination"]["total"] == 1
    entry = entries["data"][0]
    assert entry["confidence"] == "provisional"
    assert entry["source"] == "human"
    assert entry["category"] == "known_issue"
    assert entry["title"] == "Corrected RCA: connection pool exhausted by the retry storm"
    assert entry["content"]["corroboration_count"] == 1

    # The same submitter again, and the same text in another domain, corroborate nothing.
    await correct(second, "connection pool exhausted by the retry storm", "alice")
    await correct(other_domain, "Connection pool exhausted by the retry storm", "bob")
    got = (await memory.client.get(f"/api/v1/knowledge/{entry['id']}", headers=AUTH)).json()
    assert got["confidence"] == "provisional"
    assert got["content"]["feedback_count"] == 2

    # A second submitter, written differently (case, spacing), upgrades the same entry.
    await correct(third, "  CONNECTION pool   exhausted by the retry storm ", "bob")
    got = (await memory.client.get(f"/api/v1/knowledge/{entry['id']}", headers=AUTH)).json()
    assert got["confidence"] == "active"
    assert got["source"] == "corroborated"
    assert got["content"]["corroboration_count"] == 2
    assert len(got["source_feedback_ids"]) == 3
    exported = (await memory.client.get("/api/v1/knowledge/export/payments", headers=AUTH)).json()
    assert exported["count"] == 1
    assert exported["entries"][0]["id"] == entry["id"]
    # The other domain has its own, still provisional, entry.
    search = (await memory.client.get("/api/v1/knowledge", params={"service": "search"}, headers=AUTH)).json()
    assert [e["confidence"] for e in search["data"]] == ["provisional"]
    assert (await memory.client.get("/api/v1/knowledge/export/search", headers=AUTH)).json()["count"] == 0


# -- knowledge entries ------------------------------------------------------------------------


async def test_knowledge_list_filters_verify_and_archive(memory: Memory) -> None:
    ids = []
    for n, (service, category, confidence) in enumerate([
        ("payments", "known_issue", "provisional"),
        ("payments", "pattern", "active"),
        ("search", "known_issue", "active"),
    ]):  # fmt: skip
        entry_id = uuid.uuid4()
        await memory.conn.execute(
            "INSERT INTO knowledge_entries (id, service, category, title, confidence, source, created_at)"
            " VALUES ($1, $2, $3, $4, $5, 'human', now() - make_interval(mins => $6))",
            entry_id,
            service,
            category,
            f"entry {n}",
            confidence,
            10 - n,
        )
        ids.append(str(entry_id))

    async def listed(**params: Any) -> list[str]:
        response = await memory.client.get("/api/v1/knowledge", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["data"]]

    assert await listed() == ids[::-1]  # newest first
    assert await listed(service="payments") == [ids[1], ids[0]]
    assert await listed(category="known_issue", confidence="active") == [ids[2]]
    page = (await memory.client.get("/api/v1/knowledge", params={"limit": 2, "page": 2}, headers=AUTH)).json()
    assert [e["id"] for e in page["data"]] == [ids[0]]
    assert page["pagination"] == {"page": 2, "limit": 2, "total": 3, "total_pages": 2}
    for params in ({"category": "rumour"}, {"confidence": "maybe"}, {"limit": 101}, {"page": -1}):
        response = await memory.client.get("/api/v1/knowledge", params=params, headers=AUTH)
        assert response.status_code == 400, params
        assert response.json()["details"][0]["path"] == [next(iter(params))]

    verified = await memory.client.post(f"/api/v1/knowledge/{ids[0]}/verify", headers=AUTH)
    assert verified.status_code == 200
    assert verified.json()["confidence"] == "active"
    archived = await memory.client.post(f"/api/v1/knowledge/{ids[1]}/archive", headers=AUTH)
    assert archived.json()["confidence"] == "archived"
    first_archived_at = archived.json()["archived_at"]
    again = await memory.client.post(f"/api/v1/knowledge/{ids[1]}/archive", headers=AUTH)
    assert again.json()["archived_at"] == first_archived_at
    refused = await memory.client.post(f"/api/v1/knowledge/{ids[1]}/verify", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["current_confidence"] == "archived"
    exported = (await memory.client.get("/api/v1/knowledge/export/payments", headers=AUTH)).json()
    assert [e["id"] for e in exported["entries"]] == [ids[0]]

    missing = await memory.client.get(f"/api/v1/knowledge/{uuid.uuid4()}", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"] == "Knowledge entry not found"
    assert (await memory.client.post(f"/api/v1/knowledge/{uuid.uuid4()}/verify", headers=AUTH)).status_code == 404
    assert (await memory.client.get("/api/v1/knowledge/not-a-uuid", headers=AUTH)).status_code == 400
    actions = await memory.conn.fetch("SELECT action FROM audit_log WHERE resource_type = 'knowledge_entry'")
    assert sorted(r["action"] for r in actions) == ["knowledge.archive", "knowledge.archive", "knowledge.verify"]


# -- analytics ----------------------------------------------------------------------------------


async def _seed_ratings(memory: Memory) -> None:
    """Six rated investigations (and one unrated), with answers worked out in the tests below."""
    a = await memory.investigation(confidence=0.95)
    b = await memory.investigation(confidence=0.92)
    c = await memory.investigation(confidence=0.85)
    d = await memory.investigation(confidence=0.55)
    e = await memory.investigation(confidence=0.3, verdict="INCONCLUSIVE")
    f = await memory.investigation(domain="search", confidence=0.75)
    await memory.investigation(confidence=0.8)  # never rated
    await memory.feedback(a, "accurate", "2026-11-02T10:00:00+00:00")
    await memory.feedback(b, "inaccurate", "2026-11-03T10:00:00+00:00")
    await memory.feedback(b, "accurate", "2026-11-10T10:00:00+00:00", by="bob")  # the latest opinion counts
    await memory.feedback(c, "inaccurate", "2026-11-04T10:00:00+00:00")
    await memory.feedback(d, "accurate", "2026-11-11T10:00:00+00:00")
    await memory.feedback(e, "partially_accurate", "2026-11-12T10:00:00+00:00")
    await memory.feedback(f, "accurate", "2026-11-12T11:00:00+00:00")


async def test_weekly_accuracy_counts_each_investigation_once_by_its_latest_feedback(memory: Memory) -> None:
    await _seed_ratings(memory)

    async def accuracy(**params: str) -> dict[str, Any]:
        response = await memory.client.get("/api/v1/analytics/accuracy", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return dict(response.json())

    every = await accuracy()
    assert every["data"] == [
        {"period": "2026-11-02", "total": 2, "accurate": 1, "partially_accurate": 0, "inaccurate": 1,
         "accuracy_rate": 0.5, "domain": ""},
        {"period": "2026-11-09", "total": 4, "accurate": 3, "partially_accurate": 1, "inaccurate": 0,
         "accuracy_rate": 0.75, "domain": ""},
    ]  # fmt: skip
    assert [(p["period"], p["domain"], p["total"], p["accurate"]) for p in every["by_domain"]] == [
        ("2026-11-02", "payments", 2, 1),
        ("2026-11-09", "payments", 3, 2),
        ("2026-11-09", "search", 1, 1),
    ]
    # Until 8 November, b's latest opinion was still "inaccurate".
    early = await accuracy(domain="payments", to="2026-11-08")
    assert [(p["period"], p["total"], p["accurate"], p["inaccurate"], p["accuracy_rate"]) for p in early["data"]] == [
        ("2026-11-02", 3, 1, 2, 0.3333)
    ]
    late = await accuracy(**{"from": "2026-11-10T10:00:00Z"})
    assert [(p["period"], p["total"]) for p in late["data"]] == [("2026-11-09", 4)]
    for params in ({"from": "yesterday"}, {"to": "2026-13-01"}, {"from": "2026-11-10", "to": "2026-11-01"}):
        response = await memory.client.get("/api/v1/analytics/accuracy", params=params, headers=AUTH)
        assert response.status_code == 400, params
        assert response.json()["details"][0]["path"] in (["from"], ["to"])


async def test_calibration_compares_stated_confidence_with_observed_accuracy(memory: Memory) -> None:
    await _seed_ratings(memory)
    response = await memory.client.get("/api/v1/analytics/calibration", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    brackets = {b["confidence_range"]: b for b in body["data"]}
    assert list(brackets) == ["0.0-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.8-0.9", "0.9-1.0"]
    assert brackets["0.9-1.0"] == {
        "confidence_range": "0.9-1.0", "predictions": 2, "actually_accurate": 2, "mean_confidence": 0.935,
        "observed_accuracy": 1.0, "calibration_score": 0.065,
    }  # fmt: skip
    assert (brackets["0.8-0.9"]["predictions"], brackets["0.8-0.9"]["calibration_score"]) == (1, 0.85)
    assert (brackets["0.5-0.6"]["actually_accurate"], brackets["0.5-0.6"]["calibration_score"]) == (1, 0.45)
    assert brackets["0.0-0.5"]["calibration_score"] == 0.3  # partially accurate is not accurate
    assert brackets["0.6-0.7"]["predictions"] == 0
    assert body["total_predictions"] == 6
    # (2 x 0.065 + 0.85 + 0.45 + 0.3 + 0.25) / 6
    assert body["expected_calibration_error"] == pytest.approx(0.33, abs=1e-4)
    payments = (await memory.client.get("/api/v1/analytics/calibration", params={"domain": "payments"},
                                        headers=AUTH)).json()  # fmt: skip
    assert payments["total_predictions"] == 5
    assert payments["expected_calibration_error"] == pytest.approx(0.346, abs=1e-4)


async def test_cost_summary_and_cost_of_one_investigation(memory: Memory) -> None:
    now = dt.datetime.now(dt.UTC)
    expensive = await memory.investigation(cost=0.5)
    await memory.investigation(cost=0.25)
    await memory.investigation(domain="search", cost=0.125)
    await memory.investigation(cost=9.0, created_at=now - dt.timedelta(days=45))  # outside the default window
    step_id = uuid.uuid4()
    await memory.conn.execute(
        "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, task_id, status)"
        " VALUES ($1, $2, 'verify', 'verify', $3, 'succeeded')",
        step_id,
        expensive,
        f"task-{step_id}",
    )
    for model, cost in (("claude-sonnet-5-5", 0.375), ("claude-haiku-5-5", 0.125)):
        await memory.conn.execute(
            "INSERT INTO agent_runs (id, investigation_id, step_id, task_id, agent_name, phase, reasoner, model,"
            " status, input_tokens, output_tokens, cost_usd, llm_calls, tool_calls, duration_ms)"
            " VALUES ($1, $2, $3, $4, 'verify', 'verify', 'llm', $5, 'succeeded', 1000, 100, $6, 2, 1, 1500)",
            uuid.uuid4(),
            expensive,
            step_id,
            f"task-{model}",
            model,
            cost,
        )
    summary = (await memory.client.get("/api/v1/costs/summary", headers=AUTH)).json()
    assert summary["investigations"] == 3
    assert summary["total"]["cost_usd"] == 0.875
    assert summary["average_cost_usd"] == pytest.approx(0.875 / 3, abs=1e-6)
    assert [(d["key"], d["usage"]["cost_usd"], d["investigations"]) for d in summary["by_domain"]] == [
        ("payments", 0.75, 2),
        ("search", 0.125, 1),
    ]
    assert [(m["key"], m["usage"]["cost_usd"]) for m in summary["by_model"]] == [
        ("claude-sonnet-5-5", 0.375),
        ("claude-haiku-5-5", 0.125),
    ]
    older = (await memory.client.get("/api/v1/costs/summary", params={"from": "2020-01-01"}, headers=AUTH)).json()
    assert older["investigations"] == 4
    search = (await memory.client.get("/api/v1/costs/summary", params={"domain": "search"}, headers=AUTH)).json()
    assert search["total"]["cost_usd"] == 0.125

    one = await memory.client.get(f"/api/v1/costs/investigation/{expensive}", headers=AUTH)
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["total"]["cost_usd"] == 0.5
    assert body["total"]["llm_calls"] == 4
    assert [(s["model"], s["usage"]["cost_usd"], s["duration_ms"]) for s in body["steps"]] == [
        ("claude-sonnet-5-5", 0.375, 1500),
        ("claude-haiku-5-5", 0.125, 1500),
    ]
    assert body["budget_usd"] == 5.0  # the orchestrator's default ceiling
    assert (await memory.client.get(f"/api/v1/costs/investigation/{uuid.uuid4()}", headers=AUTH)).status_code == 404


# -- domain configs --------------------------------------------------------------------------------

PAYMENTS = {
    "name": "payments",
    "description": "Card payments",
    "services": ["payments-api", "ledger"],
    "mcp_servers": ["sandbox"],
    "settings": {
        "company": "acme",
        "repo": "payments",
        "github_org": "acme",
        "github_repo": "payments",
        "jira_project": "pay",
        "primary_services": [{"name": "payments-api", "artifact_id": "com.acme.payments-api"}],
        "slack_channels": {"alerts": "C0ALERTS", "incidents": "C0INC"},
        "grafana_url": "https://grafana.example.test/d/payments",
        "pagerduty_services": ["Payments API"],
        "health_check_threshold_multiplier": 1.5,
        "jira_assignment": {"enabled": True, "rules": [{"match_keywords_any": ["refund"], "group": "payments-oncall"}]},
    },
}


async def test_domain_configs_crud_validation_and_conflicts(memory: Memory) -> None:
    created = await memory.client.post("/api/v1/domains", json=PAYMENTS, headers=AUTH)
    assert created.status_code == 201, created.text
    domain = created.json()
    assert domain["settings"]["jira_project"] == "pay"
    assert domain["services"] == ["payments-api", "ledger"]
    stored = await memory.conn.fetchrow("SELECT jira_project, created_by FROM domain_configs WHERE id = $1",
                                        uuid.UUID(domain["id"]))  # fmt: skip
    assert stored["jira_project"] == "PAY"  # what intake's Jira routing matches on
    assert stored["created_by"].startswith("key:")

    assert (await memory.client.get(f"/api/v1/domains/{domain['id']}", headers=AUTH)).json()["name"] == "payments"
    assert (await memory.client.get("/api/v1/domains/payments", headers=AUTH)).json()["id"] == domain["id"]
    duplicate = await memory.client.post("/api/v1/domains", json=PAYMENTS, headers=AUTH)
    assert duplicate.status_code == 409
    assert duplicate.json() == {"error": "Domain already exists", "name": "payments"}
    stolen = await memory.client.post(
        "/api/v1/domains", json={"name": "refunds", "settings": {"jira_project": "PAY"}}, headers=AUTH
    )
    assert stolen.status_code == 409
    assert stolen.json()["domain"] == "payments"

    bad = {
        "unknown settings key": {"name": "x", "settings": {"colour": "blue"}},
        "bad url": {"name": "x", "settings": {"grafana_url": "grafana"}},
        "bad name": {"name": "has spaces"},
        "wrong type": {"name": "x", "services": "payments-api"},
        "repeated service": {"name": "x", "services": ["a", "a"]},
        "bad multiplier": {"name": "x", "settings": {"health_check_threshold_multiplier": 0}},
        "bad rule": {"name": "x", "settings": {"jira_assignment": {"rules": [{"assignee_email": "nobody"}]}}},
    }
    for case, body in bad.items():
        response = await memory.client.post("/api/v1/domains", json=body, headers=AUTH)
        assert response.status_code == 400, (case, response.text)
        assert response.json()["error"] == "Validation failed", case
    problem = (await memory.client.post("/api/v1/domains", json=bad["bad url"], headers=AUTH)).json()["details"][0]
    assert problem["path"] == ["settings", "grafana_url"]

    replaced = await memory.client.put(
        "/api/v1/domains/payments", json={"name": "payments", "services": ["payments-api"]}, headers=AUTH
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["settings"] == {}  # PUT replaces the whole config
    assert replaced.json()["id"] == domain["id"]
    # With PAY released, another domain may claim it now.
    moved = await memory.client.post(
        "/api/v1/domains", json={"name": "refunds", "settings": {"jira_project": "PAY"}}, headers=AUTH
    )
    assert moved.status_code == 201, moved.text
    listed = (await memory.client.get("/api/v1/domains", headers=AUTH)).json()["data"]
    assert [d["name"] for d in listed] == ["payments", "refunds"]

    deleted = await memory.client.delete(f"/api/v1/domains/{domain['id']}", headers=AUTH)
    assert deleted.status_code == 204
    assert (await memory.client.get(f"/api/v1/domains/{domain['id']}", headers=AUTH)).status_code == 404
    missing = await memory.client.delete("/api/v1/domains/nothing", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"] == "Domain not found"
    assert (await memory.client.post("/api/v1/domains", json=PAYMENTS)).status_code == 401
    actions = [r["action"] for r in await memory.conn.fetch(
        "SELECT action FROM audit_log WHERE resource_type = 'domain' ORDER BY id")]  # fmt: skip
    assert actions == ["domain.create", "domain.update", "domain.create", "domain.delete"]


# -- meta analysis ----------------------------------------------------------------------------------


async def test_meta_analysis_proposes_from_feedback_and_review_applies_as_knowledge(memory: Memory) -> None:
    payments = [await memory.investigation(confidence=0.9) for _ in range(6)]
    for investigation_id in payments[:2]:
        await memory.feedback(investigation_id, "accurate", "2026-11-20T10:00:00+00:00")
    for investigation_id, by in zip(payments[2:5], ("alice", "bob", "carol"), strict=True):
        response = await memory.client.post(
            f"/api/v1/investigations/{investigation_id}/feedback",
            json={"rating": "inaccurate", "corrected_root_cause": "Retry storm exhausted the pool", "submitted_by": by},
            headers=AUTH,
        )
        assert response.status_code == 201
    await memory.feedback(payments[5], "inaccurate", "2026-11-20T10:00:00+00:00")
    # Too few ratings in search; ledger is rated and right.
    for _ in range(3):
        await memory.feedback(await memory.investigation(domain="search"), "inaccurate", "2026-11-20T10:00:00+00:00")
    for _ in range(5):
        await memory.feedback(await memory.investigation(domain="ledger"), "accurate", "2026-11-20T10:00:00+00:00")

    analyzed = await memory.client.post("/api/v1/meta/analyze", headers=AUTH)
    assert analyzed.status_code == 200, analyzed.text
    body = analyzed.json()
    assert body["message"] == "Meta-analysis complete"
    proposals = {(r["type"], r["target"]): r for r in body["recommendations"]}
    assert set(proposals) == {
        ("threshold_adjustment", "payments"),
        ("workflow_change", "payments"),
        ("prompt_rewrite", "hypothesize"),
    }
    assert body["recommendations_created"] == 3
    assert "accurate 33% of the time" in proposals["threshold_adjustment", "payments"]["rationale"]
    assert "retry storm exhausted the pool" in proposals["prompt_rewrite", "hypothesize"]["proposed_value"].lower()
    again = (await memory.client.post("/api/v1/meta/analyze", headers=AUTH)).json()
    assert again["recommendations_created"] == 0

    pending = (await memory.client.get("/api/v1/meta/recommendations", headers=AUTH)).json()
    assert pending["pagination"]["total"] == 3
    threshold = proposals["threshold_adjustment", "payments"]["id"]
    workflow = proposals["workflow_change", "payments"]["id"]
    base = "/api/v1/meta/recommendations"

    early = await memory.client.post(f"{base}/{threshold}/apply", headers=AUTH)
    assert early.status_code == 409
    assert early.json() == {"error": "Only approved recommendations can be applied", "current_status": "pending"}
    nobody = await memory.client.post(f"{base}/{threshold}/approve", json={}, headers=AUTH)
    assert nobody.status_code == 400
    assert nobody.json()["details"][0]["message"] == "reviewer is required"
    approved = await memory.client.post(f"{base}/{threshold}/approve", json={"reviewer": "dana"}, headers=AUTH)
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["reviewer"]) == ("approved", "dana")
    twice = await memory.client.post(f"{base}/{threshold}/approve", json={"reviewer": "dana"}, headers=AUTH)
    assert twice.status_code == 409
    assert twice.json() == {"error": "Recommendation cannot be approved", "current_status": "approved"}
    silent = await memory.client.post(f"{base}/{workflow}/reject", json={"reviewer": "dana"}, headers=AUTH)
    assert silent.status_code == 400
    assert silent.json()["details"][0]["message"] == "note is required when rejecting"
    rejected = await memory.client.post(
        f"{base}/{workflow}/reject", json={"reviewer": "dana", "note": "deep mode costs too much here"}, headers=AUTH
    )
    assert rejected.json()["status"] == "rejected"

    applied = await memory.client.post(f"{base}/{threshold}/apply", headers=AUTH)
    assert applied.status_code == 200, applied.text
    entry = applied.json()["knowledge_entry"]
    assert applied.json()["message"] == "Recommendation applied as knowledge entry"
    assert (entry["service"], entry["category"], entry["confidence"], entry["source"]) == (
        "payments", "known_issue", "active", "agent",
    )  # fmt: skip
    assert entry["source_recommendation_id"] == threshold
    stored = (await memory.client.get(f"{base}/{threshold}", headers=AUTH)).json()
    assert stored["status"] == "applied"
    assert stored["applied_at"]
    assert (await memory.client.post(f"{base}/{threshold}/apply", headers=AUTH)).status_code == 409
    # Neither the rejected nor the applied idea comes back while it is fresh.
    assert (await memory.client.post("/api/v1/meta/analyze", headers=AUTH)).json()["recommendations_created"] == 0
    listed = (await memory.client.get(base, params={"status": "applied"}, headers=AUTH)).json()["data"]
    assert [r["id"] for r in listed] == [threshold]
    assert (await memory.client.get(base, params={"status": "done"}, headers=AUTH)).status_code == 400
    unknown = uuid.uuid4()
    missing = await memory.client.get(f"{base}/{unknown}", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Recommendation not found", "id": str(unknown)}
