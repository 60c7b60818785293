"""The alert rules and the dashboard match what a running stack really exports.

Ingest, orchestrator, worker and registry run as real processes on the real stack, each with its
own metrics port. A demo investigation goes through them (submitted to ingest, answered by the
sandbox scenario) and a webhook is refused; then every metrics port is scraped over HTTP. Each
metric an alert or panel names must be in a scrape, and each label it matches on must be on the
scraped samples. Only the LLM families may lack samples (the rule reasoner spends nothing); their
labels are checked on the services' registries by observability_test.py.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from google.api import httpbody_pb2
from prometheus_client.parser import text_string_to_metric_families

from integration.observability_test import _dashboard_expressions, _expressions, _problems
from integration.sandbox import registry_config, until_connected
from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pm_db import apply_migrations
from pm_ingest.app import SPEC as INGEST
from pm_orchestrator.app import SPEC as ORCHESTRATOR
from pm_registry.app import SPEC as REGISTRY
from pm_testing import free_port, fresh_bucket, fresh_database, running_service, stack_env
from pm_worker.app import SPEC as WORKER

SCENARIO = Path(__file__).resolve().parents[2] / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
API_KEY = "scrape-test-key-0001"
# Families a rule-reasoner run leaves without samples.
UNSAMPLED = {"pm_llm_tokens_total", "pm_llm_cost_dollars_total"}


def _scraped(texts: list[str]) -> tuple[dict[str, set[str]], set[str]]:
    """Sample names with their label names, and the names of families declared without samples."""
    samples: dict[str, set[str]] = {}
    empty: set[str] = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.samples:
                empty.add(family.name + ("_total" if family.type == "counter" else ""))
            for sample in family.samples:
                samples.setdefault(sample.name, set()).update(sample.labels)
    return samples, empty


async def _done(dsn: str, investigation_id: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(90):
            while True:
                status = await conn.fetchval("SELECT status FROM investigations WHERE id = $1::uuid", investigation_id)
                if status in ("completed", "failed", "cancelled"):
                    return str(status)
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_a_running_stack_exports_every_metric_and_label_the_rules_and_dashboard_name(tmp_path: Path) -> None:
    env = stack_env()
    config = tmp_path / "servers.yaml"
    config.write_text(registry_config(SCENARIO))
    metrics = {name: free_port() for name in ("ingest", "orchestrator", "worker", "registry")}
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            registry_port = free_port()
            base = env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}")
            base |= {"API_KEYS": API_KEY, "OUTBOX_POLL_SECONDS": "0.2", "JIRA_WEBHOOK_SECRET": "jira-secret"}

            def environ(service: str, **extra: str) -> dict[str, str]:
                return {**base, "METRICS_LISTEN": f"127.0.0.1:{metrics[service]}", **extra}

            registry_env = environ("registry", GRPC_LISTEN=f"127.0.0.1:{registry_port}", MCP_SERVERS_FILE=str(config))
            async with running_service(REGISTRY, registry_env) as registry:
                await until_connected(registry)
                async with (
                    running_service(WORKER, environ("worker")),
                    running_service(ORCHESTRATOR, environ("orchestrator", GRPC_LISTEN=f"127.0.0.1:{free_port()}")),
                    running_service(INGEST, environ("ingest", GRPC_LISTEN=f"127.0.0.1:{free_port()}")) as ingest,
                ):
                    stub = ingest_pb2_grpc.IngestServiceStub(ingest)
                    accepted = await stub.Investigate(
                        ingest_pb2.InvestigateRequest(ticket_id=f"SHOP-{uuid.uuid4().hex[:6]}"),
                        metadata=(("x-api-key", API_KEY),),
                        timeout=10,
                    )
                    assert await _done(dsn, accepted.investigation_id) == "completed"
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.ReceiveJiraWebhook(
                            ingest_pb2.ReceiveJiraWebhookRequest(
                                body=httpbody_pb2.HttpBody(content_type="application/json", data=b"{}")
                            ),
                            metadata=(("x-hub-signature", "sha256=" + "0" * 64),),
                            timeout=10,
                        )
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    # The queue gauges are read from Redis every few seconds.
                    await asyncio.sleep(6)
                    async with httpx.AsyncClient(timeout=10) as client:
                        texts = [
                            (await client.get(f"http://127.0.0.1:{port}/metrics")).raise_for_status().text
                            for port in metrics.values()
                        ]
    samples, empty = _scraped(texts)
    expressions = _expressions() + _dashboard_expressions()
    named = {name for _, expr in expressions for name in re.findall(r"\b(pm_[a-z0-9_]+)", expr)}
    unsampled = {n for n in named if n not in samples} - UNSAMPLED
    assert not unsampled, f"named by rules or panels but not scraped with samples: {sorted(unsampled)}"
    assert empty | set(samples) >= UNSAMPLED, "the LLM families are not even declared"
    problems, checked = _problems(expressions, {**{n: set() for n in UNSAMPLED}, **samples})
    problems = [p for p in problems if not any(n in p for n in UNSAMPLED)]
    assert not problems, "\n".join(problems)
    assert checked >= 30
    # The run really went through every service: the demo's own traces are in the scrape.
    assert "pm_verdicts_total{" in "".join(texts)
    assert any("pm_mcp_tool_call_total" in t and 'status="ok"' in t for t in texts)
