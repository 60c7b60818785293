"""A provider outage in a whole investigation: the Anthropic API stays overloaded, the step goes
on on the OpenAI-compatible endpoint with the conversation translated, and the worker counts the
switch and the claims the citation checker removed on its metrics port (a real scrape). The
stack runs behind Envoy; the investigation is submitted and followed over REST; both providers
are the local fake speaking the real protocols, so the real SDK clients run.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx

from integration.edge_stack import running_edge_stack
from integration.sandbox import registry_config
from pm_testing import running_fake_llm
from pm_testing.fake_llm import Reply, chat_completion, overloaded

SCENARIO = Path(__file__).resolve().parents[2] / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
TRUTH = json.loads((SCENARIO / "ground_truth.json").read_text())
API_KEY = "fallback-test-key-0001"
FALLBACK_MODEL = "local-llama"


def _conclude_on_the_fallback(body: dict[str, Any]) -> Reply:
    """RECOMMEND as the fallback model answers it: the context arrived translated to Chat
    Completions (a system message, then the user's context); one claim cites an invented call."""
    assert body["model"] == FALLBACK_MODEL
    assert body["messages"][0]["role"] == "system"
    context = json.loads(body["messages"][1]["content"].split("\n\n", 1)[1])
    culprit = next(c for c in context["candidates"] if c["ref"] == TRUTH["root_cause_commit"])
    signature = next(k for k in culprit["checks"] if k["name"] == "signature")
    findings = {
        "verdict": "ROOT_CAUSE",
        "confidence": 0.8,
        "summary": "The retry policy change removed the backoff: a retry storm on ledger.",
        "first_failing_service": TRUTH["first_failing_service"],
        "blast_radius": TRUTH["blast_radius"],
        "culprit": {"kind": "commit", "ref": culprit["ref"], "service": culprit["service"], "title": "retry"},
        "remediation": {"class": "rollback", "steps": ["Roll payments back to the build before the change."]},
        "evidence": [
            {"claim": signature["detail"], "call_ids": signature["call_ids"]},
            {"claim": "Ledger's DBA confirmed it.", "call_ids": ["call-that-never-was"]},
        ],
    }
    return chat_completion(tool_calls=[("call_fb1", "submit", findings)], model=FALLBACK_MODEL)


def _sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text exposition (None when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def test_an_overloaded_provider_hands_the_step_to_the_fallback_and_the_worker_counts_it(
    tmp_path: Path,
) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(overloaded(), overloaded(), overloaded())  # the first try and the SDK's two retries
        llm.openai(_conclude_on_the_fallback)
        keys = {
            "ANTHROPIC_API_KEY": "test-key-for-the-fake",
            "ANTHROPIC_BASE_URL": llm.anthropic_base_url,
            "OPENAI_API_KEY": "test-key-for-the-fake",
            "OPENAI_BASE_URL": llm.openai_base_url,
            "OPENAI_MODEL": FALLBACK_MODEL,
            # One LLM step: the balanced mode's RECOMMEND.
            "LLM_MODE_ROLES": json.dumps({"balanced": {"recommend": "balanced"}}),
        }
        async with (
            running_edge_stack(
                tmp_path, servers=registry_config(SCENARIO), api_key=API_KEY, worker_environ=keys
            ) as stack,
            httpx.AsyncClient(base_url=stack.base_url, headers={"x-api-key": API_KEY}, timeout=15) as client,
        ):
            accepted = await client.post("/api/v1/investigate", json={"ticket_id": "INC-4812"})
            assert accepted.status_code == 202, accepted.text
            investigation_id = accepted.json()["investigation_id"]
            async with asyncio.timeout(90):
                while (got := (await client.get(f"/api/v1/investigations/{investigation_id}")).json())[
                    "status"
                ] not in ("completed", "failed"):
                    await asyncio.sleep(0.2)
            assert got["status"] == "completed", got
            report = (await client.get(f"/api/v1/investigations/{investigation_id}/report")).json()
            scrape = await client.get(f"http://127.0.0.1:{stack.metrics_ports['worker']}/metrics")
        assert llm.unanswered() == 0

    assert (report["verdict"], report["culprit_change"]["ref"]) == ("ROOT_CAUSE", TRUTH["root_cause_commit"])
    # The invented claim was removed; the cited one stands.
    (evidence,) = report["evidence"]
    assert "Ledger's DBA" not in evidence["claim"]
    text = scrape.raise_for_status().text
    assert _sample(text, "pm_llm_fallback_steps_total", provider="openai-compatible", role="recommend") == 1.0
    assert _sample(text, "pm_llm_rejected_claims_total", role="recommend") == 1.0
    # The tokens were counted under the model that answered.
    assert (_sample(text, "pm_llm_tokens_total", model=FALLBACK_MODEL, type="input") or 0) > 0
