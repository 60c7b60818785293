"""The alert rules and the dashboard match what a running stack really exports.

Ingest, orchestrator, worker and registry run on the real stack behind Envoy, each with its own
metrics port. A demo investigation goes through them (submitted to ingest, answered by the
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

from integration.edge_stack import running_edge_stack
from integration.observability_test import _dashboard_expressions, _expressions, _problems
from integration.sandbox import registry_config
from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc

SCENARIO = Path(__file__).resolve().parents[2] / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
API_KEY = "scrape-test-key-0001"
# Families a rule-reasoner run leaves without samples.
UNSAMPLED = {
    "pm_llm_tokens_total",
    "pm_llm_cost_dollars_total",
    "pm_llm_fallback_steps_total",
    "pm_llm_rejected_claims_total",
}


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
    async with running_edge_stack(
        tmp_path, servers=registry_config(SCENARIO), api_key=API_KEY, environ={"JIRA_WEBHOOK_SECRET": "jira-secret"}
    ) as stack:
        stub = ingest_pb2_grpc.IngestServiceStub(stack.channels["ingest"])
        accepted = await stub.Investigate(
            ingest_pb2.InvestigateRequest(ticket_id=f"SHOP-{uuid.uuid4().hex[:6]}"),
            metadata=(("x-api-key", API_KEY),),
            timeout=10,
        )
        assert await _done(stack.dsn, accepted.investigation_id) == "completed"
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
                for port in stack.metrics_ports.values()
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
