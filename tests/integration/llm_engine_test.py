"""Whole investigations with LLM steps: the real worker, registry and orchestrator, the real
`anthropic` SDK, and a local server speaking the Messages API with scripted replies (functions of
the request, reading the investigation context the worker sent, as a model would).

- fast: the rule reasoner up to VERIFY, then one LLM pass, RECOMMEND, on the cheap model. The
  model reads the culprit's diff through the registry (a real tool call, cited by its id); one of
  its claims cites an id that does not exist and is removed by the citation checker. Tokens and
  cost land on the agent run and the investigation.
- balanced and deep: the LLM reads the ticket and chat (on the cheap tier in balanced mode), then
  hypothesizes, verifies and concludes on the mode's model (deep also triages, after the rule
  reasoner's triage), each role with its own prompt and tools, citing real calls; a hypothesis
  citing an invented call is dropped and counted; the hypothesis agent reads what people said.
- a mixed run: LLM HYPOTHESIZE and VERIFY, rule RECOMMEND, which concludes what the scripted
  verification supports.
- outages: the RECOMMEND pass keeps the rule conclusion; an LLM HYPOTHESIZE fails visibly and the
  engine writes its partial report.
- budget: what the model reports spending ends the investigation once it passes the cost budget.
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
from pm_testing.fake_llm import FakeLLM, Reply, message, overloaded, tool_use

CALL_ID = re.compile(r"call_id: ([0-9a-f-]{36})")
CULPRIT = TRUTH["root_cause_commit"]
GATEWAY = "b6a52c92478ec13f52d87cfd9b03ff3e596200a5"  # a decoy: the alerted service's deploy before the alert
MODELS = {
    "LLM_MODEL_FAST": "claude-haiku-5-5",
    "LLM_MODEL_BALANCED": "claude-sonnet-5-5",
    "LLM_MODEL_DEEP": "claude-opus-5-5",
}
RULE_ROLES = ("triage", "gather.logs", "gather.metrics", "gather.traces", "gather.changes", "gather.context")
PROMPTS = {
    "You are the triage agent": "triage",
    "You are the context agent": "gather.context",
    "You are the hypothesis agent": "hypothesize",
    "You are the verification agent": "verify",
    "You are the concluding agent": "recommend",
}
# The role's registry tools (the sandbox's names) the model is offered, besides `submit`.
ROLE_TOOLS = {
    "triage": {"get_alert", "query_metrics"},
    "gather.context": {"get_ticket", "search_messages"},
    "hypothesize": {"search_logs", "query_metrics", "search_traces", "list_deploys", "list_commits", "flag_changes"},
    "verify": {"get_commit", "list_deploys", "list_commits", "search_logs", "query_metrics", "search_traces"},
    "recommend": {
        "get_commit",
        "list_deploys",
        "list_commits",
        "search_logs",
        "query_metrics",
        "search_traces",
        "flag_changes",
    },
}


def _keys(llm: FakeLLM) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": "test-key-for-the-fake", "ANTHROPIC_BASE_URL": llm.anthropic_base_url}


def _role_of(body: dict[str, Any]) -> str:
    """Which agent a request came from, by its system prompt."""
    text = body["system"][0]["text"]
    return next(role for opening, role in PROMPTS.items() if text.startswith(opening))


def _context(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON of the investigation context (the first user message), as the model reads it."""
    text = body["messages"][0]["content"][0]["text"]
    return dict(json.loads(text.split("\n\n", 1)[1]))


async def _reasoners(stack: Any, investigation_id: str) -> dict[str, str]:
    rows = await stack.db.fetch(
        "SELECT agent_name, reasoner FROM agent_runs WHERE investigation_id = $1::uuid", investigation_id
    )
    return {row["agent_name"].split(":", 1)[1]: row["reasoner"] for row in rows}


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


async def test_fast_mode_makes_one_cheap_llm_pass_with_cited_findings_and_counts_its_spending(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(_read_the_diff, _submit_findings)
        settings = {**_keys(llm), **MODELS}
        async with _engine(tmp_path, registry_config(SCENARIO), settings=settings) as stack:
            investigation_id = await _submit(stack, "SHOP-41", mode="fast")
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
                "SELECT tool_name, agent_role, agent_name, investigation_id::text FROM mcp_tool_calls"
                " WHERE id = $1::uuid",
                cited,
            )
            # The model's own call is audited as the LLM agent's.
            assert (call["tool_name"], call["agent_role"], call["agent_name"], call["investigation_id"]) == (
                "get_commit",
                "recommend",
                "llm:recommend",
                investigation_id,
            )
            run = await stack.db.fetchrow(
                "SELECT * FROM agent_runs WHERE investigation_id = $1::uuid AND phase = 'recommend'", investigation_id
            )
            assert (run["reasoner"], run["model"], run["llm_calls"]) == ("llm", MODELS["LLM_MODEL_FAST"], 2)
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
            # One LLM call sequence, RECOMMEND's, on the cheap model; every other step was the rules'.
            bodies = llm.bodies()
            assert [(b["model"], _role_of(b)) for b in bodies] == [(MODELS["LLM_MODEL_FAST"], "recommend")] * 2
            assert await _reasoners(stack, investigation_id) == {
                **dict.fromkeys(RULE_ROLES, "rule"),
                "hypothesize": "rule",
                "verify": "rule",
                "recommend": "llm",
            }


async def test_when_the_llm_stays_unavailable_the_rule_conclusion_stands(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(*[overloaded() for _ in range(3)])  # the first try and the SDK's two retries
        async with _engine(tmp_path, registry_config(SCENARIO), settings=_keys(llm)) as stack:
            investigation_id = await _submit(stack, "SHOP-42", mode="fast")
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


def _read_the_chat(body: dict[str, Any]) -> Reply:
    """The context agent: one cited fact from the chat messages the rule reasoner found."""
    context = _context(body)
    (chat_call,) = context["chat_call_ids"]
    rollback = next(m for m in context["messages"] if "roll back api-gateway" in m["text"])
    answer = {
        "summary": "The incident commander wants to roll back api-gateway.",
        "facts": [
            {
                "kind": "action",
                "claim": f"{rollback['user']} in #incidents proposes rolling back api-gateway",
                "at": rollback["ts"],
                "services": ["api-gateway"],
                "call_ids": [chat_call],
            }
        ],
        "suspects": [GATEWAY[:8]],
    }
    return message(tool_use("submit", answer), input_tokens=1500, output_tokens=150)


def _hypothesize(body: dict[str, Any]) -> Reply:
    """Ranks the culprit (citing the calls the context gives for it) and a flag on an invented call."""
    context = _context(body)
    # What people said reached the hypothesis agent as a lead.
    assert context["reported_context"]["suspects"] == [GATEWAY[:8]], context.get("reported_context")
    culprit = next(c for c in context["candidates"] if c["ref"] == CULPRIT)
    answer = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": CULPRIT[:12],
                "service": "payments",
                "mechanism": "Immediate retries on ABORTED pile writers onto ledger's hot row lock; the pool drains.",
                "evidence": [
                    {"claim": "payments shipped the retry change before the onset", "call_ids": culprit["call_ids"]},
                    {"claim": "payments logs pool exhaustion", "call_ids": context["error_log_call_ids"][:1]},
                ],
                "falsified_by": ["the diff keeps two attempts with exponential backoff"],
                "plausibility": 0.8,
            },
            {
                "kind": "flag",
                "ref": "checkout_express_pay",
                "mechanism": "The new button floods PlaceOrder.",
                "evidence": [{"claim": "checkout_express_pay turned on at 09:45", "call_ids": ["call-that-never-was"]}],
                "falsified_by": ["checkout's request rate stays flat"],
                "plausibility": 0.2,
            },
        ]
    }
    return message(tool_use("submit", answer), input_tokens=5000, output_tokens=700, cache_creation_input_tokens=4000)


def _verify_reads_the_diff(body: dict[str, Any]) -> Reply:
    (item,) = _context(body)["to_verify"]
    assert item["ref"] == CULPRIT, item
    assert item["hypothesis"]["falsified_by"], item
    return message(tool_use("get_commit", {"sha": CULPRIT}), input_tokens=6000, output_tokens=50)


def _verify_submits(body: dict[str, Any]) -> Reply:
    context = _context(body)
    (item,) = context["to_verify"]
    (diff,) = _tool_results(body)
    read = CALL_ID.search(diff)
    assert read, diff[:200]
    cited = [item["diff_call_id"], read.group(1)]
    checks = [
        ("timing", "deployed 09:38:20, eleven minutes before payments' first error", cited[:1]),
        ("location", "shipped with payments, the first failing service", cited[:1]),
        ("signature", "max_attempts 2 -> 6 and backoff none: the retries the errors show", cited),
        ("mechanism", "retry policy change against a retry storm", cited),
        ("substance", "changes the client's behaviour, not docs", cited),
        ("still_deployed", "no later payments deploy before the alert", context["changes"]["deploy_call_ids"]),
    ]
    answer = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": CULPRIT,
                "checklist": [{"check": c, "outcome": "pass", "detail": d, "call_ids": ids} for c, d, ids in checks],
                "status": "verified",
                "reason": "The verification agent read six attempts without backoff in the diff.",
            }
        ],
        "converged": True,
        "again": False,
        "summary": "857e069f removes the backoff and triples the attempts: the retry storm.",
    }
    return message(tool_use("submit", answer), input_tokens=900, output_tokens=800, cache_read_input_tokens=6000)


def _recommend_on_the_verification(body: dict[str, Any]) -> Reply:
    context = _context(body)
    culprit = next(c for c in context["candidates"] if c["ref"] == CULPRIT)
    assert culprit["verification_agent"]["status"] == "verified", culprit
    signature = next(k for k in culprit["checks"] if k["name"] == "signature")
    findings = {
        "verdict": "ROOT_CAUSE",
        "confidence": 0.9,
        "summary": "857e069f removed the ledger client's backoff and tripled its attempts: a retry storm.",
        "first_failing_service": "payments",
        "blast_radius": TRUTH["blast_radius"],
        "culprit": {"kind": "commit", "ref": CULPRIT, "service": "payments", "title": "retry policy"},
        "remediation": {"class": "rollback", "steps": ["Roll payments back to the build before 857e069f."]},
        "evidence": [{"claim": signature["detail"], "call_ids": signature["call_ids"]}],
    }
    return message(tool_use("submit", findings), input_tokens=7000, output_tokens=500)


def _triage(body: dict[str, Any]) -> Reply:
    context = _context(body)
    assert context["alert"]["service"] == "api-gateway"
    assert context["alert_call_ids"]
    assert context["onset_call_ids"]
    answer = {
        "symptom": "api-gateway returns 503/504 on POST /v1/checkout; customers cannot pay.",
        "symptom_evidence": [
            {"claim": "api-gateway's 5xx ratio crossed its threshold", "call_ids": context["alert_call_ids"]},
            {"claim": "the error ratio left its baseline before the alert", "call_ids": context["onset_call_ids"]},
            {"claim": "support is flooded with tickets", "call_ids": ["call-that-never-was"]},
        ],
        "severity": "critical",
        "affected_services": ["api-gateway"],
        "gather_services": ["api-gateway", "checkout", "payments"],
    }
    return message(tool_use("submit", answer), input_tokens=2000, output_tokens=200)


@pytest.mark.parametrize(("mode", "model"), [("balanced", "LLM_MODEL_BALANCED"), ("deep", "LLM_MODEL_DEEP")])
async def test_balanced_and_deep_modes_hypothesize_verify_and_conclude_with_the_llm_on_their_model(
    tmp_path: Path, mode: str, model: str
) -> None:
    # Deep mode also triages with the model; balanced keeps the rule reasoner's triage.
    reasoning = ("hypothesize", "verify", "recommend")
    llm_roles = ("triage", "gather.context", *reasoning) if mode == "deep" else ("gather.context", *reasoning)
    # Balanced mode reads the ticket and chat on the cheap tier, deep on its own.
    context_model = MODELS[model] if mode == "deep" else MODELS["LLM_MODEL_FAST"]
    async with running_fake_llm() as llm:
        triage = (_triage,) if mode == "deep" else ()
        llm.anthropic(
            *triage,
            _read_the_chat,
            _hypothesize,
            _verify_reads_the_diff,
            _verify_submits,
            _recommend_on_the_verification,
        )
        async with _engine(tmp_path, registry_config(SCENARIO), settings={**_keys(llm), **MODELS}) as stack:
            investigation_id = await _submit(stack, f"SHOP-5{len(mode)}", mode=mode)
            row = await _until_done(stack, investigation_id)
            assert row["status"] == "completed", row["error"]
            assert (row["verdict"], row["hypothesis_iteration"]) == ("ROOT_CAUSE", 1)
            assert llm.unanswered() == 0
            # Each role's requests: its own prompt, tools and the mode's model, the prefix cached.
            bodies = llm.bodies()
            assert [_role_of(b) for b in bodies] == [*llm_roles[:-2], "verify", "verify", "recommend"]
            assert {b["model"] for b in bodies if _role_of(b) != "gather.context"} == {MODELS[model]}
            assert [b["model"] for b in bodies if _role_of(b) == "gather.context"] == [context_model]
            for body in bodies:
                assert {t["name"] for t in body["tools"]} == {*ROLE_TOOLS[_role_of(body)], "submit"}
                assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
                assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
                assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
            by_role = {_role_of(b): b for b in reversed(bodies)}
            assert "hypotheses" in by_role["hypothesize"]["tools"][-1]["input_schema"]["properties"]
            assert "checklist" in json.dumps(by_role["verify"]["tools"][-1]["input_schema"])
            assert await _reasoners(stack, investigation_id) == {
                **dict.fromkeys(RULE_ROLES, "rule"),
                **dict.fromkeys(llm_roles, "llm"),
            }
            # The investigation's ticket was looked up (the scenario has no SHOP ticket: a gap).
            lookups = await stack.db.fetch(
                "SELECT agent_role, status FROM mcp_tool_calls WHERE investigation_id = $1::uuid"
                " AND tool_name = 'get_ticket'",
                investigation_id,
            )
            assert [(r["agent_role"], r["status"]) for r in lookups] == [("gather.context", "tool_error")]
            outputs = {
                r["agent_role"]: json.loads(r["output"])
                for r in await stack.db.fetch(
                    "SELECT agent_role, output FROM investigation_steps WHERE investigation_id = $1::uuid"
                    " AND status = 'succeeded'",
                    investigation_id,
                )
            }
            if mode == "deep":
                triaged = outputs["triage"]
                assert (triaged["reasoner"], triaged["prompt_version"], triaged["model"]) == ("llm", 3, MODELS[model])
                # The claim citing an invented call was removed and counted; the rule onset stands.
                assert (triaged["rejected_claims"], triaged["onset_changed"]) == (1, False)
                assert triaged["gather_services"] == ["api-gateway", "checkout", "payments"]
                assert "symptom" in by_role["triage"]["tools"][-1]["input_schema"]["properties"]
            hypothesized = outputs["hypothesize"]
            # The flag hypothesis cited a call that never happened: dropped and counted.
            assert (hypothesized["rejected_claims"], hypothesized["prompt_version"]) == (1, 2)
            assert [h["ref"] for h in hypothesized["hypotheses"]] == [CULPRIT[:12]]
            assert [p["ref"] for p in hypothesized["proposed"]] == [CULPRIT]
            verified = outputs["verify"]
            assert (verified["converged"], verified["again"], verified["rejected_claims"]) == (True, False, 0)
            assert verified["verification"] == [
                {
                    "kind": "commit",
                    "ref": CULPRIT,
                    "status": "verified",
                    "reason": "The verification agent read six attempts without backoff in the diff.",
                }
            ]
            # The verification agent's diff read is a real, audited call of the verify role.
            read = await stack.db.fetch(
                "SELECT agent_role FROM mcp_tool_calls WHERE investigation_id = $1::uuid AND tool_name = 'get_commit'",
                investigation_id,
            )
            assert sorted(r["agent_role"] for r in read) == ["verify", "verify"]  # the rules' read, the model's
            report = await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
            assert report.culprit_change.ref == CULPRIT
            assert "max_attempts 2 -> 6 and backoff none" in report.markdown
            assert "claim(s) of the model's hypothesize step cited no tool call" in report.markdown
            # The context agent's facts and the suspects people named, apart from the evidence.
            reported = report.markdown.split("## What people reported", 1)[1].split("\n## ", 1)[0]
            assert "The incident commander wants to roll back api-gateway." in reported
            assert "- action: jonas.berg in #incidents proposes rolling back api-gateway" in reported
            assert f"Suspected by people: `{GATEWAY[:8]}`" in reported
            runs = await stack.db.fetch(
                "SELECT phase, model, llm_calls FROM agent_runs WHERE investigation_id = $1::uuid AND reasoner = 'llm'"
                " ORDER BY phase",
                investigation_id,
            )
            assert [(r["phase"], r["model"], r["llm_calls"]) for r in runs] == [
                ("gather", context_model, 1),
                ("hypothesize", MODELS[model], 1),
                ("recommend", MODELS[model], 1),
                *([("triage", MODELS[model], 1)] if mode == "deep" else []),
                ("verify", MODELS[model], 2),
            ]


def _hypothesize_the_gateway(body: dict[str, Any]) -> Reply:
    context = _context(body)
    gateway = next(c for c in context["other_changes"]["commits"] if c["sha"] == GATEWAY)
    assert gateway["message"], gateway
    answer = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": GATEWAY[:10],
                "service": "api-gateway",
                "mechanism": "The rewritten upstream error mapping turns upstream errors into 5xx.",
                "evidence": [
                    {
                        "claim": "api-gateway deployed it before the alert",
                        "call_ids": context["other_changes"]["deploy_call_ids"],
                    }
                ],
                "falsified_by": ["the new map has the old switch's entries"],
                "plausibility": 0.6,
            }
        ]
    }
    return message(tool_use("submit", answer))


def _verify_the_gateway(body: dict[str, Any]) -> Reply:
    context = _context(body)
    (item,) = context["to_verify"]
    assert item["ref"] == GATEWAY
    cited = [item["diff_call_id"]]
    checks = ("timing", "location", "signature", "mechanism", "substance", "still_deployed")
    answer = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": GATEWAY,
                "checklist": [
                    {"check": c, "outcome": "pass", "detail": f"scripted {c}", "call_ids": cited} for c in checks
                ],
                "status": "verified",
                "reason": "scripted to verify the decoy",
            }
        ],
        "converged": True,
        "again": False,
        "summary": "scripted",
    }
    return message(tool_use("submit", answer))


async def test_a_rule_recommend_after_llm_verification_concludes_what_the_verification_supports(
    tmp_path: Path,
) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(_hypothesize_the_gateway, _verify_the_gateway)
        # Balanced with the LLM for HYPOTHESIZE and VERIFY only: RECOMMEND is the rule reasoner's.
        roles = json.dumps({"balanced": {"hypothesize": "balanced", "verify": "balanced"}})
        settings = {**_keys(llm), **MODELS, "LLM_MODE_ROLES": roles}
        async with _engine(tmp_path, registry_config(SCENARIO), settings=settings) as stack:
            investigation_id = await _submit(stack, "SHOP-60")
            row = await _until_done(stack, investigation_id)
            assert row["status"] == "completed", row["error"]
            assert llm.unanswered() == 0
            assert [_role_of(b) for b in llm.bodies()] == ["hypothesize", "verify"]
            assert (await _reasoners(stack, investigation_id))["recommend"] == "rule"
            # Not the scenario's truth: the scripted verification verified the decoy, and the rule
            # conclusion follows the checks it left in the state.
            report = await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
            assert (row["verdict"], report.culprit_change.ref) == ("ROOT_CAUSE", GATEWAY)
            assert "scripted signature" in report.markdown


async def test_an_llm_hypothesize_that_cannot_reach_a_provider_fails_visibly_and_ends_in_a_partial_report(
    tmp_path: Path,
) -> None:
    async with running_fake_llm() as llm:
        # The context agent's pass (whose outage policy leaves the ticket and chat as found), three
        # attempts of HYPOTHESIZE (each the first try and the SDK's two retries), then the partial
        # RECOMMEND's pass, whose outage policy keeps the rule conclusion.
        llm.anthropic(*[overloaded() for _ in range(15)])
        async with _engine(tmp_path, registry_config(SCENARIO), settings={**_keys(llm), **MODELS}) as stack:
            investigation_id = await _submit(stack, "SHOP-61")
            row = await _until_done(stack, investigation_id)
            assert row["status"] == "completed", row["error"]
            assert llm.unanswered() == 0
            assert [_role_of(b) for b in llm.bodies()] == ["gather.context"] * 3 + ["hypothesize"] * 9 + [
                "recommend"
            ] * 3
            steps = await stack.db.fetch(
                "SELECT status, error FROM investigation_steps WHERE investigation_id = $1::uuid"
                " AND phase = 'hypothesize' ORDER BY attempt",
                investigation_id,
            )
            assert [s["status"] for s in steps] == ["failed"] * 3
            assert all("ProviderUnavailable" in s["error"] and "529" in s["error"] for s in steps)
            assert row["verdict"] == "INCONCLUSIVE"
            report = await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
            assert report.summary.startswith(
                "Partial report: step hypothesize failed after 3 attempt(s): ProviderUnavailable"
            )
            assert "LLM unavailable" in report.markdown
            assert "gather.context: LLM unavailable" in report.markdown


def _expensive_hypotheses(body: dict[str, Any]) -> Reply:
    """A valid ranking whose usage alone costs more than the budget: 200,000 input and 10,000
    output tokens on the balanced model ($2 and $10 per million: $0.50)."""
    context = _context(body)
    culprit = next(c for c in context["candidates"] if c["ref"] == CULPRIT)
    answer = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": CULPRIT,
                "service": "payments",
                "mechanism": "Retries without backoff exhaust the pool.",
                "evidence": [{"claim": "shipped before the onset", "call_ids": culprit["call_ids"]}],
                "falsified_by": ["the diff keeps the backoff"],
                "plausibility": 0.7,
            }
        ]
    }
    return message(tool_use("submit", answer), input_tokens=200_000, output_tokens=10_000)


async def test_the_models_spending_past_the_cost_budget_stops_the_investigation(tmp_path: Path) -> None:
    async with running_fake_llm() as llm:
        llm.anthropic(_expensive_hypotheses)
        # Only HYPOTHESIZE asks the model; the budget is checked against what it reported spending.
        roles = json.dumps({"balanced": {"hypothesize": "balanced"}})
        settings = {**_keys(llm), **MODELS, "LLM_MODE_ROLES": roles}
        async with _engine(tmp_path, registry_config(SCENARIO), settings=settings) as stack:
            investigation_id = await _submit(stack, "SHOP-62", budget={"max_cost_usd": 0.1})
            row = await _until_done(stack, investigation_id)
            assert row["status"] == "completed", row["error"]
            assert llm.unanswered() == 0
            assert row["verdict"] == "INCONCLUSIVE"
            assert "cost budget of $0.10 exhausted ($0.50)" in row["summary"]
            assert float(row["cost_usd"]) == pytest.approx(0.5)
            phases = {
                r["phase"]
                for r in await stack.db.fetch(
                    "SELECT phase FROM investigation_steps WHERE investigation_id = $1::uuid", investigation_id
                )
            }
            assert "verify" not in phases  # nothing was dispatched after the stop


def _triage_reads_the_alert_itself(body: dict[str, Any]) -> Reply:
    """The rules could not read the alert: the agent reads the alerted metric itself."""
    context = _context(body)
    assert context["alert"] == {}
    assert any("the triage agent reads the alert itself" in p for p in context["problems"])
    metric = {"metric": "error_ratio", "service": "api-gateway", "step_seconds": 60}
    return message(tool_use("query_metrics", metric))


def _triage_sets_the_onset(body: dict[str, Any]) -> Reply:
    (series,) = _tool_results(body)
    read = CALL_ID.search(series)
    assert read, series[:200]
    answer = {
        "symptom": "api-gateway's error ratio rose from 1 % to 10 %.",
        "symptom_evidence": [{"claim": "api-gateway error_ratio rose to 0.1", "call_ids": [read.group(1)]}],
        "severity": "critical",
        "affected_services": ["api-gateway"],
        "onset": "2026-03-17T09:50:00Z",
        "onset_evidence": [{"claim": "api-gateway error_ratio left 0.01 at 09:50", "call_ids": [read.group(1)]}],
    }
    return message(tool_use("submit", answer))


async def test_when_the_rules_cannot_read_the_alert_the_triage_agent_reads_it_and_sets_the_window(
    tmp_path: Path,
) -> None:
    # The alert tool takes other arguments than the rules pass (here: the ticket tool stands in
    # for an alert server of another shape), so the rule triage's call is refused.
    servers = (
        registry_config(SCENARIO)
        .replace(
            "      get_ticket: {capabilities: [tickets.get]}\n", "      get_ticket: {capabilities: [alerts.get]}\n"
        )
        .replace("      get_alert: {capabilities: [alerts.get]}\n", "")
    )
    assert "get_ticket: {capabilities: [alerts.get]}" in servers
    async with running_fake_llm() as llm:
        llm.anthropic(_triage_reads_the_alert_itself, _triage_sets_the_onset)
        roles = json.dumps({"deep": {"triage": "deep"}})
        settings = {**_keys(llm), **MODELS, "LLM_MODE_ROLES": roles}
        async with _engine(tmp_path, servers, settings=settings) as stack:
            investigation_id = await _submit(stack, "SHOP-63", mode="deep")
            row = await _until_done(stack, investigation_id)
            assert row["status"] == "completed", row["error"]
            assert llm.unanswered() == 0
            triaged = json.loads(
                await stack.db.fetchval(
                    "SELECT output FROM investigation_steps WHERE investigation_id = $1::uuid AND phase = 'triage'"
                    " AND status = 'succeeded'",
                    investigation_id,
                )
            )
            assert "the alert could not be read" in triaged["rule_error"]
            assert (triaged["onset"], triaged["onset_changed"]) == ("2026-03-17T09:50:00Z", True)
            # GATHER searched from six hours before the agent's onset, and the rules found the culprit.
            assert row["verdict"] in ("ROOT_CAUSE", "PROBABLE_CAUSE"), row["summary"]
            report = await stack.queries.GetReport(
                investigation_pb2.GetReportRequest(id=investigation_id), metadata=AUTH, timeout=10
            )
            assert report.culprit_change.ref == CULPRIT
