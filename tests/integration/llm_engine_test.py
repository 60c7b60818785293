"""A whole investigation whose RECOMMEND is the LLM's: the real worker, registry and orchestrator,
the real `anthropic` SDK, and a local server speaking the Messages API with scripted replies.

The model reads the culprit's diff through the registry (a real tool call, cited by its id) and
submits findings; one of its claims cites an id that does not exist and is removed by the
citation checker. Tokens and cost land on the agent run and the investigation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from integration.engine_test import AUTH, SCENARIO, TRUTH, _engine, _submit, _until_done
from integration.sandbox import registry_config
from pm.investigation.v1 import investigation_pb2
from pm_testing import running_fake_llm
from pm_testing.fake_llm import Reply, message, overloaded, tool_use

CALL_ID = re.compile(r"call_id: ([0-9a-f-]{36})")


def _tool_results(body: dict[str, Any]) -> list[str]:
    """The text of every tool_result block in a request, oldest first."""
    texts = []
    for turn in body["messages"]:
        for block in turn["content"] if isinstance(turn["content"], list) else []:
            if block.get("type") == "tool_result":
                content = block["content"]
                texts.append(content if isinstance(content, str) else "".join(c.get("text", "") for c in content))
    return texts


def _read_the_diff(body: dict[str, Any]) -> Reply:
    names = {tool["name"] for tool in body["tools"]}
    assert {"get_commit", "search_logs", "submit"} <= names, names
    return message(tool_use("get_commit", {"sha": TRUTH["root_cause_commit"]}), input_tokens=3000, output_tokens=60)


def _submit_findings(body: dict[str, Any]) -> Reply:
    (diff,) = _tool_results(body)
    call_id = CALL_ID.search(diff)
    assert call_id, diff[:200]
    findings = {
        "verdict": "ROOT_CAUSE",
        "confidence": 0.9,
        "summary": "The retry policy moved into config with unbounded retries: a retry storm on ledger.",
        "first_failing_service": TRUTH["first_failing_service"],
        "blast_radius": TRUTH["blast_radius"],
        "culprit": {"kind": "commit", "ref": TRUTH["root_cause_commit"], "service": "payments", "title": "retry"},
        "remediation": {"class": "rollback", "steps": ["Roll payments back to the build before the change."]},
        "evidence": [
            {"claim": "The diff raises the ledger client's retries.", "call_ids": [call_id.group(1)]},
            {"claim": "A claim resting on nothing this investigation read.", "call_ids": ["call-that-never-was"]},
        ],
        "hypotheses": [],
        "timeline": [],
    }
    return message(
        tool_use("submit", findings),
        input_tokens=500,
        output_tokens=400,
        cache_read_input_tokens=2800,
    )


async def test_the_llm_concludes_with_cited_findings_and_its_spending_is_counted(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(_read_the_diff, _submit_findings)
        settings = {
            "ANTHROPIC_API_KEY": "test-key-for-the-fake",
            "ANTHROPIC_BASE_URL": llm.anthropic_base_url,
            "LLM_MODEL_BALANCED": "claude-sonnet-5-5",
        }
        async with _engine(tmp_path, registry_config(SCENARIO), settings=settings) as stack:
            investigation_id = await _submit(stack, "SHOP-41")
            row = await _until_done(stack, investigation_id)
            assert row["status"] == "completed", row["error"]
            assert (row["verdict"], row["confidence"]) == ("ROOT_CAUSE", pytest.approx(0.9))
            report = await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
            assert report.culprit_change.ref == TRUTH["root_cause_commit"]
            # The claim citing a call that never happened was removed; the cited one is a real call.
            assert [e.claim for e in report.evidence] == ["The diff raises the ledger client's retries."]
            (cited,) = report.evidence[0].tool_call_ids
            call = await stack.db.fetchrow(
                "SELECT tool_name, agent_role, investigation_id::text FROM mcp_tool_calls WHERE id = $1::uuid", cited
            )
            assert (call["tool_name"], call["agent_role"], call["investigation_id"]) == (
                "get_commit",
                "recommend",
                investigation_id,
            )
            run = await stack.db.fetchrow(
                "SELECT * FROM agent_runs WHERE investigation_id = $1::uuid AND phase = 'recommend'", investigation_id
            )
            assert (run["reasoner"], run["model"], run["llm_calls"]) == ("llm", "claude-sonnet-5-5", 2)
            assert (run["input_tokens"], run["output_tokens"], run["cache_read_tokens"]) == (3500, 460, 2800)
            assert float(run["cost_usd"]) > 0
            assert float(row["cost_usd"]) == pytest.approx(float(run["cost_usd"]))
            step = await stack.db.fetchrow(
                "SELECT reasoner, output FROM investigation_steps WHERE investigation_id = $1::uuid"
                " AND phase = 'recommend'",
                investigation_id,
            )
            output = json.loads(step["output"])
            assert step["reasoner"] == "llm"
            assert (output["rejected_claims"], output["rule_verdict"]) == (1, "ROOT_CAUSE")
            # The stable prefix is marked for caching: system prompt, last tool, context.
            first = llm.bodies()[0]
            assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
            assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
            assert first["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
            assert "first_failing_service" in first["messages"][0]["content"][0]["text"]
            assert llm.unanswered() == 0


async def test_when_the_llm_stays_unavailable_the_rule_conclusion_stands(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(*[overloaded() for _ in range(3)])  # the first try and the SDK's two retries
        settings = {"ANTHROPIC_API_KEY": "test-key-for-the-fake", "ANTHROPIC_BASE_URL": llm.anthropic_base_url}
        async with _engine(tmp_path, registry_config(SCENARIO), settings=settings) as stack:
            investigation_id = await _submit(stack, "SHOP-42")
            row = await _until_done(stack, investigation_id)
            assert (row["status"], row["verdict"]) == ("completed", "ROOT_CAUSE")
            report = await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
            assert report.culprit_change.ref == TRUTH["root_cause_commit"]
            assert "LLM unavailable" in report.markdown
            run = await stack.db.fetchrow(
                "SELECT reasoner, cost_usd FROM agent_runs WHERE investigation_id = $1::uuid AND phase = 'recommend'",
                investigation_id,
            )
            assert (run["reasoner"], float(run["cost_usd"])) == ("rule", 0.0)
            assert llm.unanswered() == 0
