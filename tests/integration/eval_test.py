"""`./pm eval`'s scorer (`pm_worker.evaluate`) against a whole stack behind Envoy, with the LLM
reasoner: the worker has a key for a local server speaking the Messages API (scripted replies), so
the real SDK runs and the model's spending reaches the investigation. The scorer prints each
case's time and cost and says which reasoner ran; without a key it says the rules did.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from integration.edge_stack import running_edge_stack
from integration.sandbox import registry_config
from pm_testing import running_fake_llm
from pm_testing.fake_llm import Reply, message, tool_use
from pm_worker.evaluate import Api, evaluate

SCENARIO = Path(__file__).resolve().parents[2] / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
TRUTH = json.loads((SCENARIO / "ground_truth.json").read_text())
API_KEY = "eval-test-key-0001"
MODEL = "claude-haiku-5-5"


def _conclude(body: dict[str, Any]) -> Reply:
    """RECOMMEND on the cheap model: the culprit the rule checks support, citing their calls."""
    text = body["messages"][0]["content"][0]["text"]
    context = json.loads(text.split("\n\n", 1)[1])
    culprit = next(c for c in context["candidates"] if c["ref"] == TRUTH["root_cause_commit"])
    signature = next(k for k in culprit["checks"] if k["name"] == "signature")
    findings = {
        "verdict": "ROOT_CAUSE",
        "confidence": 0.85,
        "summary": "The retry policy change removed the backoff: a retry storm on ledger.",
        "first_failing_service": TRUTH["first_failing_service"],
        "blast_radius": TRUTH["blast_radius"],
        "culprit": {"kind": "commit", "ref": culprit["ref"], "service": culprit["service"], "title": "retry"},
        "remediation": {"class": "rollback", "steps": ["Roll payments back to the build before the change."]},
        "evidence": [{"claim": signature["detail"], "call_ids": signature["call_ids"]}],
    }
    return message(tool_use("submit", findings), input_tokens=4000, output_tokens=300)


def _run(base_url: str, output: Path) -> tuple[dict[str, Any], str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = evaluate(Api(base_url, API_KEY), [("sandbox", SCENARIO)], output)
    return result, printed.getvalue()


@pytest.mark.parametrize("with_key", [True, False])
async def test_eval_scores_a_case_and_prints_its_time_cost_and_reasoner(tmp_path: Path, with_key: bool) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(_conclude)
        # One LLM pass: the balanced mode's RECOMMEND only, on the fast tier.
        keys = {
            "ANTHROPIC_API_KEY": "test-key-for-the-fake",
            "ANTHROPIC_BASE_URL": llm.anthropic_base_url,
            "LLM_MODEL_FAST": MODEL,
            "LLM_MODE_ROLES": json.dumps({"balanced": {"recommend": "fast"}}),
        }
        async with running_edge_stack(
            tmp_path, servers=registry_config(SCENARIO), api_key=API_KEY, worker_environ=keys if with_key else {}
        ) as stack:
            result, printed = await asyncio.to_thread(_run, stack.base_url, tmp_path / "eval.json")
        assert llm.unanswered() == (0 if with_key else 1)

    assert result["summary"]["failed_cases"] == []
    case_line = next(line for line in printed.splitlines() if line.startswith(f"  {SCENARIO.name}:"))
    assert "ROOT_CAUSE" in case_line
    assert case_line.rstrip().endswith("s)")  # the case's time
    row = next(line for line in printed.splitlines() if line.startswith(SCENARIO.name))
    cost = float(row.split()[-1])
    last = printed.strip().splitlines()[-2 if "JSON:" in printed else -1]
    stored = json.loads((tmp_path / "eval.json").read_text())
    assert stored["findings"][SCENARIO.name]["root_cause_commit"] == TRUTH["root_cause_commit"]
    if with_key:
        assert cost > 0
        assert last.endswith("(llm reasoner)")
        assert stored["reasoner"] == "llm"
        assert stored["summary"]["cost_usd_total"] == pytest.approx(cost, abs=1e-4)
    else:
        assert cost == 0
        assert last.endswith("(rule reasoner)")
        assert stored["reasoner"] == "rule"
