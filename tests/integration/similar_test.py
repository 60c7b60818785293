"""Similar incidents on the real PostgreSQL + pgvector with the real local model: completed
investigations are embedded once each (also by two replicas at once), missed ones are
backfilled, and a paraphrase of an incident's symptom finds that incident first."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from integration.engine_test import SCENARIO, _engine, _submit, _until_done
from integration.sandbox import registry_config
from pm_db import apply_migrations, open_pool
from pm_embeddings import EmbeddingsUnavailable, LocalMiniLM, OpenAIEmbeddings, locate_model_dir
from pm_orchestrator.similar import (
    EmbeddingMetrics,
    HypothesisContext,
    IncidentMemory,
    build_embedder,
    incident_text,
    nearest,
    query_text,
    vector_literal,
)
from pm_secrets import InMemorySecretSource
from pm_testing import fresh_database, stack_env, wait_for

# Seven past incidents of distinct kinds; the two connection-pool ones are each other's nearest.
INCIDENTS: dict[str, dict[str, Any]] = {
    "pool-inventory": {
        "alert": {
            "service": "inventoryservice",
            "metric": "p99_latency_ms",
            "summary": "inventoryservice p99 latency above 2s: requests wait for database connections",
            "detail": "Logs: 'timeout acquiring connection from pool (max=20, in use=20, waiting=143)'.",
        },
        "summary": "perf: open a DB session per SKU lookup (3f9a2c1d), shipped with inventoryservice at"
        " 2026-05-02T10:14:00Z, explains the symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "3f9a2c1d",
            "service": "inventoryservice",
            "title": "perf: open a DB" " session per SKU lookup",
        },
        "first_failing_service": "inventoryservice",
    },
    "pool-billing": {
        "alert": {
            "service": "billing",
            "metric": "p99_latency_ms",
            "summary": "billing p99 latency above 3s: requests queue for a database connection",
            "detail": "Errors: 'connection pool exhausted: all 50 connections in use'.",
        },
        "summary": "perf: open a new DB connection per invoice line (77ab01ce), shipped with billing at"
        " 2026-07-11T08:02:00Z, explains the symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "77ab01ce",
            "service": "billing",
            "title": "perf: open a new DB connection per invoice line",
        },
        "first_failing_service": "billing",
    },
    "tls": {
        "alert": {
            "service": "orderservice",
            "metric": "upstream_call_error_ratio",
            "summary": "orderservice outbound calls to paymentservice failing above 5%",
            "detail": "TLS handshake failures: 'x509: certificate has expired or is not yet valid'.",
        },
        "verdict": "INCONCLUSIVE",
        "summary": "No change explains this. Operational signal: the paymentservice serving certificate expired.",
        "culprit": None,
        "first_failing_service": "orderservice",
    },
    "disk": {
        "alert": {
            "service": "logship",
            "metric": "disk_used_ratio",
            "summary": "logship node disk usage above 95%",
            "detail": "Writes fail with 'no space left on device'; log volume grew 40x.",
        },
        "summary": "chore: set the default log level to debug (a81c0f3e), shipped with logship at"
        " 2026-03-09T22:40:00Z, explains the symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "a81c0f3e",
            "service": "logship",
            "title": "chore: set the default log" " level to debug",
        },
        "first_failing_service": "logship",
    },
    "nil": {
        "alert": {
            "service": "paymentservice",
            "metric": "container_restarts",
            "summary": "paymentservice pods restarting more than 5 times in 10m",
            "detail": "panic: runtime error: invalid memory address or nil pointer dereference in ChargeCard.",
        },
        "summary": "refactor: make card metadata optional (c0ffee12), shipped with paymentservice at"
        " 2026-08-21T14:00:00Z, explains the symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "c0ffee12",
            "service": "paymentservice",
            "title": "refactor: make card" " metadata optional",
        },
        "first_failing_service": "paymentservice",
    },
    "deadline": {
        "alert": {
            "service": "checkoutservice",
            "metric": "grpc_error_ratio",
            "summary": "checkoutservice gRPC DEADLINE_EXCEEDED above 2%",
            "detail": "Calls to shippingservice GetQuote exceed their 100ms deadline.",
        },
        "summary": "config: tighten the shipping quote deadline to 100ms (5e5e5e5e), shipped with checkoutservice"
        " at 2026-02-14T09:30:00Z, explains the symptom.",
        "culprit": {
            "kind": "commit",
            "ref": "5e5e5e5e",
            "service": "checkoutservice",
            "title": "config: tighten the" " shipping quote deadline to 100ms",
        },
        "first_failing_service": "checkoutservice",
    },
    "surge": {
        "alert": {
            "service": "frontend",
            "metric": "request_rate",
            "summary": "frontend request rate 8x baseline and p99 latency 4s",
            "detail": "The flash sale campaign started at 12:00; the autoscaler is at its maximum replicas.",
        },
        "verdict": "INCONCLUSIVE",
        "summary": "No change explains this. Operational signal: a traffic surge from the flash sale.",
        "culprit": None,
        "first_failing_service": "frontend",
    },
}

# A new incident's symptom as HYPOTHESIZE would see it, in other words, and the incident it is.
PARAPHRASES = {
    "inventory lookups time out waiting to check out a database connection; the pool is at its maximum": (
        "pool-inventory"
    ),
    "handshake errors between the order and payment services: x509 certificate expired": "tls",
    "log servers ran out of disk space after verbose logging was switched on": "disk",
    "payment pods keep crashing with a nil pointer panic while charging cards": "nil",
    "checkout fails with deadline exceeded when it asks shipping for a quote": "deadline",
    "a huge spike of shoppers during the promotion overwhelmed the web frontend": "surge",
}


def model_dir() -> Path:
    """The model ./pm fetched, beside the test stack's folder."""
    candidates = [Path(stack_env().stack_dir).parent / "models" / "all-minilm-l6-v2"]
    found = locate_model_dir(os.environ.get("EMBEDDING_MODEL_DIR", ""), candidates)
    if found is None:
        pytest.fail(f"the embedding model is missing (looked in {candidates[0]}); run ./pm once")
    return found


async def seed(
    conn: asyncpg.Connection, name: str, incident: Mapping[str, Any], *, status: str = "completed"
) -> uuid.UUID:
    """A finished investigation as the engine leaves it: its row, its TRIAGE step and its report."""
    investigation_id = uuid.uuid4()
    verdict = incident.get("verdict", "ROOT_CAUSE")
    terminal = status in ("completed", "failed", "cancelled")
    await conn.execute(
        "INSERT INTO investigations (id, ticket_id, status, phase, verdict, summary, completed_at)"
        " VALUES ($1, $2, $3, 'deliver', $4, $5, CASE WHEN $6 THEN now() END)",
        investigation_id,
        f"INC-{name}-{str(investigation_id)[:6]}",
        status,
        verdict,
        incident["summary"],
        terminal,
    )
    await conn.execute(
        "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, iteration, status, task_id, output,"
        " finished_at) VALUES ($1, $2, 'triage', 'triage', 1, 'succeeded', $3, $4, now())",
        uuid.uuid4(),
        investigation_id,
        f"{investigation_id}:triage:triage:1:1",
        {"alert": incident["alert"]},
    )
    await conn.execute(
        "INSERT INTO reports (id, investigation_id, verdict, confidence, summary, first_failing_service,"
        " culprit_change, markdown) VALUES ($1, $2, $3, 0.8, $4, $5, $6, '# report')",
        uuid.uuid4(),
        investigation_id,
        verdict,
        incident["summary"],
        incident["first_failing_service"],
        incident["culprit"],
    )
    return investigation_id


class Seeded:
    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection, local: LocalMiniLM) -> None:
        self.pool = pool
        self.conn = conn
        self.local = local
        self.ids: dict[str, uuid.UUID] = {}

    def memory(self, metrics: EmbeddingMetrics | None = None, batch_size: int = 3) -> IncidentMemory:
        return IncidentMemory(self.pool, self.local, metrics, batch_size=batch_size)

    async def embeddings(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM incident_embeddings"))


@pytest.fixture()
async def seeded() -> AsyncIterator[Seeded]:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        async with open_pool(dsn, max_size=6) as pool:
            conn = await asyncpg.connect(dsn)
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            try:
                state = Seeded(pool, conn, LocalMiniLM(model_dir()))
                for name, incident in INCIDENTS.items():
                    state.ids[name] = await seed(conn, name, incident)
                yield state
            finally:
                await conn.close()


def _counter(registry: CollectorRegistry, status: str) -> float:
    return registry.get_sample_value("pm_embeddings_total", {"status": status}) or 0.0


async def test_a_paraphrased_symptom_finds_its_incident_first(seeded: Seeded) -> None:
    memory = seeded.memory()
    assert await memory.embed_pending() == len(INCIDENTS)
    names = {v: k for k, v in seeded.ids.items()}
    for text, expected in PARAPHRASES.items():
        vector = (await seeded.local.embed([text]))[0]
        found = await nearest(seeded.pool, vector_literal(vector), seeded.local.model, 3)
        ranked = [(names[f.investigation_id], f.similarity_score) for f in found]
        assert ranked[0][0] == expected, (text, ranked)
        assert ranked[0][1] > ranked[1][1]


async def test_the_connection_pool_incidents_are_each_others_nearest(seeded: Seeded) -> None:
    await seeded.memory().embed_pending()
    own = await seeded.conn.fetchval(
        "SELECT embedding::text FROM incident_embeddings WHERE investigation_id = $1", seeded.ids["pool-inventory"]
    )
    found = await nearest(seeded.pool, own, seeded.local.model, 20, exclude=[seeded.ids["pool-inventory"]])
    assert found[0].investigation_id == seeded.ids["pool-billing"]
    assert seeded.ids["pool-inventory"] not in [f.investigation_id for f in found]
    assert len(found) == len(INCIDENTS) - 1
    scores = [f.similarity_score for f in found]
    assert scores == sorted(scores, reverse=True)


async def test_each_completed_investigation_is_embedded_once_and_missed_ones_are_backfilled(seeded: Seeded) -> None:
    registry = CollectorRegistry()
    memory = seeded.memory(EmbeddingMetrics(registry))
    assert await memory.embed_pending() == len(INCIDENTS)  # three batches of at most 3
    assert await memory.embed_pending() == 0
    assert await seeded.embeddings() == len(INCIDENTS)
    assert _counter(registry, "stored") == len(INCIDENTS)

    # Not completed, or without a report yet: not embedded.
    await seed(seeded.conn, "running", INCIDENTS["disk"], status="running")
    await seed(seeded.conn, "failed", INCIDENTS["disk"], status="failed")
    later = await seed(seeded.conn, "later", INCIDENTS["nil"])
    lost = seeded.ids["tls"]
    await seeded.conn.execute("DELETE FROM incident_embeddings WHERE investigation_id = $1", lost)
    assert await memory.embed_pending() == 2
    embedded = {r[0] for r in await seeded.conn.fetch("SELECT investigation_id FROM incident_embeddings")}
    assert embedded == {*seeded.ids.values(), later}

    row = await seeded.conn.fetchrow("SELECT model, summary FROM incident_embeddings WHERE investigation_id = $1", lost)
    assert row["model"] == "all-MiniLM-L6-v2"
    assert row["summary"] == INCIDENTS["tls"]["summary"]
    assert _counter(registry, "stored") == len(INCIDENTS) + 2


async def test_two_replicas_embed_every_incident_exactly_once(seeded: Seeded) -> None:
    metrics = EmbeddingMetrics(CollectorRegistry())
    first, second = seeded.memory(metrics, batch_size=2), seeded.memory(metrics, batch_size=2)
    stored = await asyncio.gather(first.embed_pending(), second.embed_pending())
    # The replica holding the lock embeds until nothing is left; the other finds it taken, or nothing to do.
    assert sorted(stored) == [0, len(INCIDENTS)]
    assert await seeded.embeddings() == len(INCIDENTS)
    counted = await seeded.conn.fetchval("SELECT count(DISTINCT investigation_id) FROM incident_embeddings")
    assert counted == len(INCIDENTS)


async def test_a_provider_that_fails_stores_nothing_and_is_counted(seeded: Seeded) -> None:
    registry = CollectorRegistry()
    down = OpenAIEmbeddings(api_key="k", base_url="http://127.0.0.1:1/v1", max_retries=0, timeout_seconds=2)
    try:
        memory = IncidentMemory(seeded.pool, down, EmbeddingMetrics(registry), batch_size=50)
        with pytest.raises(EmbeddingsUnavailable):
            await memory.embed_pending()
    finally:
        await down.aclose()
    assert await seeded.embeddings() == 0
    assert _counter(registry, "failed") == len(INCIDENTS)
    # The lock was released: the next round (here the local model) goes ahead.
    assert await seeded.memory().embed_pending() == len(INCIDENTS)


async def test_vectors_of_another_model_are_never_compared(seeded: Seeded) -> None:
    await seeded.memory().embed_pending()
    other = await seed(seeded.conn, "other-model", INCIDENTS["pool-billing"])
    await seeded.conn.execute(
        "INSERT INTO incident_embeddings (id, investigation_id, model, embedding, summary)"
        " SELECT $1, $2, 'text-embedding-3-small@384', embedding, summary FROM incident_embeddings"
        " WHERE investigation_id = $3",
        uuid.uuid4(),
        other,
        seeded.ids["pool-billing"],
    )
    own = await seeded.conn.fetchval(
        "SELECT embedding::text FROM incident_embeddings WHERE investigation_id = $1", seeded.ids["pool-inventory"]
    )
    found = await nearest(seeded.pool, own, seeded.local.model, 20, exclude=[seeded.ids["pool-inventory"]])
    assert other not in [f.investigation_id for f in found]
    assert found[0].investigation_id == seeded.ids["pool-billing"]


async def _running(seeded: Seeded, alert: Mapping[str, Any] | None) -> asyncpg.Record:
    """A running investigation whose TRIAGE read `alert` (none when None), as the engine holds it."""
    investigation_id = uuid.uuid4()
    await seeded.conn.execute(
        "INSERT INTO investigations (id, ticket_id, status, phase) VALUES ($1, $2, 'running', 'gather')",
        investigation_id,
        f"NEW-{str(investigation_id)[:6]}",
    )
    if alert is not None:
        await seeded.conn.execute(
            "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, iteration, status, task_id,"
            " output, finished_at) VALUES ($1, $2, 'triage', 'triage', 1, 'succeeded', $3, $4, now())",
            uuid.uuid4(),
            investigation_id,
            f"{investigation_id}:triage:triage:1:1",
            {"alert": alert},
        )
    row = await seeded.conn.fetchrow("SELECT * FROM investigations WHERE id = $1", investigation_id)
    assert row is not None
    return row


NEW_POOL_ALERT = {
    "service": "catalogservice",
    "metric": "p99_latency_ms",
    "summary": "catalogservice p99 latency above 2s: handlers wait for a free database connection",
    "detail": "Logs: 'could not acquire a connection from the pool within 5s (pool size 30, all busy)'.",
}


async def test_hypothesize_gets_the_close_conclusive_incidents_and_abstains_below_the_minimum(seeded: Seeded) -> None:
    memory = seeded.memory()
    await memory.embed_pending()
    names = {v: k for k, v in seeded.ids.items()}
    investigation = await _running(seeded, NEW_POOL_ALERT)

    everything = await HypothesisContext(memory, 0.0, limit=10)(seeded.conn, investigation)
    assert everything["abstained"] is False
    ranked = [names[uuid.UUID(m["investigation_id"])] for m in everything["matches"]]
    assert set(ranked[:2]) == {"pool-inventory", "pool-billing"}
    # The operational (INCONCLUSIVE) incidents are no hypothesis material.
    assert set(ranked).isdisjoint({"tls", "surge"})
    assert len(ranked) == len(INCIDENTS) - 2

    third = everything["matches"][2]["similarity_score"]
    given = await HypothesisContext(memory, third + 1e-6)(seeded.conn, investigation)
    assert given["abstained"] is False
    assert [names[uuid.UUID(m["investigation_id"])] for m in given["matches"]] == ranked[:2]
    assert given["best_score"] == everything["matches"][0]["similarity_score"]

    strict = await HypothesisContext(memory, 0.99)(seeded.conn, investigation)
    assert strict["abstained"] is True
    assert strict["matches"] == []
    assert strict["reason"] == f"no past incident is similar enough (best {given['best_score']:.3f} < 0.99)"


async def test_hypothesize_abstains_and_says_why_when_it_cannot_compare(seeded: Seeded) -> None:
    investigation = await _running(seeded, NEW_POOL_ALERT)
    unavailable = HypothesisContext(None, 0.5, unavailable="EMBEDDING_PROVIDER=none")
    assert await unavailable(seeded.conn, investigation) == {
        "min_score": 0.5,
        "matches": [],
        "best_score": None,
        "abstained": True,
        "reason": "similar incidents unavailable: EMBEDDING_PROVIDER=none",
    }
    memory = seeded.memory()
    nothing_yet = await HypothesisContext(memory, 0.5)(seeded.conn, investigation)
    assert nothing_yet["reason"] == "no conclusive past incident is embedded yet"
    blank = await HypothesisContext(memory, 0.5)(seeded.conn, await _running(seeded, None))
    assert blank["reason"] == "nothing to compare: no alert and no trigger title"
    late = await HypothesisContext(memory, 0.5, timeout_seconds=0)(seeded.conn, investigation)
    assert late["abstained"] is True
    assert late["reason"] == "the embedding took over 0s"


def test_the_embedded_text_is_symptom_summary_and_cause_without_labels_or_shas() -> None:
    row = {
        "alert": INCIDENTS["nil"]["alert"],
        "trigger_context": {},
        "summary": INCIDENTS["nil"]["summary"],
        "verdict": "ROOT_CAUSE",
        "culprit_change": {**INCIDENTS["nil"]["culprit"], "at": "2026-08-21T14:00:00Z"},
        "first_failing_service": "paymentservice",
    }
    assert incident_text(row).split("\n") == [
        "paymentservice pods restarting more than 5 times in 10m (paymentservice, container_restarts)",
        "panic: runtime error: invalid memory address or nil pointer dereference in ChargeCard.",
        INCIDENTS["nil"]["summary"],
        "commit in paymentservice: refactor: make card metadata optional",
    ]
    pagerduty = {**row, "alert": None, "verdict": "INCONCLUSIVE", "first_failing_service": "ledger",
                 "trigger_context": {"pagerduty": {"title": "Payments down", "service": "paymentservice"}}}  # fmt: skip
    assert incident_text(pagerduty).split("\n") == [
        "Payments down (paymentservice)",
        INCIDENTS["nil"]["summary"],
        "first failing service: ledger",
    ]
    assert query_text(INCIDENTS["nil"]["alert"], {}) == "\n".join(incident_text(row).split("\n")[:2])


async def test_the_provider_setting_picks_the_embedder_or_says_why_not(tmp_path: Path) -> None:
    none = InMemorySecretSource({})
    options: dict[str, Any] = {"secrets": none, "openai_model": "text-embedding-3-small", "openai_base_url": ""}
    assert await build_embedder("none", model_dir="", **options) == (None, "EMBEDDING_PROVIDER=none")
    embedder, why = await build_embedder("openai", model_dir="", **options)
    assert embedder is None
    assert "openai-api-key" in why
    keyed = {**options, "secrets": InMemorySecretSource({"openai-api-key": "sk-x"})}
    embedder, why = await build_embedder("openai", model_dir="", **keyed)
    assert isinstance(embedder, OpenAIEmbeddings)
    assert embedder.model == "text-embedding-3-small@384"
    await embedder.aclose()
    embedder, why = await build_embedder("local", model_dir=str(tmp_path), **options)
    assert embedder is None
    assert str(tmp_path) in why
    assert "model.safetensors" in why
    embedder, why = await build_embedder("local", model_dir=str(model_dir()), **options)
    assert isinstance(embedder, LocalMiniLM)
    assert why == ""


# A past incident like the project's own scenario (payments retry storm behind an api-gateway
# 5xx alert), worded differently, and an unrelated one.
PAST_CHECKOUT_OUTAGE = {
    "alert": {
        "service": "api-gateway",
        "metric": "error_ratio",
        "summary": "api-gateway 5xx ratio above 5%: checkout requests answered 503/504, payments failing",
    },
    "summary": "fix: retry ledger writes without backoff (9d1e2f3a), shipped with payments, explains the symptom.",
    "culprit": {"kind": "commit", "ref": "9d1e2f3a", "service": "payments", "title": "fix: retry ledger writes"},
    "first_failing_service": "payments",
}


async def test_an_investigation_hypothesizes_with_the_similar_past_incident(tmp_path: Path) -> None:
    settings = {"EMBEDDING_MODEL_DIR": str(model_dir()), "EMBEDDING_INTERVAL_SECONDS": "0.2"}
    async with _engine(tmp_path, registry_config(SCENARIO), settings=settings) as stack:
        await stack.db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        past = await seed(stack.db, "checkout", PAST_CHECKOUT_OUTAGE)
        unrelated = await seed(stack.db, "disk", INCIDENTS["disk"])

        async def embedded() -> bool:
            return bool(await stack.db.fetchval("SELECT count(*) FROM incident_embeddings") == 2)

        await wait_for(embedded, timeout=60, what="the orchestrator embedding the past incidents")
        investigation_id = await _submit(stack, "SHOP-77")
        row = await _until_done(stack, investigation_id)
        assert row["status"] == "completed", row["error"]
        step = await stack.db.fetchrow(
            "SELECT input, output FROM investigation_steps WHERE investigation_id = $1::uuid"
            " AND phase = 'hypothesize' AND status = 'succeeded' ORDER BY iteration LIMIT 1",
            investigation_id,
        )
        given = step["input"]["similar_incidents"]
        assert given["abstained"] is False, given
        assert [m["investigation_id"] for m in given["matches"]] == [str(past)]
        assert given["matches"][0]["similarity_score"] >= 0.70, given
        assert str(unrelated) not in json.dumps(given)
        recorded = step["output"]["similar_incidents"]
        assert recorded["abstained"] is False
        assert [u["ticket_id"] for u in recorded["used"]] == [f"INC-checkout-{str(past)[:6]}"]
        # Once complete, the new investigation is embedded too, and /similar's nearest is the past one.
        await wait_for(
            lambda: _has_embedding(stack.db, uuid.UUID(investigation_id)), timeout=60, what="the new embedding"
        )
        own = await stack.db.fetchval(
            "SELECT embedding::text FROM incident_embeddings WHERE investigation_id = $1::uuid", investigation_id
        )
        found = await nearest(stack.db, own, "all-MiniLM-L6-v2", 5, exclude=[uuid.UUID(investigation_id)])
        assert found[0].investigation_id == past


async def _has_embedding(conn: asyncpg.Connection, investigation_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM incident_embeddings WHERE investigation_id = $1", investigation_id))
